"""Cheaper local features for geometric verification: SIFT on a smaller image.

RootSIFT features are most of verification's time (``benchmarks/speed.py``),
and most of SIFT's time is its first octave, which OpenCV computes on the
image doubled (Lowe, IJCV 2004, section 3.3). Detecting on the greyscale
image scaled by 0.7 or 0.5 (``GeometricVerifier.sift_scale``) costs about a
half or a quarter, but finds fewer and coarser keypoints, so the inlier
counts change and the pair model must be refitted on them. This script
measures whether that pays:

* features: milliseconds of one thread per ukbench-dev photo at each scale;
* quality: for every set the pair model is fitted on
  (``benchmarks/calibrate.py``), every candidate pair verified again at
  each scale, the pair model refitted on those counts and measured on
  held-out cuts (each set in 5 folds by cut or group, fitted on the other
  sets and folds): ECE, precision and recall at the default
  ``--min-confidence`` and recall at pair precision 0.98. Scale 1 is the
  shipped setting (its counts come from the cache).

    python benchmarks/sift_scale.py

Writes benchmarks/results/sift_scale.{md,json}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, machine, write  # noqa: E402
from calibrate import (  # noqa: E402
    SETS,
    TREE_SETTINGS,
    evidence_table,
    held_out_cuts,
    neutral_model,
    run_set,
    scores,
    set_folder,
)

from dedup.pipeline import _ImageAt  # noqa: E402
from dedup.verify import MAX_SIDE, GeometricVerifier  # noqa: E402

SCALES = (1.0, 0.7, 0.5)


def verifier(files: list[Path], scale: float) -> GeometricVerifier:
    """A verifier of ``files`` (loaded at ``MAX_SIDE``) whose SIFT detects at ``scale``."""
    v = GeometricVerifier(_ImageAt(files, MAX_SIDE, None))
    v.sift_scale = scale
    return v


def feature_ms(scale: float, photos: int = 200) -> float:
    """Milliseconds of one thread per ukbench-dev photo (features of each photo, best of 2 passes)."""
    import cv2

    files = sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))[:photos]
    v = verifier(files, scale)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        best = np.inf
        for _ in range(2):
            t = time.perf_counter()
            for i in range(len(files)):
                v._compute(i)
            best = min(best, time.perf_counter() - t)
    finally:
        cv2.setNumThreads(threads)
    return 1000 * best / len(files)


def pair_table(name: str, scale: float, model: str) -> pd.DataFrame:
    """Evidence and truth of every candidate pair of one set, verified at ``scale``."""
    result, truth, labels = run_set(name, model)
    if scale != 1:
        found = verifier([set_folder(name) / p for p in result.groups.path], scale)(result.pairs.ij)
        result.pairs.inliers[:] = found[:, 0].astype(np.int64)
        result.pairs.mismatch[:] = found[:, 1].astype(np.float32)
    return evidence_table(name, result, truth, labels)


def main() -> None:
    model = neutral_model()
    rows = []
    for scale in SCALES:
        allx = pd.concat([pair_table(s, scale, model) for s in SETS], ignore_index=True)
        ms = feature_ms(scale)
        for s in SETS:
            y = allx[allx.set == s].y.to_numpy()
            rows.append(
                {
                    "scale": scale,
                    "set": s,
                    "feature_ms": round(ms, 2),
                    **scores(held_out_cuts(allx, s, TREE_SETTINGS), y),
                }
            )
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    lines = [
        "| SIFT scale | features, ms per photo (one thread) | "
        + " | ".join(f"{s}: P / R at p >= 0.9; R at P >= 0.98" for s in SETS)
        + " |",
        "|---|---|" + "---|" * len(SETS),
    ]
    for scale, g in df.groupby("scale", sort=False):
        cells = [
            f"{r['pair_precision_at_0.9']:.3f} / {r['pair_recall_at_0.9']:.3f}; "
            f"{r['pair_recall_at_precision_0.98']:.3f}"
            for r in g.to_dict("records")
        ]
        mark = " (shipped)" if scale == 1 else ""
        lines.append(f"| {scale:g}{mark} | {g.feature_ms.iloc[0]:.1f} | " + " | ".join(cells) + " |")
    m = machine()
    md = (
        "# Geometric verification with SIFT on a smaller image\n\n"
        f"Machine: {m}. Produced by `python benchmarks/sift_scale.py`. Every candidate pair of each set verified "
        "with SIFT detecting on the greyscale image scaled by *SIFT scale*, the pair model refitted on those "
        "inlier counts and measured on held-out cuts (as in `benchmarks/calibrate.py`); features: RootSIFT and the "
        "colour grid of one ukbench-dev photo (320x240), one thread.\n\n" + "\n".join(lines) + "\n"
    )
    write("sift_scale", {"machine": m, "rows": rows}, md)


if __name__ == "__main__":
    main()
