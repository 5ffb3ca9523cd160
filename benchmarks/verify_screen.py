"""Which candidate pairs geometric verification is spent on: the screen
of :func:`dedup.verify.worth_verifying`, measured on every labelled set.

For each set, the default job is run once with every candidate pair
verified (``verify_all=True``, inlier counts cached in benchmarks/.cache).
Then, for each screen setting, the pairs the screen leaves out get the
shipped unverified model's confidence instead (as a screened run gives
them) and the groups are decided again. Reported: the share of pairs and
of images verified, how many pairs' decisions (join, review, apart) differ
from verifying every pair, and pairwise precision/recall. The defaults
(``SCREEN_MIN_CONFIDENCE``, ``SCREEN_NEAREST``) are the cheapest setting that
changes no decision on any set; the chosen row is marked. Besides the
labelled sets, *crowd-ukbench* (``edits.build_crowd_set``: 24 crops each of
5 photos) holds products with more near-identical photos than a run's
neighbour lists, which look ordinary to each other without verification.

Then the cold run on ukbench-dev (no cache, default settings), screened
against every pair verified: seconds of the whole run and of its
verification-and-grouping stage, in one process on this machine.

    python benchmarks/verify_screen.py

Writes benchmarks/results/verify_screen.{md,json}.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, ROOT, machine, write  # noqa: E402
from edits import build_crowd_set, build_edited_set  # noqa: E402

from dedup.calibration import PairModel  # noqa: E402
from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import GroupingParams, group  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402
from dedup.verify import (  # noqa: E402
    SCREEN_MAX_DISTANCE,
    SCREEN_MIN_CONFIDENCE,
    SCREEN_NEAREST,
    worth_verifying,
)

SETS = (
    "products-flipkart",
    "ukbench-dev",
    "inshop-women",
    "robustness",
    "edited-inshop",
    "edited-ukbench",
    "crowd-ukbench",
)
MIN_CONFIDENCE = (0.02, 0.05, 0.1)
NEAREST = (0, 1, 2, 3, 4)
MAX_DISTANCE = (-1.0, 0.1, 0.15, 0.2)


def _decision(conf: np.ndarray, params: GroupingParams) -> np.ndarray:
    """0 apart, 1 review, 2 join candidate, per pair."""
    return (conf >= params.review_confidence).astype(int) + (conf >= params.min_confidence).astype(int)


def measure_set(name: str) -> list[dict]:
    if name == "crowd-ukbench":
        folder = build_crowd_set()
    else:
        folder = build_edited_set(name) if name.startswith("edited-") else BENCH / name
    labels = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels[~labels.group.str.startswith("_")]
    cache = ROOT / "benchmarks" / ".cache" / f"{name}.sqlite"
    dd = Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False, verify_all=True)
    res = dd.run(folder, files=list(labels.path))
    truth = labels.set_index("path").group.reindex(res.groups.path).to_numpy()
    pairs, full = res.pairs, res.confidence
    unchecked = dataclasses.replace(
        pairs, inliers=np.full(len(pairs.ij), -1, np.int64), mismatch=np.full(len(pairs.ij), -1, np.float32)
    )
    p_unverified = PairModel.load(verified=False).predict_pairs(unchecked)  # as a screened run has it
    params = GroupingParams()
    n = len(truth)
    base = pairwise_scores(group(n, pairs, full, res.hash_pairs, params).labels, truth)
    rows = []
    for mc, near, md in itertools.product(MIN_CONFIDENCE, NEAREST, MAX_DISTANCE):
        keep = worth_verifying(pairs.ij, pairs.distance, p_unverified, mc, near, md)
        conf = np.where(keep, full, p_unverified)
        s = pairwise_scores(group(n, pairs, conf, res.hash_pairs, params).labels, truth)
        rows.append(
            {
                "dataset": name,
                "min_confidence": mc,
                "nearest": near,
                "max_distance": md,
                "pairs": int(len(keep)),
                "pairs_verified": round(float(keep.mean()), 4) if len(keep) else 0.0,
                "images_verified": round(len(np.unique(pairs.ij[keep].ravel())) / max(n, 1), 4),
                "decisions_changed": int((_decision(conf, params) != _decision(full, params)).sum()),
                "precision": s["precision"],
                "recall": s["recall"],
                "precision_all_verified": base["precision"],
                "recall_all_verified": base["recall"],
            }
        )
    return rows


def cold_runs() -> list[dict]:
    """Whole cold runs on ukbench-dev, screened and every pair verified."""
    root = BENCH / "ukbench-dev" / "images"
    out = []
    for verify_all in (False, True):
        dd = Deduplicator(backbones="efficientnet-lite0", cache=False, progress=False, verify_all=verify_all)
        t = time.perf_counter()
        res = dd.run(root)
        total = time.perf_counter() - t
        out.append(
            {
                "verify": "every pair" if verify_all else "screened (default)",
                "seconds": round(total, 1),
                "group_seconds": res.meta["seconds"]["group"],
                "images_per_second": round(len(res.groups) / total, 1),
                "pairs": res.meta["counts"]["candidate_pairs"],
                "pairs_verified": res.meta["counts"]["pairs_verified_geometrically"],
                "groups": res.meta["counts"]["groups_of_2_or_more"],
            }
        )
    return out


def main() -> None:
    rows = [r for name in SETS for r in measure_set(name)]
    df = pd.DataFrame(rows)
    keys = ["min_confidence", "nearest", "max_distance"]
    by = df.groupby(keys).agg(changed=("decisions_changed", "sum"), verified=("pairs_verified", "mean"))
    lines = [
        "| min confidence | nearest | max distance | pairs verified (mean over sets) | decisions changed (all sets) | "
        + " | ".join(f"{s} P/R" for s in SETS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(SETS),
    ]
    for (mc, near, md), agg in by.iterrows():
        chosen = (mc, near, md) == (SCREEN_MIN_CONFIDENCE, SCREEN_NEAREST, SCREEN_MAX_DISTANCE)
        cells = []
        for s in SETS:
            r = df[(df.dataset == s) & (df.min_confidence == mc) & (df.nearest == near) & (df.max_distance == md)]
            cells.append(f"{r.precision.iloc[0]:.3f}/{r.recall.iloc[0]:.3f}")
        mark = " **(default)**" if chosen else ""
        dist = "-" if md < 0 else f"{md:.2f}"
        lines.append(
            f"| {mc:.2f}{mark} | {near} | {dist} | {agg.verified:.3f} | {int(agg.changed)} | "
            + " | ".join(cells)
            + " |"
        )
    ref = df.drop_duplicates("dataset")
    lines += [
        "",
        "Every pair verified: "
        + ", ".join(f"{r.dataset} {r.precision_all_verified:.3f}/{r.recall_all_verified:.3f}" for r in ref.itertuples())
        + ".",
    ]
    per_set = df[
        (df.min_confidence == SCREEN_MIN_CONFIDENCE)
        & (df.nearest == SCREEN_NEAREST)
        & (df.max_distance == SCREEN_MAX_DISTANCE)
    ]
    lines += [
        "",
        "At the defaults, per set:",
        "",
        "| dataset | candidate pairs | pairs verified | images verified | decisions changed |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.dataset} | {r.pairs:,} | {r.pairs_verified:.3f} | {r.images_verified:.3f} | {r.decisions_changed} |"
        for r in per_set.itertuples()
    ]
    runs = cold_runs()
    lines += [
        "",
        "Cold runs on ukbench-dev (600 photos, no cache, defaults otherwise), one after the other in one process:",
        "",
        "| verification | run seconds | of which verification + grouping | images/second | pairs verified | groups |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['verify']} | {r['seconds']} | {r['group_seconds']} | {r['images_per_second']} | "
        f"{r['pairs_verified']:,} of {r['pairs']:,} | {r['groups']} |"
        for r in runs
    ]
    ratio = runs[1]["seconds"] / runs[0]["seconds"]
    lines.append(f"\nScreened run {ratio:.2f}x as fast as verifying every pair.")
    m = machine()
    md = (
        "# Geometric verification: which pairs it is spent on\n\n"
        f"Machine: {m}. Produced by `python benchmarks/verify_screen.py`. A pair is verified when the shipped "
        "unverified pair model gives it at least *min confidence*, when it is among either image's *nearest* "
        "candidates by ensemble distance, or when that distance is at most *max distance*; the others keep "
        "the unverified confidence. *Decisions changed*: pairs "
        "whose outcome (join candidate, review, apart) differs from verifying every pair. P/R: pairwise, "
        "default grouping.\n\n" + "\n".join(lines) + "\n"
    )
    write("verify_screen", {"machine": m, "rows": rows, "cold_runs": runs}, md)


if __name__ == "__main__":
    main()
