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
   pHash each) in a Parquet features table, the Spark engine's way: the
   multi-index pHash join (its pairs checked against the local exact
   search) and the connected components of its pairs; the candidate pairs
   and their evidence (:func:`dedup.spark_evidence.pair_evidence`: kNN of
   the embedding and of the colour-fused space, each pair scored in the
   task that finds it, ranks and radii by window functions; the fused
   lists' recall@10 against exact search on 500 rows); then the decisions
   as columns and the per-component group-apply
   (:mod:`dedup.spark_grouping`), with no vector at the driver. Beside them
   the local engine's kNN (up to :data:`LOCAL_KNN_MAX` rows), pHash search,
   the evidence of the same candidates at the driver (is it Spark's?),
   decisions and grouping, and whether the groups agree. The Spark session
   and its JVM are stopped before that comparison (it has the machine's
   memory), and the Spark figures are written before it runs.

    python benchmarks/spark.py [--n 20000 --n 1000000] [--driver-memory 6g] [--keep-rows] [--readme]

Writes benchmarks/results/spark.{md,json}; with --readme, the SPARK-TABLE
block of README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from functools import partial
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
    fused_parts,
    group,
    score_pairs,
)
from dedup.hashing import near_duplicate_pairs  # noqa: E402
from dedup.index import EXACT_KNN_MAX, clustered_knn, exact_knn  # noqa: E402
from dedup.pipeline import DEFAULT_K, Deduplicator  # noqa: E402

MASTER = "local[2]"
RESULTS_JSON = Path(__file__).resolve().parent / "results" / "spark.json"
#: The local kNN is timed up to this many rows (benchmarks/scale.py times it at a million).
LOCAL_KNN_MAX = 200_000
#: Free disk wanted in the temporary folder (Spark's spill and shuffle files, ``spark.local.dir``,
#: and the features and pairs tables) per million rows: a 1M run that started with 49 GB free ran
#: out of it in the candidate search (``No space left on device`` while spilling a sort); at 300,000
#: rows Spark's block manager folder peaked at 14 GB, so about 47 GB of spill at a million, plus the
#: 6 GB features table: 70 GB leaves a margin.
DISK_GB_PER_MILLION = 70


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


def _parquet_rows(path: Path, n: int, columns) -> None:
    """Write rows to a Parquet file, 65,536 at a time (``columns(a, b)`` gives rows a..b as
    ``{name: array}``; 2-d float32 arrays become list columns, 2-d uint8 arrays binary ones):
    the features table as a data lake holds it, and never a second copy in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column(x: np.ndarray):
        if x.ndim == 1:
            return pa.array(x)
        if x.dtype == np.uint8:
            return pa.array([bytes(r) for r in x], pa.binary())
        flat = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, x.shape[1]).cast(pa.list_(pa.float32()))

    writer = None
    for a in range(0, n, 65_536):
        b = min(a + 65_536, n)
        table = pa.table(
            {"id": pa.array(np.arange(a, b, dtype=np.int64)), **{k: column(v) for k, v in columns(a, b).items()}}
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def _rss_gb() -> str:
    """This process's resident memory now and at its peak (Linux ``/proc``), for the log."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    gb = lambda k: int(status[k].split()[0]) / 2**20  # noqa: E731
    return f"RSS {gb('VmRSS'):.1f} GB (peak {gb('VmHWM'):.1f} GB)"


def _timed(row: dict, name: str, fn):
    """``fn()``, its wall-clock seconds stored in ``row[name + "_seconds"]`` and logged with the
    driver's memory."""
    t = time.perf_counter()
    out = fn()
    row[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
    print(f"  {row['n']:>9,d} {name:<16s} {row[f'{name}_seconds']:8.1f} s   {_rss_gb()}", flush=True)
    return out


def _stop_spark(spark) -> None:
    """Stop the Spark session and its JVM (local mode: the driver and the executors), so that the
    driver-side comparison has the machine's memory; the next :func:`dedup.spark.session` starts a
    new JVM."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    if gateway is not None:
        gateway.shutdown()
        proc = getattr(gateway, "proc", None)
        if proc is not None:
            proc.kill()
            proc.wait()
        SparkContext._gateway = None
        SparkContext._jvm = None


def spark_steps(n: int, stats, tmp: Path, driver_memory: str | None) -> tuple[dict, dict]:
    """Every step after embedding on ``n`` synthetic rows, the Spark engine's way.

    From a Parquet features table: the pHash join and its components, the candidate pairs and
    their evidence (:func:`dedup.spark_evidence.pair_evidence`: the kNN searches of the
    embedding and of the colour-fused space, each pair scored in the task that finds it, ranks
    and radii by window functions), then the decisions as columns and the per-component
    group-apply, all without the vectors at the driver. Before them, on the same rows, the local
    engine's kNN (up to ``LOCAL_KNN_MAX`` rows: ``benchmarks/scale.py`` times it at a million)
    and pHash search. The scored pairs are written to ``tmp`` (Parquet), then the Spark session
    and its JVM are stopped.

    Returns:
        The row of timings so far, and what :func:`driver_comparison` needs: the fused kNN lists
        ``ids`` ``(n, K)`` int64, the pHash pairs, the Spark grouping's labels and the pairs' table.
    """
    from dedup import spark as S
    from dedup.spark_evidence import list_arrays, pair_evidence
    from dedup.spark_grouping import decide, group_pairs

    data = synthetic(n, stats=stats)
    X, codes = data["emb"], data["codes"]
    params = GroupingParams()
    spark = S.session(MASTER, shuffle_partitions=4, driver_memory=driver_memory)
    spark.sparkContext.setLogLevel("ERROR")
    row: dict = {"n": n}
    timed = partial(_timed, row)

    K = DEFAULT_K + 1  # as the run asks its indexes: the row itself and its k nearest
    path = tmp / f"features-{n}.parquet"

    def columns(a: int, b: int) -> dict:
        c = data["codes"][a:b].view(np.int64)
        return {"e0": X[a:b], "colour": data["colours"][a:b], "layout": data["layouts"][a:b], "code": c}

    timed("write_parquet", lambda: _parquet_rows(path, n, columns))
    if n <= LOCAL_KNN_MAX:
        F = fused_parts([X], data["colours"], params.colour_weight).stack()
        timed("local_knn", lambda: clustered_knn(F, K) if n > EXACT_KNN_MAX else exact_knn(F, F, K))
        del F
    want = timed("local_phash", lambda: near_duplicate_pairs(codes, 4)[0])
    got = timed("spark_phash", lambda: S.SparkEngine(MASTER).phash_pairs(codes, 4))
    row["phash_pairs"] = int(len(got))
    row["phash_pairs_equal_local"] = bool(np.array_equal(got, want))
    edges = spark.createDataFrame(pd.DataFrame(got.astype(np.int64), columns=["a", "b"]), "a long, b long")
    timed("spark_components", lambda: S.connected_components(edges, spark.range(n).select("id")).count())

    # the Spark path needs no vector at the driver: free them while it runs (made again later)
    data = X = codes = want = None  # type: ignore[assignment]
    gc.collect()
    df = spark.read.parquet(str(path))
    scored, lists = pair_evidence(df, 1, params.colour_weight, K, params.k_context, edges)
    scored = scored.withColumn("row", scored["i"] * n + scored["j"])  # the group-apply's key: (i, j) order
    row["candidate_pairs"] = timed("spark_evidence", lambda: scored.persist().count())
    ids = list_arrays(lists, n, K)
    model = PairModel.load(verified=False)  # no pixels here: no verification, as with --no-verify
    hp = {"sha256": np.zeros((0, 2), np.int64), "phash": got}

    def distributed():
        decided = decide(scored, model, params).persist()
        g = group_pairs(decided, n, hp, params)
        decided.unpersist()
        return g

    grouping = timed("spark_decide_group", distributed)
    table = tmp / f"pairs-{n}.parquet"  # through files: a collect of 10^7 pairs passes maxResultSize
    timed("write_pairs", lambda: scored.drop("row").write.parquet(str(table)))
    scored.unpersist()
    lists.unpersist()
    _stop_spark(spark)
    path.unlink()
    return row, {"ids": ids, "hp": hp, "labels": grouping.labels, "table": table}


def driver_comparison(row: dict, stats, spark_out: dict) -> None:
    """The local engine's code on the rows and candidates of :func:`spark_steps`, at the driver.

    Fills ``row`` with the fused lists' recall@10 against exact search (500 queries), whether the
    driver's evidence of the same candidate pairs equals Spark's (``score_pairs``: ranks equal,
    largest difference of a distance column), the local decisions and grouping, and whether
    both engines give the same groups. Memory at the driver: the synthetic vectors (9 GB at a
    million rows) and two pair tables (80 bytes a pair each); at 300,000 rows, before Arrow's
    pool was released after the read, it peaked at 7.0 GB.
    """
    from dedup.grouping import Pairs

    n, params, model = row["n"], GroupingParams(), PairModel.load(verified=False)
    timed = partial(_timed, row)

    def read() -> Pairs:
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(spark_out["table"]).sort_by([("i", "ascending"), ("j", "ascending")])
        out = Pairs.from_frame(t.to_pandas(self_destruct=True, split_blocks=True))
        del t
        pa.default_memory_pool().release_unused()  # else Arrow's pool keeps it: 1.8 GB held, not 0.7, at 4.3M pairs
        return out

    spark_pairs = timed("read_pairs", read)
    gc.collect()
    data = synthetic(n, stats=stats)  # the same rows (seeded)
    data.pop("digests")
    X, ids = data["emb"], spark_out["ids"]
    parts = fused_parts([X], data["colours"], params.colour_weight)
    queries = np.sort(np.random.default_rng(1).choice(n, min(n, 500), replace=False))
    row["spark_knn_recall_at_10"] = round(knn_recall(parts, ids, queries), 4)
    pairs = timed(
        "driver_evidence",
        lambda: score_pairs(
            spark_pairs.ij, [X], data["colours"], parts, ids, data["codes"], params.k_context, data["layouts"]
        ),
    )
    diffs = [
        float(np.abs(getattr(spark_pairs, f).astype(np.float64) - getattr(pairs, f)).max(initial=0))
        for f in ("distance", "colour", "fused", "context", "layout_mean", "layout_max")
    ]
    ranks_equal = np.array_equal(spark_pairs.rank_ij, pairs.rank_ij) and np.array_equal(
        spark_pairs.rank_ji, pairs.rank_ji
    )
    row["evidence_max_abs_difference"] = float(f"{max(diffs):.2g}")
    row["ranks_equal"] = bool(ranks_equal)
    for key in ("emb", "colours", "layouts"):
        data.pop(key)
    spark_pairs = X = parts = None  # type: ignore[assignment]
    gc.collect()
    conf = timed("local_decide", lambda: model.predict_pairs(pairs))
    local = timed("local_group", lambda: group(n, pairs, conf, spark_out["hp"], params))
    row["groups_equal_local"] = bool(np.array_equal(spark_out["labels"], local.labels))
    row["groups"] = int(len(np.unique(local.labels)))
    row["planted"] = pairwise_scores(local.labels, data["product"])
    print(f"  {n:>9,d} {row}", flush=True)
    shutil.rmtree(spark_out["table"], ignore_errors=True)


def _scale_row(r: dict) -> str:
    """One size's row of the README table; a size whose driver-side comparison has not run yet
    (or did not finish) shows its Spark timings and "not run" there."""
    sec = lambda k: f"{r[k + '_seconds']:,.1f} s" if k + "_seconds" in r else "not run"  # noqa: E731
    yes = lambda k: "yes" if r[k] else "NO"  # noqa: E731
    compared = "groups" in r
    recall = f"{r['spark_knn_recall_at_10']:.3f}, " if "spark_knn_recall_at_10" in r else ""
    evidence = (
        f"{sec('driver_evidence')} ({yes('ranks_equal')}, max diff {r['evidence_max_abs_difference']:.0e})"
        if "ranks_equal" in r
        else "not run"
    )
    local = f"{r['local_decide_seconds'] + r['local_group_seconds']:,.1f} s" if compared else "not run"
    groups = f"{r['groups']:,} ({yes('groups_equal_local')})" if compared else "not compared"
    return (
        f"| {r['n']:,} | {sec('local_knn')} | {sec('spark_evidence')} ({recall}{r['candidate_pairs']:,}) "
        f"| {sec('local_phash')} | {sec('spark_phash')} ({r['phash_pairs']:,}, {yes('phash_pairs_equal_local')}) "
        f"| {sec('spark_components')} | {evidence} | {local} | {sec('spark_decide_group')} | {groups} |"
    )


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
    scale_table = "\n".join(
        [
            "| rows | kNN, local | candidates + evidence, Spark (kNN recall@10, pairs) | pHash, local "
            "| pHash, Spark (pairs, equal) | components, Spark | same pairs' evidence, driver (equal) "
            "| decide + group, local | decide + group, Spark | groups (equal) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(_scale_row(r) for r in rows),
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
        "embedding, a colour descriptor and layout and a pHash per row) read from a Parquet features "
        "table. *candidates + evidence, Spark*: `dedup.spark_evidence.pair_evidence`, the kNN of the "
        "embedding and of the colour-fused space with each pair scored in the search task that finds it, "
        "ranks and context radii by window functions (no verification: synthetic rows have no pixels). "
        "*same pairs' evidence, driver*: the local engine's `score_pairs` on the same candidates and "
        "lists, whether its ranks equal Spark's and the largest difference of a distance column. "
        "The local kNN column "
        f"is the local engine's search (exact up to {EXACT_KNN_MAX:,} rows, clustered above; run up to "
        f"{LOCAL_KNN_MAX:,} rows here). *groups (equal)*: the groups found, and whether the Spark "
        "engine's evidence, decisions and group-apply give the local grouping's labels.\n\n" + table + "\n"
    )
    write("spark", {"machine": m, "master": MASTER, "embedding": rates, "after_embedding": rows}, md)
    if readme:
        replace_readme_block("SPARK-TABLE", table)


def main() -> None:
    from dedup import spark as S

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append", default=None, help="synthetic rows (default 20000)")
    ap.add_argument("--driver-memory", default="6g", help="spark.driver.memory (local mode: the whole JVM)")
    ap.add_argument("--readme", action="store_true")
    ap.add_argument(
        "--keep-rows", action="store_true", help="keep results/spark.json's rows of the sizes this run does not measure"
    )
    args = ap.parse_args()
    sizes = sorted(args.n or [20_000])
    kept: list[dict] = []
    if args.keep_rows and RESULTS_JSON.exists():
        kept = [r for r in json.loads(RESULTS_JSON.read_text())["after_embedding"] if r["n"] not in sizes]
    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    if free_gb < DISK_GB_PER_MILLION * max(sizes) / 1e6:
        sys.exit(
            f"{max(sizes):,} rows want about {DISK_GB_PER_MILLION * max(sizes) / 1e6:.0f} GB free in "
            f"{tempfile.gettempdir()} (Spark's spill and shuffle files); {free_gb:.0f} GB are free"
        )
    rates = embedding_rates(BENCH / "ukbench-dev" / "images", args.driver_memory)
    _stop_spark(S.session())  # each size starts its own JVM
    stats = real_statistics()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row, spark_out = spark_steps(n, stats, Path(tmp), args.driver_memory)
            rows.append(row)
            report(rates, sorted(kept + rows, key=lambda r: r["n"]), args.readme)  # the Spark steps, once measured
            driver_comparison(row, stats, spark_out)
            report(rates, sorted(kept + rows, key=lambda r: r["n"]), args.readme)


if __name__ == "__main__":
    main()
