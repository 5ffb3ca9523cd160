"""Query time on a 10,000-image catalogue, once loaded.

The catalogue: 10,000 real images (ukbench-dev photos, their 3 x 3 grid
tiles, and 4 x 4 grid tiles of the first 250 photos), embedded with
efficientnet-lite0 (cached in benchmarks/.cache), written out as a `run`
output folder (embeddings, Annoy index, groups.csv, run.json). Queries:
the 26 robustness photos, which are not in the catalogue. Reported: the
time to load the Searcher, and the mean time per query (embedding the
query photo included), for single queries and a batch.

    python benchmarks/query_speed.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import BENCH, ROOT, machine, write
from ann_recall import embeddings as tiles9
from PIL import Image

from dedup.backbones import EfficientNetLite0
from dedup.cache import Cache
from dedup.index import AnnIndex
from dedup.query import Searcher


def tiles16(n_photos: int) -> np.ndarray:
    net = EfficientNetLite0()
    net.check_weights()
    cache = Cache(ROOT / "benchmarks" / ".cache" / "ann.sqlite")
    key = f"ukbench-dev-tiles16-{n_photos}"
    got = cache.get_embeddings([key], "query-bench", net.weights_id, n_photos * 16 * net.dim)
    if key in got:
        return got[key].reshape(-1, net.dim)
    rows = []
    for p in sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))[:n_photos]:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        crops = [
            im.crop((x * w // 4, y * h // 4, (x + 1) * w // 4, (y + 1) * h // 4)) for y in range(4) for x in range(4)
        ]
        rows.append(net.embed(np.stack([net.prepare(c) for c in crops])))
    X = np.concatenate(rows)
    cache.put_embeddings([key], "query-bench", net.weights_id, X.reshape(1, -1))
    cache.close()
    return X


def main() -> None:
    X = np.concatenate([tiles9(9), tiles16(250)])[:10_000]
    net = EfficientNetLite0()
    net.check_weights()
    queries = sorted(p for p in (BENCH / "robustness" / "images").iterdir() if "corrupt" not in p.name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        AnnIndex().build(X).save(out / f"index-{net.name}.ann")
        build_s = time.perf_counter() - t
        np.save(out / f"embeddings-{net.name}.npy", X)
        pd.DataFrame(
            {"path": [f"item{i:05d}.jpg" for i in range(len(X))], "group": [f"g{i:05d}" for i in range(len(X))]}
        ).to_csv(out / "groups.csv", index=False)
        (out / "run.json").write_text(json.dumps({"root": str(out), "backbones": [net.describe()]}))
        t = time.perf_counter()
        searcher = Searcher(out)
        searcher.backbones[0].load()
        load_s = time.perf_counter() - t
        searcher.query([queries[0]], n=10)  # warm-up
        t = time.perf_counter()
        for q in queries:
            searcher.query([q], n=10)
        single_ms = (time.perf_counter() - t) / len(queries) * 1000
        t = time.perf_counter()
        searcher.query(queries, n=10)
        batch_ms = (time.perf_counter() - t) / len(queries) * 1000
    data = {
        "machine": machine(),
        "catalogue": len(X),
        "queries": len(queries),
        "index_build_s": build_s,
        "load_s": load_s,
        "ms_per_query_single": single_ms,
        "ms_per_query_batch": batch_ms,
    }
    md = (
        f"# Query speed\n\nMachine: {machine()}. Produced by `python benchmarks/query_speed.py`.\n\n"
        f"| catalogue | queries | index build (s) | load Searcher + model (s) | ms per query, one at a time "
        f"| ms per query, batched |\n|---|---|---|---|---|---|\n"
        f"| {len(X)} real images, efficientnet-lite0 | {len(queries)} photos not in the catalogue | "
        f"{build_s:.1f} | {load_s:.1f} | {single_ms:.0f} | {batch_ms:.0f} |\n\n"
        "A query's time includes decoding and embedding the query photo, the Annoy search and the exact "
        "re-ranking of its candidates.\n"
    )
    write("query_speed", data, md)


if __name__ == "__main__":
    main()
