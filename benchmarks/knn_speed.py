"""Neighbour lists, exact against Annoy, measured in one run: what chose
``dedup.index.EXACT_KNN_MAX``.

For each size, the synthetic 1280-d embeddings of ``benchmarks/scale.py``
(planted products and look-alike families): the seconds to find every row's
11 nearest rows exactly (:func:`dedup.index.exact_knn`, blocked matrix
products) and with Annoy at dedup's settings (build + one query per row,
threads as in a run), and Annoy's recall@11 against the exact lists on a
sample of 1,000 rows.

    python benchmarks/knn_speed.py [--n 5000 --n 20000 --n 50000]   # results/knn_speed.{md,json}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402
from scale import synthetic  # noqa: E402

from dedup.index import AnnIndex, exact_knn, recall_at_k  # noqa: E402

K = 11


def measure(n: int) -> dict:
    """Exact and Annoy neighbour lists of ``n`` synthetic rows: seconds and recall."""
    X = synthetic(n)["emb"]
    t = time.perf_counter()
    exact, _ = exact_knn(X, X, K)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    index = AnnIndex().build(X)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    approx, _ = index.query(X, K)
    t_query = time.perf_counter() - t
    sample = np.random.default_rng(0).choice(n, size=min(n, 1000), replace=False)
    return {
        "n": n,
        "exact_seconds": round(t_exact, 1),
        "annoy_build_seconds": round(t_build, 1),
        "annoy_query_seconds": round(t_query, 1),
        "annoy_over_exact": round((t_build + t_query) / t_exact, 2),
        "annoy_recall_at_11": round(recall_at_k(approx[sample], exact[sample]), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append")
    args = ap.parse_args()
    rows = []
    for n in sorted(args.n or [5000, 20000, 50000]):
        rows.append(measure(n))
        print(rows[-1], flush=True)
    m = machine()
    md = (
        "# Neighbour lists: exact against Annoy\n\n"
        f"Synthetic 1280-d embeddings (`benchmarks/scale.py`), every row's {K} nearest; one run, "
        f"{m['cores']} cores, {m['date']}. Annoy: 50 trees, `search_k` = 50 x {K} x 20.\n\n"
        "| rows | exact | Annoy build | Annoy queries | Annoy / exact time | Annoy recall@11 |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {r['n']:,} | {r['exact_seconds']} s | {r['annoy_build_seconds']} s | {r['annoy_query_seconds']} s | "
            f"{r['annoy_over_exact']}x | {r['annoy_recall_at_11']:.3f} |"
            for r in rows
        )
        + "\n"
    )
    write("knn_speed", {"machine": m, "rows": rows}, md)


if __name__ == "__main__":
    main()
