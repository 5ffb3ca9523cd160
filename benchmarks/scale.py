"""Every stage after embedding, at catalogue scale, on synthetic data with planted groups.

Feeds N synthetic images (embeddings, pHashes and colour descriptors with
realistic structure) through the hash pass, the indexes, candidate
generation, the pair evidence, the pair model, the grouping and the report,
and measures seconds and peak resident memory per stage. The grouping found
is scored against the planted products (pairwise precision and recall), so
that speed is never bought with wrong answers.

Structure of the data: products of 1-4 images each; products come in
families of 2-6 look-alikes (same cut, another colour: close embeddings,
different colour); a product's images are close in embedding and colour; a
third of them are re-encoded copies (pHash within 3 bits), the rest other
views (unrelated pHash). Geometric verification needs pixels and is not run
(as with ``--no-verify``).

    python benchmarks/scale.py --n 10000 --n 100000 [--readme]

Writes benchmarks/results/scale.{md,json} and scale.png (log-log time per stage).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, replace_readme_block, write  # noqa: E402

from dedup.calibration import PairModel, pair_features  # noqa: E402
from dedup.colour import DIM as COLOUR_DIM  # noqa: E402
from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import GroupingParams, candidate_pairs, fused_vectors, group, score_pairs  # noqa: E402
from dedup.hashing import hash_pass  # noqa: E402
from dedup.index import EXACT_KNN_MAX, build_indexes  # noqa: E402
from dedup.pipeline import DEFAULT_K, Result, groups_table  # noqa: E402
from dedup.report import write_report  # noqa: E402

DIM = 1280
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


def synthetic(n: int, seed: int = 0) -> dict:
    """``n`` synthetic images: embeddings, colours, pHashes, digests and the planted product of each."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 4], size=n, p=[0.3, 0.3, 0.25, 0.15])
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n) + 1]
    sizes[-1] -= sizes.sum() - n
    sizes = sizes[sizes > 0]
    product = np.repeat(np.arange(len(sizes)), sizes)
    fam_sizes = rng.integers(2, 7, size=len(sizes))
    family = np.repeat(np.arange(len(sizes)), fam_sizes)[: len(sizes)]
    fam_centre = unit(rng.standard_normal((family.max() + 1, DIM)).astype(np.float32))
    prod_centre = unit(fam_centre[family] + 0.45 * unit(rng.standard_normal((len(sizes), DIM)).astype(np.float32)))
    emb = unit(prod_centre[product] + 0.2 * unit(rng.standard_normal((n, DIM)).astype(np.float32)))
    # colour: each product its own few dominant bins, shared by its images
    hist = np.zeros((len(sizes), COLOUR_DIM), np.float32)
    for _ in range(4):
        hist[np.arange(len(sizes)), rng.integers(0, COLOUR_DIM, len(sizes))] += rng.random(len(sizes)) + 0.2
    img_hist = hist[product] + 0.05 * rng.random((n, COLOUR_DIM)).astype(np.float32) * (hist[product] > 0)
    colours = np.sqrt(img_hist / img_hist.sum(axis=1, keepdims=True)).astype(np.float32)
    base = rng.integers(0, 2**63, size=len(sizes), dtype=np.uint64) * np.uint64(2)
    codes = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2)
    copy = rng.random(n) < 0.33
    flips = np.zeros(n, np.uint64)
    for _ in range(3):
        bit = rng.integers(0, 64, n).astype(np.uint64)
        flips ^= np.where(rng.random(n) < 0.5, np.uint64(1) << bit, np.uint64(0))
    codes = np.where(copy, base[product] ^ flips, codes)
    digests = [f"{i:064x}" for i in range(n)]
    return {"emb": emb, "colours": colours, "codes": codes, "digests": digests, "product": product}


def run(n: int) -> dict:
    """Every stage after embedding on ``n`` synthetic images; seconds and peak memory per stage."""
    data = synthetic(n)
    params = GroupingParams()
    stages: dict[str, dict] = {}

    def stage(name: str):
        p = Peak()
        stages[name] = {}
        return p, stages[name]

    def done(p: Peak, rec: dict) -> None:
        rec.update(seconds=round(p.seconds, 2), peak_gib=round(p.peak / 2**30, 2))
        print(f"  {n:>9,d} {list(stages)[-1]:<10s} {p.seconds:8.1f} s  peak {p.peak / 2**30:5.2f} GiB", flush=True)

    p, rec = stage("hash pass")
    with p:
        hp = hash_pass(data["digests"], data["codes"])
    done(p, rec)
    p, rec = stage("index")
    with p:
        emb = {"efficientnet-lite0": data["emb"]}
        fused = fused_vectors([data["emb"]], data["colours"], params.colour_weight)
        indexes, ids = build_indexes(emb, DEFAULT_K)
        fused_ids = build_indexes({"fused": fused}, DEFAULT_K, keep=False)[1][0]
    done(p, rec)
    p, rec = stage("candidates")
    with p:
        ij = candidate_pairs(ids + [fused_ids], extra=hp["phash"])
        pairs = score_pairs(ij, [data["emb"]], data["colours"], fused, fused_ids, data["codes"], params.k_context)
    done(p, rec)
    p, rec = stage("decide")
    with p:
        conf = PairModel.load(None).predict(pair_features(pairs))
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
        write_report(result, Path(tmp) / "out")
    done(p, rec)
    pw = pairwise_scores(grouping.labels, data["product"])
    total = sum(s["seconds"] for s in stages.values())
    return {
        "n": n,
        "stages": stages,
        "total_seconds": round(total, 1),
        "peak_gib": max(s["peak_gib"] for s in stages.values()),
        "candidate_pairs": int(len(ij)),
        "pairwise": pw,
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
    ax.loglog(ns, [max(r["total_seconds"], 0.01) for r in rows], marker="s", color="k", label="all")
    ax.set_xlabel("images")
    ax.set_ylabel("seconds (one 1280-d backbone)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, action="append", required=True)
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    rows = [run(n) for n in sorted(args.n)]
    names = list(rows[0]["stages"])
    lines = [
        "| images | " + " | ".join(names) + " | all stages | peak memory | candidate pairs | planted P / R |",
        "|---|" + "---|" * (len(names) + 4),
    ]
    for r in rows:
        cells = [f"{r['stages'][s]['seconds']:.1f} s" for s in names]
        pw = r["pairwise"]
        lines.append(
            f"| {r['n']:,} | " + " | ".join(cells) + f" | {r['total_seconds']:.1f} s | {r['peak_gib']:.2f} GiB | "
            f"{r['candidate_pairs']:,} | {pw['precision']:.3f} / {pw['recall']:.3f} |"
        )
    table = "\n".join(lines)
    m = machine()
    md = (
        f"# Every stage after embedding, at scale\n\nSynthetic images with planted products (see "
        f"`benchmarks/scale.py`), one 1280-d backbone, no geometric verification; {m['cores']} cores, {m['date']}. "
        "Seconds and peak resident memory of the process per stage. Neighbour lists: exact up to "
        f"{EXACT_KNN_MAX:,} images, Annoy's search above (`dedup/index.py`).\n\n" + table + "\n"
    )
    write("scale", {"machine": m, "rows": rows}, md)
    plot(rows, RESULTS / "scale.png")
    if args.readme:
        replace_readme_block("SCALE-TABLE", table)


if __name__ == "__main__":
    main()
