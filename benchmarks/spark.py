"""The Spark engine against the local engine, on this machine.

1. **Embedding rate.** The same images (ukbench-dev's 600 photos), cold: no
   cache and no features table. Images/second through hashing, decoding
   and embedding with the local engine (threads, one process) and with
   ``engine="spark"`` in ``local[2]`` (Python workers fed by ``mapInPandas``,
   each loading the model once); then Spark again, warm (everything read
   from its Parquet features table). The Spark session's start-up is timed
   apart. On one machine Spark can only lose: the same cores do the same
   work, plus serialisation between the JVM and the Python workers.
2. **The steps after embedding at scale**, on ``benchmarks/scale.py``'s
   synthetic rows (one 1280-d embedding, colour descriptor and layout, and
   pHash each), the Spark engine's way: the distributed kNN of the
   colour-fused vectors read from Parquet (:func:`dedup.spark.neighbours`,
   with its recall@10 against exact search on 500 rows), the multi-index
   pHash join (its pairs checked against the local exact search) and the
   connected components of its pairs, the pair evidence (at the driver,
   the local engine's code), then the decisions as columns and the
   per-component group-apply (:mod:`dedup.spark_grouping`); beside them the
   local engine's kNN (up to :data:`LOCAL_KNN_MAX` rows), pHash search,
   decisions and grouping on the same rows, and whether the groups agree.

    python benchmarks/spark.py [--n 20000 --n 1000000] [--driver-memory 6g] [--readme]

Writes benchmarks/results/spark.{md,json}; with --readme, the SPARK-TABLE
block of README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, machine, replace_readme_block, write  # noqa: E402
from scale import knn_recall, real_statistics, synthetic  # noqa: E402

from dedup.calibration import PairModel  # noqa: E402
from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import (  # noqa: E402
    GroupingParams,
    candidate_pairs,
    fused_parts,
    fused_vectors,
    group,
    score_pairs,
)
from dedup.hashing import near_duplicate_pairs  # noqa: E402
from dedup.index import EXACT_KNN_MAX, clustered_knn, exact_knn  # noqa: E402
from dedup.pipeline import DEFAULT_K, Deduplicator  # noqa: E402

MASTER = "local[2]"
#: The local kNN is timed up to this many rows (benchmarks/scale.py times it at a million).
LOCAL_KNN_MAX = 200_000


def embedding_rates(root: Path, driver_memory: str | None = None) -> dict:
    """Images/second of hashing + decoding + embedding ``root``, local and Spark, cold and warm."""
    from dedup import spark as S

    t = time.perf_counter()
    S.session(MASTER, shuffle_partitions=4, driver_memory=driver_memory).sparkContext.setLogLevel("ERROR")
    start = time.perf_counter() - t
    out = {"spark_session_start_seconds": round(start, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "local": Deduplicator(backbones="efficientnet-lite0", cache=False, progress=False),
            "spark cold": Deduplicator(
                backbones="efficientnet-lite0",
                cache=False,
                progress=False,
                engine=S.SparkEngine(MASTER, features=str(Path(tmp) / "features")),
            ),
        }
        runs["spark warm"] = runs["spark cold"]
        for name, dd in runs.items():
            nets = dd.check()
            t = time.perf_counter()
            got = dd.embed(root, backbones=nets)
            secs = time.perf_counter() - t
            n = len(got.paths)
            out[name] = {"images": n, "seconds": round(secs, 1), "images_per_second": round(n / secs, 1)}
            out[name]["embedded"] = got.embedded
            print(f"  {name:<11s} {n} images in {secs:6.1f} s: {n / secs:6.1f} images/s", flush=True)
    out["spark_cold_over_local"] = round(out["spark cold"]["images_per_second"] / out["local"]["images_per_second"], 2)
    return out


def _parquet_rows(path: Path, vectors) -> None:
    """Write ``(id, vec)`` rows to a Parquet file, 65,536 at a time (``vectors(a, b)`` gives rows a..b):
    the features table as a data lake holds it, and never a second copy of the matrix in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for a in range(0, n_rows := vectors.n, 65_536):
        V = np.ascontiguousarray(vectors(a, min(a + 65_536, n_rows)), np.float32)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(V.reshape(-1)), V.shape[1]).cast(pa.list_(pa.float32()))
        table = pa.table({"id": pa.array(np.arange(a, a + len(V), dtype=np.int64)), "vec": vec})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


