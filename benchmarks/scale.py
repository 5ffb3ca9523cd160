"""Every stage after embedding, at catalogue scale, on synthetic data with planted groups.

Feeds N synthetic images (embeddings, pHashes and colour descriptors with
realistic structure) through the cache (written as a cold run writes it,
then opened and read back as a warm run does), the hash pass, the indexes, candidate
generation, the pair evidence, the pair model, the grouping and the report,
and measures seconds and peak resident memory per stage. The grouping found
is scored against the planted products (pairwise precision and recall), so
that speed is never bought with wrong answers.

Structure of the data (:func:`synthetic`): products of 1-4 images each,
in families of ~5 look-alikes (close embeddings, other colours) and
categories of ~4,000 images, drawn with the covariance of real
EfficientNet-Lite0 embeddings of the shared sets and coloured with their
real colour descriptors; a third of the images are re-encoded copies (pHash
within 3 bits), the rest other views (unrelated pHash). Geometric
verification needs pixels and is not run (as with ``--no-verify``). The
neighbour lists' recall@10 against exact search is measured on 500 rows.

    python benchmarks/scale.py --n 10000 --n 100000 --n 1000000 [--readme] [--from-json]

Writes benchmarks/results/scale.{md,json} and scale.png (log-log time per stage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, RESULTS, ROOT, machine, replace_readme_block, write  # noqa: E402

from dedup.cache import Cache  # noqa: E402
from dedup.calibration import PairModel  # noqa: E402
from dedup.colour import LAYOUT_DIM, pack  # noqa: E402
from dedup.embed import Embedded, _from_cache  # noqa: E402
from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import GroupingParams, candidate_pairs, fused_parts, fused_vectors, group, score_pairs  # noqa: E402
from dedup.hashing import hash_pass  # noqa: E402
from dedup.index import EXACT_KNN_MAX, N_PROBE, WeightedVectors, annoy_indexes, neighbour_lists  # noqa: E402
from dedup.pipeline import DEFAULT_K, Deduplicator, Result, groups_table  # noqa: E402
from dedup.report import write_report  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident memory of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class Peak:
    """Samples the resident memory every 10 ms while a stage runs."""

    def __enter__(self) -> "Peak":
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.t = time.perf_counter()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_statistics(cache: Path = CACHE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings, colour descriptors and colour layouts of the real photos
    of ``ukbench-dev`` and ``inshop-women`` (cached in benchmarks/.cache;
    computed on first use): the spectrum and the colours the synthetic data
    copies."""
    embs, cols, lays = [], [], []
    for name in ("ukbench-dev", "inshop-women"):
        dd = Deduplicator(backbones="efficientnet-lite0", cache=cache / f"{name}.sqlite", progress=False)
        e = dd.embed(BENCH / name)
        embs.append(e.embeddings["efficientnet-lite0"])
        cols.append(e.colours)
        lays.append(e.layouts)
    return np.vstack(embs).astype(np.float64), np.vstack(cols).astype(np.float32), np.vstack(lays)


#: Spread of each level of the synthetic hierarchy (category, family,
#: product, image) in units of the real embeddings' covariance; chosen so
#: that images of one product lie at a median cosine distance of ~0.15, the
#: 10th nearest neighbour at ~0.20 and a random pair at ~0.54, between
#: inshop-women (0.37) and ukbench-dev (0.75) (measured at 20,000 rows).
SPREAD = (0.7, 0.5, 0.4, 0.55)


