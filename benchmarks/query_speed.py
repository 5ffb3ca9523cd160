"""Query time on a 10,000-image catalogue, once loaded.

The catalogue: 10,000 real images (ukbench-dev photos with 9 augmented
copies each, as in ann_recall.py, and 4 x 4 grid tiles of the first 250
photos), embedded with efficientnet-lite0 (cached in benchmarks/.cache),
with their colour descriptors, written out as a `run` output folder
(embeddings, colours, Annoy index, groups.csv, run.json with its file
records). Queries: the robustness photos, which are not in the catalogue.
Reported, for the default colour-fused space (every catalogue row scored)
and for the embedding space (Annoy candidates, re-ranked exactly): the
time to load the Searcher, and the mean time per query (decoding and
embedding the query photo included), for single queries and a batch.

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
from ann_recall import augmented
from ann_recall import embeddings as tiles9
from PIL import Image

from dedup.backbones import EfficientNetLite0
from dedup.cache import Cache
from dedup.colour import colour_descriptor
from dedup.grouping import GroupingParams
from dedup.index import AnnIndex
from dedup.query import Searcher
from dedup.report.files import file_records


def tiles16(n_photos: int) -> np.ndarray:
    net = EfficientNetLite0()
    net.check_weights()
    cache = Cache(ROOT / "benchmarks" / ".cache" / "ann.sqlite")
    key = f"ukbench-dev-tiles16-{n_photos}"
    got = cache.get_embeddings([key], "query-bench", net.weights_id, n_photos * 16 * net.dim)
    if key in got:
        cache.close()  # its lock too: the next caller opens the same cache
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


def tile_crops(path: Path) -> list:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    return [im.crop((x * w // 4, y * h // 4, (x + 1) * w // 4, (y + 1) * h // 4)) for y in range(4) for x in range(4)]


def colours(n_photos: int) -> np.ndarray:
    """The colour descriptors of the catalogue's images, in its row order."""
    rng = np.random.default_rng(0)  # ann_recall.embeddings' augmentations, in its order
    paths = sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))
    rows = [colour_descriptor(im) for p in paths for im in augmented(p, rng, 9)]
    rows += [colour_descriptor(c) for p in paths[:n_photos] for c in tile_crops(p)]
    return np.stack(rows)


def timed(searcher: Searcher, queries: list) -> tuple[float, float]:
    """Mean ms per query, one at a time and batched."""
    searcher.query([queries[0]], n=10)  # warm-up
    t = time.perf_counter()
    for q in queries:
        searcher.query([q], n=10)
    single_ms = (time.perf_counter() - t) / len(queries) * 1000
    t = time.perf_counter()
    searcher.query(queries, n=10)
    return single_ms, (time.perf_counter() - t) / len(queries) * 1000


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
        np.save(out / "colours.npy", colours(250)[: len(X)])
        pd.DataFrame(
            {"path": [f"item{i:05d}.jpg" for i in range(len(X))], "group": [f"g{i:05d}" for i in range(len(X))]}
        ).to_csv(out / "groups.csv", index=False)
        names = ["groups.csv", f"embeddings-{net.name}.npy", f"index-{net.name}.ann", "colours.npy"]
        meta = {
            "root": str(out),
            "backbones": [net.describe()],
            "counts": {"images": len(X)},
            "settings": {"grouping": {"colour_weight": GroupingParams().colour_weight}},
            "files": file_records(out, names),
        }
        (out / "run.json").write_text(json.dumps(meta))
        t = time.perf_counter()
        searcher = Searcher(out)
        searcher.backbones[0].load()
        load_s = time.perf_counter() - t
        assert searcher.space == "fused"
        single_ms, batch_ms = timed(searcher, queries)
        searcher.colours = None  # the embedding space: Annoy candidates
        emb_single_ms, emb_batch_ms = timed(searcher, queries)
    data = {
        "machine": machine(),
        "catalogue": len(X),
        "queries": len(queries),
        "index_build_s": build_s,
        "load_s": load_s,
        "ms_per_query_single": single_ms,
        "ms_per_query_batch": batch_ms,
        "embedding_space_ms_per_query_single": emb_single_ms,
        "embedding_space_ms_per_query_batch": emb_batch_ms,
    }
    md = (
        f"# Query speed\n\nMachine: {machine()}. Produced by `python benchmarks/query_speed.py`.\n\n"
        "| catalogue | queries | space | index build (s) | load Searcher + model (s) | ms per query, one at a time "
        "| ms per query, batched |\n|---|---|---|---|---|---|---|\n"
        f"| {len(X)} real images, efficientnet-lite0 | {len(queries)} photos not in the catalogue | "
        f"colour-fused, every row scored (default) | - | {load_s:.1f} | {single_ms:.0f} | {batch_ms:.0f} |\n"
        f"| {len(X)} real images, efficientnet-lite0 | {len(queries)} photos not in the catalogue | "
        f"embedding, Annoy candidates | {build_s:.1f} | {load_s:.1f} | {emb_single_ms:.0f} | {emb_batch_ms:.0f} |\n\n"
        "A query's time includes decoding and embedding the query photo and scoring: every catalogue row in "
        "the colour-fused space, or the Annoy search and the exact re-ranking of its candidates in the "
        "embedding space.\n"
    )
    write("query_speed", data, md)


if __name__ == "__main__":
    main()