class _Fused:
    """The fused vectors of rows a..b (:func:`dedup.grouping.fused_vectors`), made on demand."""

    def __init__(self, emb: np.ndarray, colours: np.ndarray, weight: float):
        self.emb, self.colours, self.weight, self.n = emb, colours, weight, len(emb)

    def __call__(self, a: int, b: int) -> np.ndarray:
        return fused_vectors([self.emb[a:b]], self.colours[a:b], self.weight)


def after_embedding(n: int, stats, tmp: Path) -> dict:
    """Every step after embedding on ``n`` synthetic rows, the Spark engine's way, beside the local engine.

    The Spark engine's steps: the kNN of the fused vectors (read from a Parquet file), the pHash
    join and its components, then, after the pair evidence (gathered at the driver by the local
    engine's code, timed), the decisions as columns and the per-component group-apply. Beside
    them, the local engine's pHash search, decisions and grouping on the same pairs (its kNN
    only up to ``LOCAL_KNN_MAX`` rows: ``benchmarks/scale.py`` times it at a million), and
    whether both give the same groups."""
    from dedup import spark as S
    from dedup.spark_grouping import decide, group_pairs, pairs_frame

    data = synthetic(n, stats=stats)
    X, codes = data["emb"], data["codes"]
    params = GroupingParams()
    spark = S.session(MASTER, shuffle_partitions=4)
    row: dict = {"n": n}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        row[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
        print(f"  {n:>9,d} {name:<16s} {row[f'{name}_seconds']:8.1f} s", flush=True)
        return out

    K = DEFAULT_K + 1  # as the run asks its indexes: the row itself and its k nearest
    fused = _Fused(X, data["colours"], params.colour_weight)
    path = tmp / f"fused-{n}.parquet"
    timed("write_parquet", lambda: _parquet_rows(path, fused))
    if n <= LOCAL_KNN_MAX:
        F = fused(0, n)
        timed("local_knn", lambda: clustered_knn(F, K) if n > EXACT_KNN_MAX else exact_knn(F, F, K))
        del F
    df = spark.read.parquet(str(path))
    ids = timed("spark_knn", lambda: S.neighbour_arrays(S.neighbours(df, K), n, K)[0])
    queries = np.sort(np.random.default_rng(1).choice(n, min(n, 500), replace=False))
    parts = fused_parts([X], data["colours"], params.colour_weight)  # the same rows, never stacked
    row["spark_knn_recall_at_10"] = round(knn_recall(parts, ids, queries), 4)

    want = timed("local_phash", lambda: near_duplicate_pairs(codes, 4)[0])
    got = timed("spark_phash", lambda: S.SparkEngine(MASTER).phash_pairs(codes, 4))
    row["phash_pairs"] = int(len(got))
    row["phash_pairs_equal_local"] = bool(np.array_equal(got, want))
    edges = spark.createDataFrame(pd.DataFrame(got.astype(np.int64), columns=["a", "b"]))
    timed("spark_components", lambda: S.connected_components(edges, spark.range(n).select("id")).count())

    hp = {"sha256": np.zeros((0, 2), np.int64), "phash": got}

    def evidence():
        ij = candidate_pairs([ids], extra=got)
        return score_pairs(ij, [X], data["colours"], parts, ids, codes, params.k_context, data["layouts"])

    pairs = timed("driver_evidence", evidence)
    row["candidate_pairs"] = int(len(pairs.ij))
    model = PairModel.load(verified=False)  # no pixels here: no verification, as with --no-verify
    conf = timed("local_decide", lambda: model.predict_pairs(pairs))
    local = timed("local_group", lambda: group(n, pairs, conf, hp, params))

    def distributed():
        decided = decide(pairs_frame(spark, pairs), model, params).persist()
        g = group_pairs(decided, n, hp, params)
        decided.unpersist()
        return g

    grouping = timed("spark_decide_group", distributed)
    row["groups_equal_local"] = bool(np.array_equal(grouping.labels, local.labels))
    row["groups"] = int(len(np.unique(local.labels)))
    row["planted"] = pairwise_scores(local.labels, data["product"])
    print(f"  {n:>9,d} {row}", flush=True)
    path.unlink()
    return row


def report(rates: dict, rows: list[dict], readme: bool) -> None:
    """Write results/spark.{md,json} (and the README block) from what is measured so far."""
    m = machine()
    rate_table = "\n".join(
        [
            "| engine (ukbench-dev, 600 photos, cold unless said) | seconds | images/second | embedded |",
            "|---|---|---|---|",
            *(
                f"| {name} | {rates[name]['seconds']:.1f} | {rates[name]['images_per_second']:.1f} | "
                f"{rates[name]['embedded']} |"
                for name in ("local", "spark cold", "spark warm")
            ),
        ]
    )
    sec = lambda r, k: f"{r[k + '_seconds']:,.1f} s" if k + "_seconds" in r else "not run"  # noqa: E731
    scale_table = "\n".join(
        [
            "| rows | kNN, local | kNN, Spark (recall@10) | pHash, local | pHash, Spark (pairs, equal) "
            "| components, Spark | pair evidence, driver | decide + group, local | decide + group, Spark "
            "| groups (equal) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['n']:,} | {sec(r, 'local_knn')} | {sec(r, 'spark_knn')} ({r['spark_knn_recall_at_10']:.3f}) "
                f"| {sec(r, 'local_phash')} | {sec(r, 'spark_phash')} ({r['phash_pairs']:,}, "
                f"{'yes' if r['phash_pairs_equal_local'] else 'NO'}) | {sec(r, 'spark_components')} "
                f"| {sec(r, 'driver_evidence')} | {r['local_decide_seconds'] + r['local_group_seconds']:,.1f} s "
                f"| {sec(r, 'spark_decide_group')} | {r['groups']:,} ({'yes' if r['groups_equal_local'] else 'NO'}) |"
                for r in rows
            ),
        ]
    )
    table = (
        f"{rate_table}\n\nSpark cold / local: {rates['spark_cold_over_local']:.2f}x "
        f"(Spark session start-up {rates['spark_session_start_seconds']:.0f} s, not counted). "
        f"{m['cores']} cores, `{MASTER}`, {m['date']}.\n\n{scale_table}"
    )
    md = (
        "# The Spark engine against the local engine, on one machine\n\n"
        "See `benchmarks/spark.py`. First table: hashing, decoding and embedding the same photos. "
        "Second: the steps after embedding on synthetic rows (`benchmarks/scale.py`'s data: one 1280-d "
        "embedding, a colour descriptor and layout and a pHash per row), with the Spark engine's "
        "kNN on the colour-fused vectors read from Parquet, and the candidate pairs' evidence "
        "gathered at the driver (no verification: synthetic rows have no pixels). The local kNN column "
        f"is the local engine's search (exact up to {EXACT_KNN_MAX:,} rows, clustered above; run up to "
        f"{LOCAL_KNN_MAX:,} rows here). *groups (equal)*: the groups found, and whether the Spark "
        "engine's decisions and group-apply give the local grouping's labels on the same pairs.\n\n" + table + "\n"
    )
    write("spark", {"machine": m, "master": MASTER, "embedding": rates, "after_embedding": rows}, md)
    if readme:
        replace_readme_block("SPARK-TABLE", table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append", default=None, help="synthetic rows (default 20000)")
    ap.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: the whole JVM)")
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    rates = embedding_rates(BENCH / "ukbench-dev" / "images", args.driver_memory)
    stats = real_statistics()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.n or [20_000]):
            rows.append(after_embedding(n, stats, Path(tmp)))
            report(rates, rows, args.readme)  # each size as soon as it is measured


if __name__ == "__main__":
    main()