def synthetic(n: int, seed: int = 0, stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
    """``n`` synthetic images: embeddings, colours, pHashes, digests and the planted product of each.

    Embeddings: a hierarchy of Gaussian draws (a category per ~4,000 images,
    families of ~5 products, products of ~2 images) shaped by the covariance
    of real Lite0 embeddings (its 256 leading components, which hold 89% of
    the variance) around their mean, then L2-normalised (:data:`SPREAD`).
    Colours: each product takes a real colour descriptor (products of one
    family mostly take different ones: colour variants) and each image adds
    a little noise; its colour layout is the same real photo's, with noise.
    pHashes: a third of the images are re-encoded copies of
    their product's first image (within 3 bits), the rest unrelated.
    """
    E, C, LAY = stats if stats is not None else real_statistics()
    rank = 256
    mu = E.mean(axis=0)
    w, U = np.linalg.eigh(np.cov((E - mu).T))
    basis = (U[:, ::-1][:, :rank] * np.sqrt(np.maximum(w[::-1][:rank], 0))).T.astype(np.float32)
    mu32 = mu.astype(np.float32)
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 4], size=n, p=[0.3, 0.3, 0.25, 0.15])
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    sizes = sizes[sizes > 0]
    n_prod = len(sizes)
    product = np.repeat(np.arange(n_prod), sizes)
    n_fam, n_cat = max(1, n_prod // 5), max(1, n // 4000)
    cat = rng.standard_normal((n_cat, rank), dtype=np.float32) * SPREAD[0]
    fam = cat[rng.integers(0, n_cat, n_fam)] + rng.standard_normal((n_fam, rank), dtype=np.float32) * SPREAD[1]
    family = rng.integers(0, n_fam, n_prod)
    prod = fam[family] + rng.standard_normal((n_prod, rank), dtype=np.float32) * SPREAD[2]
    emb = np.empty((n, E.shape[1]), np.float32)
    step = 65_536
    for a in range(0, n, step):
        z = prod[product[a : a + step]]
        z = z + rng.standard_normal(z.shape, dtype=np.float32) * SPREAD[3]
        emb[a : a + step] = unit(z @ basis + mu32)
    del cat, fam, prod
    template = rng.integers(0, len(C), n_prod)
    colours = np.empty((n, C.shape[1]), np.float32)
    for a in range(0, n, step):
        h = C[template[product[a : a + step]]] ** 2
        h = h * (1 + 0.2 * rng.random(h.shape, dtype=np.float32))
        colours[a : a + step] = np.sqrt(h / h.sum(axis=1, keepdims=True))
    layouts = np.empty((n, LAY.shape[1]), np.uint8)
    for a in range(0, n, step):
        lay = LAY[template[product[a : a + step]]].astype(np.int16)
        layouts[a : a + step] = np.clip(lay + rng.integers(-8, 9, lay.shape, dtype=np.int16), 0, 255)
    base = rng.integers(0, 2**63, size=n_prod, dtype=np.uint64) * np.uint64(2)
    codes = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2)
    copy = rng.random(n) < 0.33
    flips = np.zeros(n, np.uint64)
    for _ in range(3):
        bit = rng.integers(0, 64, n).astype(np.uint64)
        flips ^= np.where(rng.random(n) < 0.5, np.uint64(1) << bit, np.uint64(0))
    codes = np.where(copy, base[product] ^ flips, codes)
    digests = [f"{i:064x}" for i in range(n)]
    return {"emb": emb, "colours": colours, "layouts": layouts, "codes": codes, "digests": digests, "product": product}


