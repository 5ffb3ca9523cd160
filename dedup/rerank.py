"""Re-ranking: each image's neighbours ordered by the calibrated pair confidence.

The kNN search orders an image's neighbours by one distance, the cosine
distance of the colour-fused vectors (:func:`dedup.grouping.fused_vectors`).
The run knows more about each candidate pair than that distance: the pair
model's calibrated probability that both images show the same product
(:mod:`dedup.calibration`) also weighs RootSIFT + RANSAC inliers, colour
layout, pHash, ranks and the contextual distance. Ordering the candidates by
that probability is re-ranking by verification, as in spatial re-ranking for
object retrieval (Philbin et al., "Object retrieval with large vocabularies
and fast spatial matching", CVPR 2007), with a calibrated score in place of
the raw inlier count.

Measured by ``benchmarks/rerank.py`` (nearest-neighbour recall@1 with each
set's pairs scored by pair models that never saw their cut: inshop-women
0.836 -> 0.860, ukbench-dev 0.985 -> 0.992) and by ``python -m dedup bench``
(the shipped model): see the README's "Nearest neighbours" section.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ranked_neighbours(
    ij: np.ndarray,
    confidence: np.ndarray,
    rank_ij: np.ndarray,
    rank_ji: np.ndarray,
    fused_ids: np.ndarray,
    k: int | None = None,
) -> np.ndarray:
    """Each image's neighbours, the most probable same product first.

    An image's scored candidate pairs come first, by calibrated confidence
    (highest first; ties by the partner's rank in the image's fused kNN list,
    then by its row). The rest of its fused kNN list follows in kNN order,
    so an image with no scored pair keeps its kNN list.

    Args:
        ij: ``(m, 2)`` int64 row pairs of the scored candidates.
        confidence: ``(m,)`` float P(same product) of each pair, [0, 1].
        rank_ij, rank_ji: ``(m,)`` int64 rank of ``j`` in ``i``'s fused kNN
            list and of ``i`` in ``j``'s (0 = nearest; the list's length when
            absent), as in :class:`dedup.grouping.Pairs`.
        fused_ids: ``(n, k0)`` int64 fused kNN ids, nearest first; the image
            itself and ``-1`` (no neighbour) are skipped.
        k: neighbours kept per image (default ``k0``).

    Returns:
        ``(n, k)`` int64 neighbour rows, best first, padded with ``-1``; an
        image never lists itself.

    Raises:
        ValueError: the pair arrays disagree in length, or a row is out of
            ``range(n)``.
    """
    ij = np.asarray(ij, np.int64).reshape(-1, 2)
    fused_ids = np.asarray(fused_ids, np.int64)
    n = fused_ids.shape[0]
    k0 = fused_ids.shape[1] if fused_ids.ndim == 2 else 0
    k = k0 if k is None else int(k)
    m = len(ij)
    if not (len(confidence) == len(rank_ij) == len(rank_ji) == m):
        raise ValueError(f"{m} pairs but {len(confidence)} confidences and {len(rank_ij)}/{len(rank_ji)} ranks")
    if m and (ij.min() < 0 or ij.max() >= n):
        raise ValueError(f"a pair's row is outside range({n})")
    out = np.full((n, max(k, 0)), -1, np.int64)
    if n == 0 or k <= 0:
        return out
    rows = np.repeat(np.arange(n, dtype=np.int64), k0)
    cols = fused_ids.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    p = np.asarray(confidence, np.float64)
    edges = pd.DataFrame(
        {
            "src": np.concatenate([ij[:, 0], ij[:, 1], rows[keep]]),
            "dst": np.concatenate([ij[:, 1], ij[:, 0], cols[keep]]),
            # a kNN neighbour with no scored pair ranks after every scored one
            "p": np.concatenate([p, p, np.full(int(keep.sum()), -np.inf)]),
            "rank": np.concatenate([rank_ij, rank_ji, np.tile(np.arange(k0), n)[keep]]),
        }
    )
    edges = edges.sort_values(["src", "p", "rank", "dst"], ascending=[True, False, True, True], kind="stable")
    edges = edges.drop_duplicates(["src", "dst"], keep="first")
    pos = edges.groupby("src").cumcount().to_numpy()
    sel = pos < k
    out[edges.src.to_numpy()[sel], pos[sel]] = edges.dst.to_numpy()[sel]
    return out
