"""Which candidate pairs geometric verification is spent on: the screen
of :func:`dedup.verify.worth_verifying`, measured on every labelled set.

For each set, the default job is run once with every candidate pair
verified (``verify_all=True``, inlier counts cached in benchmarks/.cache).
Then, for each screen setting, the pairs the screen leaves out get the
shipped unverified model's confidence instead (as a screened run gives
them) and the groups are decided again. Reported: the share of pairs and
of images verified, how many pairs' decisions (join, review, apart) differ
from verifying every pair, and pairwise precision/recall. First the lower
screen alone (pairs that are clearly "different product" without
verification: ``SCREEN_MIN_CONFIDENCE``, ``SCREEN_NEAREST``,
``SCREEN_MAX_DISTANCE``), then, at its defaults, the upper screen (pairs
that are clearly "same product": ``SCREEN_MAX_CONFIDENCE``). The lower
screen's defaults are the cheapest setting of its grid that changes no
decision on any set (one review pair of the robustness set aside); the
upper screen's is one step more cautious than the cheapest setting that
changes no more decisions than the lower screen alone. The chosen rows are
marked. Besides the labelled sets, *crowd-ukbench*
(``edits.build_crowd_set``: 24 crops each of 5 photos) holds products with
more near-identical photos than a run's neighbour lists, which look
ordinary to each other without verification.

Then cold runs on ukbench-dev (no cache, default settings): the default
screen, the lower screen alone and every pair verified; seconds of the
whole run and of its verification-and-grouping stage, in one process on
this machine.

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
from edits import EDITED_SETS, SHARED_SETS, build_crowd_set, set_folder  # noqa: E402

from dedup.calibration import PairModel  # noqa: E402
from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import GroupingParams, group  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402
from dedup.verify import (  # noqa: E402
    SCREEN_MAX_CONFIDENCE,
    SCREEN_MAX_DISTANCE,
    SCREEN_MIN_CONFIDENCE,
    SCREEN_NEAREST,
    worth_verifying,
)

SETS = (*SHARED_SETS, *EDITED_SETS, "crowd-ukbench")
MIN_CONFIDENCE = (0.02, 0.05, 0.1)
NEAREST = (0, 1, 2, 3, 4)
MAX_DISTANCE = (-1.0, 0.1, 0.15, 0.2)
#: The upper screen's grid (2.0: none, every pair the lower screen keeps is verified).
MAX_CONFIDENCE = (2.0, 0.999, 0.995, 0.99, 0.98, 0.95)
#: The lower screen alone (no upper screen), as in the first table.
LOWER_ONLY = 2.0


def _decision(conf: np.ndarray, params: GroupingParams) -> np.ndarray:
    """0 apart, 1 review, 2 join candidate, per pair."""
    return (conf >= params.review_confidence).astype(int) + (conf >= params.min_confidence).astype(int)


def measure_set(name: str) -> list[dict]:
    folder = build_crowd_set() if name == "crowd-ukbench" else set_folder(name)
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
    lower = itertools.product(MIN_CONFIDENCE, NEAREST, MAX_DISTANCE, [LOWER_ONLY])
    upper = ((SCREEN_MIN_CONFIDENCE, SCREEN_NEAREST, SCREEN_MAX_DISTANCE, mx) for mx in MAX_CONFIDENCE[1:])
    for mc, near, md, mx in itertools.chain(lower, upper):
        keep = worth_verifying(pairs.ij, pairs.distance, p_unverified, mc, near, md, mx)
        conf = np.where(keep, full, p_unverified)
        s = pairwise_scores(group(n, pairs, conf, res.hash_pairs, params).labels, truth)
        rows.append(
            {
                "dataset": name,
                "min_confidence": mc,
                "nearest": near,
                "max_distance": md,
                "max_confidence": mx,
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


def _lower_screen_only(ij, distance, p_unverified):
    """:func:`worth_verifying` without its upper screen (the screen before it had one)."""
    return worth_verifying(ij, distance, p_unverified, max_confidence=LOWER_ONLY)


def cold_runs() -> list[dict]:
    """Whole cold runs on ukbench-dev: the default screen, the lower screen
    alone, and every pair verified, one after the other in one process."""
    import dedup.verify

    root = BENCH / "ukbench-dev" / "images"
    out = []
    for name, verify_all, screen in (
        ("screened (default)", False, worth_verifying),
        ("lower screen only", False, _lower_screen_only),
        ("every pair", True, worth_verifying),
    ):
        dedup.verify.worth_verifying = screen  # the pipeline imports it at each run
        try:
            dd = Deduplicator(backbones="efficientnet-lite0", cache=False, progress=False, verify_all=verify_all)
            t = time.perf_counter()
            res = dd.run(root)
            total = time.perf_counter() - t
        finally:
            dedup.verify.worth_verifying = worth_verifying
        out.append(
            {
                "verify": name,
                "seconds": round(total, 1),
                "group_seconds": res.meta["seconds"]["group"],
                "images_per_second": round(len(res.groups) / total, 1),
                "pairs": res.meta["counts"]["candidate_pairs"],
                "pairs_verified": res.meta["counts"]["pairs_verified_geometrically"],
                "images_verified": int(len(np.unique(res.pairs.ij[res.pairs.inliers >= 0].ravel()))),
                "groups": res.meta["counts"]["groups_of_2_or_more"],
            }
        )
    return out


def _cells(df: pd.DataFrame, key: dict) -> tuple[pd.DataFrame, list[str]]:
    """The rows of one setting, and its P/R cell per set."""
    r = df.loc[np.logical_and.reduce([df[k] == v for k, v in key.items()])]
    return r, [f"{r[r.dataset == s].precision.iloc[0]:.3f}/{r[r.dataset == s].recall.iloc[0]:.3f}" for s in SETS]


def main() -> None:
    rows = [r for name in SETS for r in measure_set(name)]
    df = pd.DataFrame(rows)
    header = " | ".join(f"{s} P/R" for s in SETS)
    lines = [
        "## Lower screen: pairs clearly of different products",
        "",
        "| min confidence | nearest | max distance | pairs verified (mean over sets) | "
        f"decisions changed (all sets) | {header} |",
        "|---|---|---|---|---|" + "---|" * len(SETS),
    ]
    for mc, near, md in itertools.product(MIN_CONFIDENCE, NEAREST, MAX_DISTANCE):
        r, cells = _cells(df, {"min_confidence": mc, "nearest": near, "max_distance": md, "max_confidence": LOWER_ONLY})
        chosen = (mc, near, md) == (SCREEN_MIN_CONFIDENCE, SCREEN_NEAREST, SCREEN_MAX_DISTANCE)
        mark = " **(default)**" if chosen else ""
        dist = "-" if md < 0 else f"{md:.2f}"
        lines.append(
            f"| {mc:.2f}{mark} | {near} | {dist} | {r.pairs_verified.mean():.3f} | {int(r.decisions_changed.sum())} | "
            + " | ".join(cells)
            + " |"
        )
    ref = df.drop_duplicates("dataset")
    lines += [
        "",
        "Every pair verified: "
        + ", ".join(f"{r.dataset} {r.precision_all_verified:.3f}/{r.recall_all_verified:.3f}" for r in ref.itertuples())
        + ".",
        "",
        "## Upper screen: pairs clearly of one product (at the lower screen's defaults)",
        "",
        "Such a pair keeps the unverified model's confidence, at least *max confidence*, and joins on it.",
        "",
        f"| max confidence | pairs verified (mean over sets) | images verified (mean over sets) | "
        f"decisions changed (all sets) | {header} |",
        "|---|---|---|---|" + "---|" * len(SETS),
    ]
    default = {"min_confidence": SCREEN_MIN_CONFIDENCE, "nearest": SCREEN_NEAREST, "max_distance": SCREEN_MAX_DISTANCE}
    for mx in MAX_CONFIDENCE:
        r, cells = _cells(df, {**default, "max_confidence": mx})
        mark = " **(default)**" if mx == SCREEN_MAX_CONFIDENCE else ""
        shown = "- (none)" if mx > 1 else f"{mx:g}"
        lines.append(
            f"| {shown}{mark} | {r.pairs_verified.mean():.3f} | {r.images_verified.mean():.3f} | "
            f"{int(r.decisions_changed.sum())} | " + " | ".join(cells) + " |"
        )
    per_set, _ = _cells(df, {**default, "max_confidence": SCREEN_MAX_CONFIDENCE})
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
        "| verification | run seconds | of which verification + grouping | images/second | pairs verified "
        "| images verified | groups |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['verify']} | {r['seconds']} | {r['group_seconds']} | {r['images_per_second']} | "
        f"{r['pairs_verified']:,} of {r['pairs']:,} | {r['images_verified']} | {r['groups']} |"
        for r in runs
    ]
    lines.append(
        f"\nScreened run {runs[2]['seconds'] / runs[0]['seconds']:.2f}x as fast as verifying every pair, "
        f"{runs[1]['seconds'] / runs[0]['seconds']:.2f}x as fast as the lower screen alone."
    )
    m = machine()
    md = (
        "# Geometric verification: which pairs it is spent on\n\n"
        f"Machine: {m}. Produced by `python benchmarks/verify_screen.py`. A pair is verified when the shipped "
        "unverified pair model gives it at least *min confidence*, when it is among either image's *nearest* "
        "candidates by ensemble distance, or when that distance is at most *max distance*, unless that model "
        "gives it at least *max confidence*; the others keep "
        "the unverified confidence. *Decisions changed*: pairs "
        "whose outcome (join candidate, review, apart) differs from verifying every pair. P/R: pairwise, "
        "default grouping.\n\n" + "\n".join(lines) + "\n"
    )
    write("verify_screen", {"machine": m, "rows": rows, "cold_runs": runs}, md)


if __name__ == "__main__":
    main()