def knn_recall(X, ids: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of neighbour lists against exact search, on sampled query rows.

    ``ids`` holds each row's 11 nearest, itself first; the 10 after it are
    compared with the exact 10 nearest other rows (blocked products, as
    :func:`dedup.index.exact_knn`)."""
    W = X if isinstance(X, WeightedVectors) else WeightedVectors([X], [1.0])
    sim = np.empty((len(queries), len(W)), np.float32)
    for a in range(0, len(W), 65_536):
        cols = np.arange(a, min(a + 65_536, len(W)))
        sim[:, cols] = W.gram(queries, cols)
    sim[np.arange(len(queries)), queries] = -np.inf
    exact = np.argpartition(-sim, 10, axis=1)[:, :10]
    found = [set(row[row >= 0]) - {q} for row, q in zip(ids[queries], queries)]
    return float(np.mean([len(f & set(e)) / 10 for f, e in zip(found, exact)]))


#: Measured beside the run's stages, not counted in "all stages": a cold
#: run writes the cache while it embeds, a warm run reads it before the hash pass.
CACHE_STAGES = ("cache write", "cache read")


def after_embedding(stages: dict) -> float:
    """Seconds of the stages after embedding (hash pass to report), the issue's measure."""
    return round(sum(v["seconds"] for k, v in stages.items() if k not in CACHE_STAGES), 1)


def cache_write(path: Path, data: dict, batch: int = 256) -> None:
    """Store every image as a cold run does: per batch, each file's digest,
    pHash and colour evidence (descriptor and layout), then the batch's embeddings (one commit)."""
    st = os.stat(path.parent)
    emb, codes, colours, digests = data["emb"], data["codes"], data["colours"], data["digests"]
    layouts = data["layouts"]
    with Cache(path) as cache:
        for a in range(0, len(digests), batch):
            for i in range(a, min(a + batch, len(digests))):
                cache.put_digest(f"img{i:07d}.jpg".encode(), st, digests[i])
                cache.put_file(digests[i], int(codes[i]), 0, 0, pack(colours[i], layouts[i]), "")
            cache.put_embeddings(digests[a : a + batch], "efficientnet-lite0", "synthetic", emb[a : a + batch])


def cache_read(path: Path, data: dict) -> tuple[np.ndarray, float]:
    """A warm run's read: open the cache (its integrity check included) and
    fill new preallocated matrices through :func:`dedup.embed._from_cache`.
    The stored embeddings, colours and layouts replace ``data``'s (freed first, so
    that memory shows the warm run's single copy); sampled rows are checked
    equal.
    Returns the matrix and the seconds that opening the cache took."""
    (n, d), c = data["emb"].shape, data["colours"].shape[1]
    check = np.random.default_rng(2).choice(n, min(n, 1000), replace=False)
    expect = data["emb"][check].copy(), data["colours"][check].copy(), data["layouts"][check].copy()
    del data["emb"], data["colours"], data["layouts"]
    net = SimpleNamespace(name="efficientnet-lite0", cache_id="synthetic", dim=d)
    out = Embedded(
        [None] * n,
        [np.empty((n, d), np.float32)],
        [np.zeros(n, bool)],
        np.empty((n, c), np.float32),
        np.empty((n, LAYOUT_DIM), np.uint8),
    )
    t0 = time.perf_counter()
    with Cache(path) as cache:
        opened = time.perf_counter() - t0
        _from_cache(data["digests"], [net], cache, "synthetic", out)  # type: ignore[list-item]
    got = out.vectors[0][check], out.colours[check], out.layouts[check]
    if not (out.have[0].all() and all(np.array_equal(a, b) for a, b in zip(got, expect))):
        raise AssertionError("the cache did not give back what was stored")
    data["colours"], data["layouts"] = out.colours, out.layouts
    return out.vectors[0], opened


def run(n: int, stats) -> dict:
    """Every stage after embedding on ``n`` synthetic images; seconds and peak memory per stage."""
    data = synthetic(n, stats=stats)
    params = GroupingParams()
    stages: dict[str, dict] = {}

    def stage(name: str):
        p = Peak()
        stages[name] = {}
        return p, stages[name]

    def done(p: Peak, rec: dict) -> None:
        rec.update(seconds=round(p.seconds, 2), peak_gib=round(p.peak / 2**30, 2))
        print(f"  {n:>9,d} {list(stages)[-1]:<10s} {p.seconds:8.1f} s  peak {p.peak / 2**30:5.2f} GiB", flush=True)

    p, rec = stage("cache write")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp_cache = tempfile.TemporaryDirectory(dir=CACHE)
    db = Path(tmp_cache.name) / "cache.sqlite"
    with p:
        cache_write(db, data)
    done(p, rec)
    p, rec = stage("cache read")
    with p:
        data["emb"], opened = cache_read(db, data)
    done(p, rec)
    rec["open_seconds"] = round(opened, 2)
    rec["database_gib"] = round(sum(f.stat().st_size for f in Path(tmp_cache.name).iterdir()) / 2**30, 2)
    tmp_cache.cleanup()
    p, rec = stage("hash pass")
    with p:
        hp = hash_pass(data["digests"], data["codes"])
    done(p, rec)
    p, rec = stage("index")
    with p:
        emb = {"efficientnet-lite0": data["emb"]}
        make = fused_parts if n > EXACT_KNN_MAX else fused_vectors  # as Deduplicator.fused_space
        fused = make([data["emb"]], data["colours"], params.colour_weight)
        indexes, ids = annoy_indexes(emb), neighbour_lists(emb, DEFAULT_K)
        fused_ids = neighbour_lists({"fused": fused}, DEFAULT_K)[0]
    done(p, rec)
    p, rec = stage("candidates")
    with p:
        ij = candidate_pairs(ids + [fused_ids], extra=hp["phash"])
        pairs = score_pairs(
            ij, [data["emb"]], data["colours"], fused, fused_ids, data["codes"], params.k_context, data["layouts"]
        )
    done(p, rec)
    p, rec = stage("decide")
    with p:
        conf = PairModel.load(None, verified=False).predict_pairs(pairs)  # no verification here
    done(p, rec)
    p, rec = stage("group")
    with p:
        grouping = group(n, pairs, conf, hp, params)
    done(p, rec)
    p, rec = stage("report")
    with p, tempfile.TemporaryDirectory() as tmp:
        facts = [_Facts(0, 0, "")] * n
        rel = [f"img{i:07d}.jpg" for i in range(n)]
        df = groups_table(rel, grouping, facts, data["digests"])
        result = Result(Path(tmp), df, pd.DataFrame(columns=["path", "reason"]), emb, indexes, data["colours"], pairs)
        result.meta = {"counts": {}}
        result.confidence, result.fused_ids = conf, fused_ids  # the re-ranked neighbour lists are written too
        write_report(result, Path(tmp) / "out")
    done(p, rec)
    pw = pairwise_scores(grouping.labels, data["product"])
    queries = np.sort(np.random.default_rng(1).choice(n, min(n, 500), replace=False))
    recall = {"embedding": knn_recall(data["emb"], ids[0], queries), "fused": knn_recall(fused, fused_ids, queries)}
    print(f"  recall@10 against exact search: {recall}", flush=True)
    total = after_embedding(stages)
    return {
        "n": n,
        "stages": stages,
        "total_seconds": round(total, 1),
        "peak_gib": max(s["peak_gib"] for s in stages.values()),
        "candidate_pairs": int(len(ij)),
        "pairwise": pw,
        "recall_at_10": recall,
    }


class _Facts:
    def __init__(self, width: int, height: int, note: str):
        self.width, self.height, self.note = width, height, note


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    ns = [r["n"] for r in rows]
    for name in rows[0]["stages"]:
        ax.loglog(ns, [max(r["stages"][name]["seconds"], 0.01) for r in rows], marker="o", label=name)
    ax.loglog(ns, [max(r["total_seconds"], 0.01) for r in rows], marker="s", color="k", label="after embedding")
    ax.set_xlabel("images")
    ax.set_ylabel("seconds (one 1280-d backbone)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def notes(rows: list[dict]) -> str:
    """Lines on growth between the two largest sizes and on the cache's size."""
    out = []
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        ratio, nlogn = b["total_seconds"] / a["total_seconds"], b["n"] * np.log(b["n"]) / (a["n"] * np.log(a["n"]))
        out.append(
            f"\nGrowth from {a['n']:,} to {b['n']:,} images: {ratio:.1f}x the time (n log n: {nlogn:.1f}x; "
            "per stage: "
            + ", ".join(
                f"{k} {b['stages'][k]['seconds'] / max(a['stages'][k]['seconds'], 1e-9):.1f}x" for k in b["stages"]
            )
            + ")."
        )
    for r in rows:
        c = r["stages"].get("cache read", {})
        if "database_gib" in c:
            out.append(
                f"\n{r['n']:,} images: cache database {c['database_gib']:.2f} GiB, opened (integrity check "
                f"included) in {c['open_seconds']:.1f} s."
            )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append", required=True)
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="rebuild the tables from results/scale.json")
    args = ap.parse_args()
    if args.from_json:  # rebuild the report from the last measurement
        saved = json.loads((RESULTS / "scale.json").read_text())
        rows = [r for r in saved["rows"] if r["n"] in args.n]
        for r in rows:
            r["total_seconds"] = after_embedding(r["stages"])
    else:
        stats = real_statistics()
        rows = [run(n, stats) for n in sorted(args.n)]
    names = list(rows[0]["stages"])
    lines = [
        "| images | "
        + " | ".join(names)
        + " | all stages | peak memory | candidate pairs | planted P / R | recall@10 (embedding / fused) |",
        "|---|" + "---|" * (len(names) + 5),
    ]
    for r in rows:
        cells = [f"{r['stages'][s]['seconds']:.1f} s" for s in names]
        pw = r["pairwise"]
        lines.append(
            f"| {r['n']:,} | " + " | ".join(cells) + f" | {r['total_seconds']:.1f} s | {r['peak_gib']:.2f} GiB | "
            f"{r['candidate_pairs']:,} | {pw['precision']:.3f} / {pw['recall']:.3f} | "
            f"{r['recall_at_10']['embedding']:.3f} / {r['recall_at_10']['fused']:.3f} |"
        )
    table = "\n".join(lines)
    m = saved["machine"] if args.from_json else machine()
    md = (
        f"# Every stage after embedding, at scale\n\nSynthetic images with planted products (see "
        f"`benchmarks/scale.py`), one 1280-d backbone, no geometric verification; {m['cores']} cores, {m['date']}. "
        "Seconds and peak resident memory of the process per stage. Neighbour lists: exact up to "
        f"{EXACT_KNN_MAX:,} images, the clustered search above ({N_PROBE} lists searched per list, "
        "`dedup/index.py`), with recall@10 against exact search on 500 sampled rows; above that size "
        "the Annoy index for `query` is left to the first query. *cache write*: every image stored as a "
        "cold run stores it (digest, pHash, colour, embedding; a commit per 256); *cache read*: a warm "
        "run opening the cache (its integrity check included) and reading everything back into one "
        "matrix. *All stages* counts the stages after embedding, hash pass to report (a cold run writes the "
        "cache while it embeds; a warm run reads it before the hash pass).\n\n" + table + "\n" + notes(rows)
    )
    write("scale", {"machine": m, "rows": rows}, md)
    plot(rows, RESULTS / "scale.png")
    if args.readme:
        replace_readme_block("SCALE-TABLE", table)


if __name__ == "__main__":
    main()
