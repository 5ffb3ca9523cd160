"""Stage 6, group: candidate pairs, ensemble distances, acceptance, components.

1. Candidates: each image's ``k`` nearest neighbours in every backbone's ANN
   index (the union over backbones).
2. Ensemble distance of a candidate pair: the mean over backbones of the
   exact cosine distance ``1 - cos`` of their L2-normalised embeddings,
   in [0, 2] (in [0, 1] in practice: pooled ReLU features are non-negative).
3. Acceptance: a pair is joined when its ensemble distance is within
   ``cutoff`` and its colour histograms agree (Hellinger distance within
   ``colour_cutoff``, see :mod:`dedup.colour`).
4. Nearest-neighbour fallback: an image left with no joined pair joins its
   single nearest neighbour when that pair is within the looser
   ``fallback_cutoff``, the two are *mutual* nearest neighbours and their
   colours agree, so a unique product is not forced into a group.
5. Groups: connected components of the joined pairs plus the exact-pass
   pairs (SHA-256 and pHash), computed with SciPy's sparse graph routines.

Memory is O(n x k) pairs: no n x n matrix is ever built.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .colour import hellinger

#: Stage names recorded per joined pair, strongest evidence first.
STAGES = ("sha256", "phash", "embedding", "fallback")


@dataclass
class Pairs:
    """Candidate pairs and their evidence.

    Attributes:
        ij: ``(m, 2)`` int64 index pairs, ``i < j``, unique.
        distance: ``(m,)`` float32 ensemble cosine distance in [0, 2].
        per_backbone: ``(m, b)`` float32 cosine distance for each backbone.
        colour: ``(m,)`` float32 Hellinger distance of colour histograms, [0, 1].
    """

    ij: np.ndarray
    distance: np.ndarray
    per_backbone: np.ndarray
    colour: np.ndarray

    def subset(self, mask: np.ndarray) -> "Pairs":
        """The pairs selected by a boolean ``(m,)`` mask."""
        return Pairs(self.ij[mask], self.distance[mask], self.per_backbone[mask], self.colour[mask])


def candidate_pairs(neighbour_ids: list[np.ndarray]) -> np.ndarray:
    """Union of kNN pairs over backbones.

    Args:
        neighbour_ids: per backbone, ``(n, k)`` int64 neighbour ids (-1 padded).

    Returns:
        ``(m, 2)`` int64 unique pairs with ``i < j``.
    """
    chunks = []
    for ids in neighbour_ids:
        n, k = ids.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = ids.reshape(-1)
        keep = (cols >= 0) & (cols != rows)
        a, b = rows[keep], cols[keep]
        chunks.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    if not chunks:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(chunks), axis=0)


def score_pairs(ij: np.ndarray, embeddings: list[np.ndarray], colours: np.ndarray) -> Pairs:
    """Exact per-backbone and ensemble distances for candidate pairs.

    Args:
        ij: ``(m, 2)`` int64 pairs.
        embeddings: per backbone ``(n, d_b)`` float32, L2-normalised.
        colours: ``(n, 108)`` float32 colour descriptors.
    """
    m = len(ij)
    per = np.zeros((m, len(embeddings)), np.float32)
    for b, X in enumerate(embeddings):
        for s in range(0, m, 65536):
            a, c = ij[s:s + 65536, 0], ij[s:s + 65536, 1]
            per[s:s + 65536, b] = 1.0 - np.einsum("ij,ij->i", X[a], X[c])
    dist = per.mean(axis=1) if len(embeddings) else np.zeros(m, np.float32)
    col = hellinger(colours[ij[:, 0]], colours[ij[:, 1]]).astype(np.float32) if m else np.zeros(0, np.float32)
    return Pairs(ij, dist.astype(np.float32), per, col)


@dataclass
class Grouping:
    """The outcome of :func:`group`.

    Attributes:
        labels: ``(n,)`` int64 group id per image, 0..G-1, numbered by first member.
        stage: ``(n,)`` object, how the image joined its group (one of
            :data:`STAGES`, or ``"single"``).
        distance: ``(n,)`` float32, the ensemble distance of the pair that
            joined it (0 for exact-pass pairs, NaN for singletons).
        partner: ``(n,)`` int64, the image of that pair (-1 for singletons).
    """

    labels: np.ndarray
    stage: np.ndarray
    distance: np.ndarray
    partner: np.ndarray


def group(n: int, pairs: Pairs, exact_pairs: dict[str, np.ndarray], *, cutoff: float,
          fallback_cutoff: float, colour_cutoff: float) -> Grouping:
    """Join pairs and return connected components.

    Args:
        n: number of images.
        pairs: scored candidate pairs from :func:`score_pairs`.
        exact_pairs: ``{"sha256": (m, 2), "phash": (m, 2)}`` int64 pairs that
            are joined unconditionally.
        cutoff: largest ensemble cosine distance joined (in [0, 2]).
        fallback_cutoff: largest distance for the mutual-nearest-neighbour
            fallback of an otherwise unjoined image (>= ``cutoff``).
        colour_cutoff: largest Hellinger colour distance for a joined pair (0..1).

    Returns:
        A :class:`Grouping`.
    """
    stage = np.full(n, "single", dtype=object)
    dist = np.full(n, np.nan, np.float32)
    partner = np.full(n, -1, np.int64)
    edges = []

    def mark(ij: np.ndarray, d: np.ndarray, name: str) -> None:
        for (i, j), dd in zip(ij, d):
            for a, b in ((i, j), (j, i)):
                if stage[a] == "single" or (STAGES.index(name) == STAGES.index(stage[a]) and dd < dist[a]):
                    stage[a], dist[a], partner[a] = name, dd, b

    for name in ("sha256", "phash"):
        ij = np.asarray(exact_pairs.get(name, np.zeros((0, 2), np.int64)), np.int64).reshape(-1, 2)
        if len(ij):
            edges.append(ij)
            mark(ij, np.zeros(len(ij), np.float32), name)

    ok_colour = pairs.colour <= colour_cutoff
    accept = (pairs.distance <= cutoff) & ok_colour
    if accept.any():
        edges.append(pairs.ij[accept])
        mark(pairs.ij[accept], pairs.distance[accept], "embedding")

    # Mutual-nearest-neighbour fallback for images still alone.
    if len(pairs.ij):
        nearest = np.full(n, -1, np.int64)
        nearest_d = np.full(n, np.inf, np.float32)
        for (i, j), d in zip(pairs.ij, pairs.distance):
            if d < nearest_d[i]:
                nearest[i], nearest_d[i] = j, d
            if d < nearest_d[j]:
                nearest[j], nearest_d[j] = i, d
        lookup = {(int(i), int(j)): r for r, (i, j) in enumerate(pairs.ij)}
        fb = []
        for i in np.nonzero(stage == "single")[0]:
            j = nearest[i]
            if j < 0 or nearest[j] != i or nearest_d[i] > fallback_cutoff:
                continue
            r = lookup[(min(i, j), max(i, j))]
            if ok_colour[r]:
                fb.append((min(i, j), max(i, j)))
        if fb:
            fb_ij = np.unique(np.asarray(fb, np.int64), axis=0)
            edges.append(fb_ij)
            rows = [lookup[(int(a), int(b))] for a, b in fb_ij]
            mark(fb_ij, pairs.distance[rows], "fallback")

    if edges:
        e = np.concatenate(edges)
        graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
    else:
        comp = np.arange(n)
    # Renumber by first member so labels are stable and readable.
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    labels = remap[np.searchsorted(np.unique(comp), comp)]
    return Grouping(labels.astype(np.int64), stage, dist, partner)
