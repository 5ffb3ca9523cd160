"""Nearest neighbours re-ranked by the pair confidence: recall@1 per set.

An image's nearest neighbour in the colour-fused kNN space is the first
answer to "which image is most like this one". The run scores each
candidate pair with more evidence than that distance (RootSIFT + RANSAC
inliers, colour layout, pHash, ranks, contextual distance) and calibrates it
into P(same product) (:mod:`dedup.calibration`). :func:`dedup.rerank.ranked_neighbours`
orders each image's candidates by that probability (``Result.neighbours``).
This script measures nearest-neighbour recall@1
(:func:`dedup.evaluate.recall_at_1`) on every set the pair model is fitted
on (``benchmarks/calibrate.py``):

* fused kNN: the kNN list as searched;
* by inliers: candidates ordered by RootSIFT + RANSAC inlier count alone
  (classic spatial re-ranking; every candidate pair verified);
* held-out cuts: ordered by P(same) from pair models that never saw the
  image's cut or group (each set in 5 folds by cut or group, fitted on the
  other sets and folds; every candidate pair verified): the honest figure;
* shipped model, default run: what ``Result.neighbours`` gives with the
  defaults (the shipped model saw these sets; verification screened).

    python benchmarks/rerank.py [--readme]

Writes benchmarks/results/rerank.{md,json} (and the README's RERANK-TABLE).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, replace_readme_block, write  # noqa: E402
from calibrate import SETS, TREE_SETTINGS, evidence_table, held_out_cuts, run_set  # noqa: E402

from dedup.evaluate import recall_at_1  # noqa: E402
from dedup.rerank import ranked_neighbours  # noqa: E402


def main() -> None:
    runs = {s: run_set(s) for s in SETS}
    allx = pd.concat([evidence_table(s, *runs[s]) for s in SETS], ignore_index=True)
    rows = []
    for s in SETS:
        result, truth, _ = runs[s]
        pairs = result.pairs

        def reranked(score: np.ndarray, pairs=pairs, result=result, truth=truth) -> float | None:
            ids = ranked_neighbours(pairs.ij, score, pairs.rank_ij, pairs.rank_ji, result.fused_ids)
            return recall_at_1(ids, truth)

        shipped, shipped_truth, _ = run_set(s, verify_all=False)
        rows.append(
            {
                "set": s,
                "images": len(truth),
                "fused_knn": recall_at_1(result.fused_ids, truth),
                "by_inliers": reranked(pairs.inliers.astype(np.float64)),
                "held_out_cuts": reranked(held_out_cuts(allx, s, TREE_SETTINGS)),
                "shipped_default_run": recall_at_1(shipped.neighbours(), shipped_truth),
            }
        )
        print(rows[-1], flush=True)
    header = (
        "| set | images | R@1 fused kNN | R@1 by inliers | R@1 by P(same), held-out cuts | "
        "R@1 by P(same), shipped model (default run) |\n|---|---|---|---|---|---|\n"
    )
    table = header + "\n".join(
        f"| {r['set']} | {r['images']} | {r['fused_knn']:.3f} | {r['by_inliers']:.3f} | "
        f"{r['held_out_cuts']:.3f} | {r['shipped_default_run']:.3f} |"
        for r in rows
    )
    md = (
        "# Nearest neighbours re-ranked by the pair confidence\n\n"
        f"Machine: {machine()}. Produced by `python benchmarks/rerank.py`. Nearest-neighbour recall@1: the share "
        "of images with another photo of their product whose first neighbour shows it. *Fused kNN*: the "
        "colour-fused kNN list as searched. *By inliers*: candidates ordered by RootSIFT + RANSAC inlier count "
        "(every candidate pair verified). *Held-out cuts*: ordered by P(same) from pair models that never saw "
        "the image's cut or group (5 folds by cut or group, fitted on the other sets and folds; every "
        "candidate pair verified). *Shipped model*: `Result.neighbours` of the default run (the shipped model "
        "was fitted on these sets, so this column is in-sample).\n\n" + table + "\n"
    )
    write("rerank", {"machine": machine(), "trees": TREE_SETTINGS, "rows": rows}, md)
    if "--readme" in sys.argv[1:]:
        replace_readme_block("RERANK-TABLE", table)


if __name__ == "__main__":
    main()
