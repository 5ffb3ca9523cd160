"""Annoy recall@10 against exact search, on real embeddings, for the defaults.

The collection: every ukbench-dev photo plus its 9 tiles (a 3 x 3 grid,
each tile a different part of the scene, enlarged to the network input):
6,000 real images whose nearest neighbours are not trivial copies of each
other, embedded with efficientnet-lite0 (cached in benchmarks/.cache). For a grid
of ``n_trees`` and ``search_k`` factors it reports recall@10 (the share of
the exact 10 nearest, by cosine, that Annoy returns), build and query time.

    python benchmarks/ann_recall.py [--copies 9]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import BENCH, ROOT, machine, write
from PIL import Image

from dedup.backbones import EfficientNetLite0
from dedup.cache import Cache
from dedup.index import DEFAULT_N_TREES, SEARCH_K_FACTOR, AnnIndex, exact_knn, recall_at_k


def augmented(path, rng, copies):
    """The photo, then up to ``copies`` tiles of a 3 x 3 grid over it."""
    im = Image.open(path).convert("RGB")
    yield im
    w, h = im.size
    for t in range(min(copies, 9)):
        x, y = t % 3, t // 3
        yield im.crop((x * w // 3, y * h // 3, (x + 1) * w // 3, (y + 1) * h // 3))


def embeddings(copies: int) -> np.ndarray:
    net = EfficientNetLite0()
    net.check_weights()
    cache = Cache(ROOT / "benchmarks" / ".cache" / "ann.sqlite")
    key = f"ukbench-dev-tiles{copies}"
    got = cache.get_embeddings([key], "ann-bench", net.weights_id, 600 * (copies + 1) * net.dim)
    if key in got:
        cache.close()  # its lock too: the next caller opens the same cache
        return got[key].reshape(-1, net.dim)
    rng = np.random.default_rng(0)
    rows, batch = [], []
    paths = sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))
    for i, p in enumerate(paths):
        for im in augmented(p, rng, copies):
            batch.append(net.prepare(im))
            if len(batch) == 64:
                rows.append(net.embed(np.stack(batch)))
                batch = []
        if i % 50 == 0:
            print(f"embedded {i}/{len(paths)} photos", flush=True)
    if batch:
        rows.append(net.embed(np.stack(batch)))
    X = np.concatenate(rows)
    cache.put_embeddings([key], "ann-bench", net.weights_id, X.reshape(1, -1))
    cache.close()
    return X


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=9)
    args = ap.parse_args()
    X = embeddings(args.copies)
    Q = X[:: max(1, len(X) // 1000)]  # 1,000 queries spread over the collection
    exact_ids, _ = exact_knn(X, Q, 10)
    rows = []
    for n_trees in (10, 25, 50, 100):
        for factor in (1, 5, 20, 50):
            t = time.perf_counter()
            idx = AnnIndex(n_trees, factor).build(X)
            build = time.perf_counter() - t
            t = time.perf_counter()
            ids, _ = idx.query(Q, 10)
            query = (time.perf_counter() - t) / len(Q)
            rows.append(
                {
                    "n_trees": n_trees,
                    "search_k_factor": factor,
                    "recall@10": recall_at_k(ids, exact_ids),
                    "build_s": build,
                    "query_ms": query * 1000,
                    "default": n_trees == DEFAULT_N_TREES and factor == SEARCH_K_FACTOR,
                }
            )
            print(rows[-1], flush=True)
    md = [
        "# Annoy recall@10 vs exact search\n",
        f"{len(X)} real images (ukbench-dev photos + {args.copies} grid tiles of each), efficientnet-lite0 "
        f"embeddings ({X.shape[1]}-d), {len(Q)} queries, angular metric. Machine: {machine()}.\n",
        "| n_trees | search_k = n_trees x k x | recall@10 | build (s) | query (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " **(default)**" if r["default"] else ""
        md.append(
            f"| {r['n_trees']} | {r['search_k_factor']}{mark} | {r['recall@10']:.4f} | "
            f"{r['build_s']:.2f} | {r['query_ms']:.2f} |"
        )
    write("ann_recall", {"machine": machine(), "n": len(X), "dim": int(X.shape[1]), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
