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
   synthetic rows (one 1280-d embedding each): the distributed kNN
   (:func:`dedup.spark.neighbours`, with its recall@10 against exact search
   on 500 rows), the multi-index pHash join (its pairs checked against the
   local exact search) and connected components of the pHash pairs, beside
   the local engine's clustered kNN and pHash search on the same rows.

    python benchmarks/spark.py [--n 20000 --n 100000] [--readme]

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, machine, replace_readme_block, write  # noqa: E402
from scale import knn_recall, real_statistics, synthetic  # noqa: E402

from dedup.hashing import near_duplicate_pairs  # noqa: E402
from dedup.index import EXACT_KNN_MAX, clustered_knn, exact_knn  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402

MASTER = "local[2]"


def embedding_rates(root: Path) -> dict:
    """Images/second of hashing + decoding + embedding ``root``, local and Spark, cold and warm."""
    from dedup import spark as S

    t = time.perf_counter()
    S.session(MASTER, shuffle_partitions=4).sparkContext.setLogLevel("ERROR")
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


def after_embedding(n: int, stats) -> dict:
    """The distributed kNN, pHash join and components on ``n`` synthetic rows, beside the local engine."""
    from dedup import spark as S

    data = synthetic(n, stats=stats)
    X, codes = data["emb"], data["codes"]
    spark = S.session(MASTER, shuffle_partitions=4)
    row: dict = {"n": n}

    t = time.perf_counter()
    clustered_knn(X, 11) if n > EXACT_KNN_MAX else exact_knn(X, X, 11)
    row["local_knn_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    df = S.vectors_frame(spark, X).repartition(8)
    ids = S.neighbour_arrays(S.neighbours(df, 11), n, 11)[0]
    row["spark_knn_seconds"] = round(time.perf_counter() - t, 1)
    queries = np.sort(np.random.default_rng(1).choice(n, min(n, 500), replace=False))
    row["spark_knn_recall_at_10"] = round(knn_recall(X, ids, queries), 4)

    t = time.perf_counter()
    want = near_duplicate_pairs(codes, 4)[0]
    row["local_phash_seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    engine = S.SparkEngine(MASTER)
    got = engine.phash_pairs(codes, 4)
    row["spark_phash_seconds"] = round(time.perf_counter() - t, 1)
    row["phash_pairs"] = int(len(got))
    row["phash_pairs_equal_local"] = bool(np.array_equal(got, want))

    t = time.perf_counter()
    edges = spark.createDataFrame(got.astype(np.int64).tolist(), "a long, b long")
    comps = S.connected_components(edges, spark.range(n).select("id")).select("component").distinct().count()
    row["spark_components_seconds"] = round(time.perf_counter() - t, 1)
    row["components"] = int(comps)
    print(f"  {n:>9,d} {row}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append", default=None, help="synthetic rows (default 20000)")
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    rates = embedding_rates(BENCH / "ukbench-dev" / "images")
    stats = real_statistics()
    rows = [after_embedding(n, stats) for n in sorted(args.n or [20_000])]
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
            "| rows | kNN, local engine | kNN, Spark | Spark kNN recall@10 | pHash, local | pHash, Spark "
            "| pHash pairs (equal to local) | components, Spark |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {r['n']:,} | {r['local_knn_seconds']} s "
                f"| {r['spark_knn_seconds']} s | {r['spark_knn_recall_at_10']:.3f} | {r['local_phash_seconds']} s "
                f"| {r['spark_phash_seconds']} s | {r['phash_pairs']:,} "
                f"({'yes' if r['phash_pairs_equal_local'] else 'NO'}) "
                f"| {r['spark_components_seconds']} s |"
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
        "Second: the steps after embedding on synthetic rows (`benchmarks/scale.py`'s data); the local "
        f"kNN column is the local engine's search (exact up to {EXACT_KNN_MAX:,} rows, clustered above).\n\n"
        + table
        + "\n"
    )
    write("spark", {"machine": m, "master": MASTER, "embedding": rates, "after_embedding": rows}, md)
    if args.readme:
        replace_readme_block("SPARK-TABLE", table)


if __name__ == "__main__":
    main()
