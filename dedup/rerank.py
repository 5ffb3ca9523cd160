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


def ranked_neighbours(
    ij: np.ndarray,
    confidence: np.ndarray,
    rank_ij: np.ndarray,
    rank_ji: np.ndarray,
    fused_ids: np.ndarray,
    k: int | None = None,
    with_confidence: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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
        with_confidence: also return each listed pair's confidence.

    Returns:
        ``(n, k)`` int64 neighbour rows, best first, padded with ``-1``; an
        image never lists itself. With ``with_confidence``, also ``(n, k)``
        float32: the pair's confidence, NaN for a kNN neighbour with no
        scored pair and for padding.

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
    conf = np.full((n, max(k, 0)), np.nan, np.float32)
    if n == 0 or k <= 0:
        return (out, conf) if with_confidence else out
    # the scored pairs, both ways, by (image, confidence desc, kNN rank, partner);
    # int32 rows and temporaries dropped early: 3 * 10^7 directed pairs at 10^6 images
    small = np.int32 if n < 2**31 else np.int64
    src = np.concatenate([ij[:, 0], ij[:, 1]]).astype(small)
    dst = np.concatenate([ij[:, 1], ij[:, 0]]).astype(small)
    # three stable sorts, least significant key first (np.lexsort's order, several times faster at 10^7 rows)
    order = np.argsort(np.concatenate([rank_ij, rank_ji]).astype(np.int64) * (n + 1) + dst, kind="stable")
    p = np.concatenate([confidence, confidence]).astype(np.float64)[order]
    step = np.argsort(-p, kind="stable")
    order, p = order[step], p[step]
    step = np.argsort(src[order], kind="stable")
    order, p = order[step], p[step]
    del step
    src, dst = src[order], dst[order]
    del order
    scored = np.bincount(src, minlength=n)
    pos = np.arange(len(src)) - (np.cumsum(scored) - scored)[src]
    sel = pos < k
    out[src[sel], pos[sel]] = dst[sel]
    conf[src[sel], pos[sel]] = p[sel]
    del src, dst, p, pos, sel
    # then the rest of each kNN list, in its order, after the image's scored pairs
    rows = np.repeat(np.arange(n, dtype=np.int64), k0)
    cols = fused_ids.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    rows, cols = rows[keep], cols[keep]
    first = np.sort(np.unique(rows * n + cols, return_index=True)[1])  # a partner listed twice counts once
    rows, cols = rows[first], cols[first]
    if m:  # drop a kNN neighbour that is a scored pair (already listed, or ranked past k)
        pair_keys = np.sort(ij.min(axis=1) * n + ij.max(axis=1))
        key = np.minimum(rows, cols) * n + np.maximum(rows, cols)
        unscored = pair_keys[np.minimum(np.searchsorted(pair_keys, key), m - 1)] != key
        rows, cols = rows[unscored], cols[unscored]
    filled = np.bincount(rows, minlength=n)
    pos = scored[rows] + np.arange(len(rows)) - (np.cumsum(filled) - filled)[rows]
    sel = pos < k
    out[rows[sel], pos[sel]] = cols[sel]
    return (out, conf) if with_confidence else out


def with_copies(
    ids: np.ndarray, confidence: np.ndarray, rows: np.ndarray, content: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's neighbours with its byte copies first.

    The run searches and scores one row per content
    (:func:`dedup.hashing.unique_contents`), so only those rows have scored
    pairs. Here every image lists the other files with its bytes first
    (confidence 1: the hash pass joins them), then its content's
    neighbours (:func:`ranked_neighbours` of the content's first row).

    Args:
        ids: ``(n, k)`` int64 from :func:`ranked_neighbours`, ``-1`` padded.
        confidence: ``(n, k)`` float32 beside it (NaN: no scored pair).
        rows, content: from :func:`dedup.hashing.unique_contents` of the
            images' digests (``(u,)`` and ``(n,)`` int64).

    Returns:
        ``(ids, confidence)`` of the same shapes; an image never lists itself.

    Raises:
        ValueError: ``content`` does not have one entry per row of ``ids``.
    """
    n, k = ids.shape
    if len(content) != n:
        raise ValueError(f"{n} neighbour lists but {len(content)} contents")
    first = rows[content]
    if n == 0 or k == 0 or len(rows) == n:
        return ids, confidence
    out, conf = ids[first].copy(), confidence[first].copy()
    order = np.argsort(content, kind="stable")  # the rows of each content, in row order
    sizes = np.bincount(content, minlength=len(rows))
    starts = np.cumsum(sizes) - sizes
    for i in np.nonzero(sizes[content] > 1)[0].tolist():
        c = content[i]
        same = order[starts[c] : starts[c] + min(sizes[c], k + 1)]  # a placeholder photo may be there 10^5 times
        same = same[same != i][:k]
        listed = np.concatenate([same, out[i]])[:k]
        out[i] = listed
        conf[i] = np.concatenate([np.ones(len(same), conf.dtype), conf[i]])[:k]
    return out, conf
