"""Stage 6, group: candidate pairs, ensemble distances, acceptance, components.

How a pair of images is judged (every number is a documented default of
:class:`GroupingParams`; the README gives the measured effect of each part):

1. Candidates: each image's ``k`` nearest neighbours in every backbone's ANN
   index (the union over backbones). Memory O(n x k): never an n x n matrix.
2. Ensemble distance ``d``: the mean over backbones of the exact cosine
   distance ``1 - cos`` of L2-normalised embeddings, in [0, 2] ([0, 1] in
   practice: pooled ReLU features are non-negative).
3. Colour: ``h``, the Hellinger distance of the two images' foreground
   CIELAB histograms ([0, 1], :mod:`dedup.colour`). Pooled CNN features are
   nearly colour-blind; a colour variant is a different product.
   Fused distance ``D = d + colour_weight * h``.
4. Context: distances are judged relative to each image's neighbourhood, the
   contextual dissimilarity measure of Jegou et al. (CVPR 2007, evaluated on
   UKBench): ``r_i`` = mean ``D`` to the image's ``k_context`` nearest
   candidates, ``Dc = D / sqrt(r_i r_j)`` (dimensionless; ~1 is an ordinary
   neighbour). In a dense region of look-alike products (one cut photographed
   many times on white) every neighbour is close, ``r`` is small, and only a
   pair that stands out is joined.
5. Acceptance: ``Dc <= cutoff`` and ``d <= max_distance`` and
   ``h <= colour_cutoff``. Pairs with ``cutoff < Dc <= verify_cutoff`` are
   joined only when geometric verification (ORB + RANSAC homography, after
   Philbin et al., CVPR 2007) finds at least ``min_inliers`` inliers: shared
   local structure is strong evidence of the same object.
6. Exact pass: byte-identical files (SHA-256) are always joined; pHash
   near-duplicates are joined when their colours agree too (pHash is computed
   on greyscale, so a recoloured copy has the same pHash).
7. No chaining: inside every connected component of joined pairs of more
   than two images, average linkage (UPGMA, SciPy) on the fused distance
   ``D`` is cut at ``linkage_cutoff``, so one bridging image cannot pull
   distinct products together. Exact-pass pairs are never split.
8. Bounded nearest-neighbour fallback: an image still alone joins the group
   of its nearest neighbour only when that group has >= 2 images, the fused
   distance is within ``fallback_max`` and the nearest group is clearly
   nearer than the next one (ratio <= ``fallback_ratio``; Lowe's ratio test,
   IJCV 2004, applied to groups). A unique product, equally far from
   several others, stays alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

from .colour import colour_distance

#: Stage names recorded per joined image, strongest evidence first.
STAGES = ("sha256", "phash", "embedding", "verified", "fallback")


@dataclass
class GroupingParams:
    """Settings of :func:`group`, with the reason for each default.

    Defaults were chosen by measurement on ukbench-dev, products-flipkart and
    hard-negative sets built from them (distinct objects only, recoloured
    copies), as one set for all data; ``benchmarks/grouping_ablation.py``
    reruns that measurement.

    Attributes:
        cutoff: contextual distance ``Dc`` joining a pair (dimensionless).
            0.65: below the typical neighbour (1.0) by a clear margin.
        max_distance: absolute cap on the ensemble cosine distance ``d``
            ([0, 2]); 0.35 is about the 95th percentile of same-object pairs
            on UKBench, so genuinely far pairs never join whatever the context.
        colour_weight: weight of the colour distance in ``D``; 0.5 makes a
            full colour change (h ~ 0.8) outweigh any viewpoint change.
        colour_cutoff: largest Hellinger colour distance of a joined pair
            ([0, 1]); 0.4 is above 98 % of same-product pairs measured, below
            most recoloured copies.
        k_context: neighbours averaged for ``r_i``; 10, Jegou et al.'s order.
        verify_cutoff: upper end of the band verified geometrically.
        min_inliers: RANSAC inliers that confirm a pair; 15 is reached by
            ~5 % of different-object candidate pairs and ~65 % of same-object
            pairs on UKBench.
        linkage_cutoff: average-linkage cut on ``D`` inside components.
        fallback_max: largest ``D`` for the fallback.
        fallback_ratio: nearest-group / next-group distance ratio for the
            fallback; 0.8 as in Lowe's ratio test (measured: 0.85 and 0.9
            start to cost precision on UKBench).
    """

    cutoff: float = 0.65
    max_distance: float = 0.35
    colour_weight: float = 0.5
    colour_cutoff: float = 0.4
    k_context: int = 10
    verify_cutoff: float = 0.85
    min_inliers: int = 15
    linkage_cutoff: float = 0.5
    fallback_max: float = 0.7
    fallback_ratio: float = 0.8


@dataclass
class Pairs:
    """Candidate pairs and their evidence.

    Attributes:
        ij: ``(m, 2)`` int64 index pairs, ``i < j``, unique.
        distance: ``(m,)`` float32 ensemble cosine distance in [0, 2].
        per_backbone: ``(m, b)`` float32 cosine distance for each backbone.
        colour: ``(m,)`` float32 colour distance (:func:`dedup.colour.colour_distance`), [0, 1].
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
        colours: ``(n, 116)`` float32 colour descriptors.
    """
    m = len(ij)
    per = np.zeros((m, len(embeddings)), np.float32)
    for b, X in enumerate(embeddings):
        for s in range(0, m, 65536):
            a, c = ij[s:s + 65536, 0], ij[s:s + 65536, 1]
            per[s:s + 65536, b] = 1.0 - np.einsum("ij,ij->i", X[a], X[c])
    dist = per.mean(axis=1) if len(embeddings) else np.zeros(m, np.float32)
    col = colour_distance(colours[ij[:, 0]], colours[ij[:, 1]]).astype(np.float32) if m else np.zeros(0, np.float32)
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


def contextual_distance(n: int, ij: np.ndarray, D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Jegou et al.'s contextual dissimilarity over candidate pairs.

    Args:
        n: number of images.
        ij: ``(m, 2)`` pairs; ``D``: ``(m,)`` their distances.
        k: neighbours averaged per image.

    Returns:
        ``(Dc, r)``: ``(m,)`` float32 ``D / sqrt(r_i r_j)`` and ``(n,)``
        float32 neighbourhood radii ``r`` (mean ``D`` to the k nearest; 1.0 for
        an image with no candidate).
    """
    if len(ij) == 0:
        return np.zeros(0, np.float32), np.ones(n, np.float32)
    rows = np.concatenate([ij[:, 0], ij[:, 1]])
    vals = np.concatenate([D, D]).astype(np.float64)
    order = np.lexsort((vals, rows))
    rows, vals = rows[order], vals[order]
    starts = np.searchsorted(rows, np.arange(n + 1))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    sums = np.bincount(rows[keep], weights=vals[keep], minlength=n)
    counts = np.bincount(rows[keep], minlength=n)
    r = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    r = np.maximum(r, 1e-6)
    Dc = D / np.sqrt(r[ij[:, 0]] * r[ij[:, 1]])
    return Dc.astype(np.float32), r.astype(np.float32)


def _components(n: int, edges: list[np.ndarray]) -> np.ndarray:
    e = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def group(n: int, pairs: Pairs, exact_pairs: dict[str, np.ndarray], colours: np.ndarray,
          embeddings: list[np.ndarray], params: GroupingParams | None = None,
          verify: Callable[[np.ndarray], np.ndarray] | None = None) -> Grouping:
    """Decide the groups (see the module docstring for the rules).

    Args:
        n: number of images.
        pairs: scored candidate pairs from :func:`score_pairs`.
        exact_pairs: ``{"sha256": (m, 2), "phash": (m, 2)}`` int64 pairs.
        colours: ``(n, 116)`` float32 colour descriptors.
        embeddings: per backbone ``(n, d_b)`` float32 L2-normalised (for
            exact distances inside components).
        params: settings; defaults documented in :class:`GroupingParams`.
        verify: optional ``(m, 2) int64 pairs -> (m,) int inlier counts``;
            without it the verification band joins nothing.

    Returns:
        A :class:`Grouping`.
    """
    p = params or GroupingParams()
    stage = np.full(n, "single", dtype=object)
    dist = np.full(n, np.nan, np.float32)
    partner = np.full(n, -1, np.int64)

    def mark(ij: np.ndarray, d: np.ndarray, name: str) -> None:
        rank = STAGES.index(name)
        for (i, j), dd in zip(ij, d):
            for a, b in ((i, j), (j, i)):
                cur = stage[a]
                if cur == "single" or rank < STAGES.index(cur) or (rank == STAGES.index(cur) and dd < dist[a]):
                    stage[a], dist[a], partner[a] = name, dd, b

    # Exact pass.
    sha = np.asarray(exact_pairs.get("sha256", np.zeros((0, 2))), np.int64).reshape(-1, 2)
    ph = np.asarray(exact_pairs.get("phash", np.zeros((0, 2))), np.int64).reshape(-1, 2)
    if len(ph):
        ph = ph[colour_distance(colours[ph[:, 0]], colours[ph[:, 1]]) <= p.colour_cutoff]
    exact = np.concatenate([sha, ph]) if len(sha) + len(ph) else np.zeros((0, 2), np.int64)

    # Embedding pairs: fused, contextual, accepted or verified.
    D = pairs.distance + p.colour_weight * pairs.colour
    Dc, _ = contextual_distance(n, pairs.ij, D, p.k_context)
    base_ok = (pairs.distance <= p.max_distance) & (pairs.colour <= p.colour_cutoff)
    strong = base_ok & (Dc <= p.cutoff)
    band = base_ok & (Dc > p.cutoff) & (Dc <= p.verify_cutoff)
    verified = np.zeros(len(D), bool)
    if verify is not None and band.any():
        inl = np.asarray(verify(pairs.ij[band]))
        verified[np.nonzero(band)[0][inl >= p.min_inliers]] = True
    joined = strong | verified

    # Components, then average linkage inside each to undo chaining.
    comp = _components(n, [exact, pairs.ij[joined]])
    labels = comp.copy()
    next_label = comp.max() + 1 if n else 0
    sizes = np.bincount(comp, minlength=comp.max() + 1 if n else 0)
    order = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[order], np.arange(len(sizes) + 1))
    exact_by_comp: dict[int, list] = {}
    for a, b in exact:
        exact_by_comp.setdefault(int(comp[a]), []).append((a, b))
    for c in np.nonzero(sizes > 2)[0]:
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) > 2000:  # O(m^2) distances: leave giant components to the cutoff
            continue
        sub = np.mean([1.0 - X[members] @ X[members].T for X in embeddings], axis=0)
        cm = colours[members]
        for s0 in range(0, len(members), 64):  # row blocks: memory O(64 m), not O(m^2 x 116)
            sub[s0:s0 + 64] += p.colour_weight * colour_distance(cm[s0:s0 + 64, None, :], cm[None, :, :])
        # exact-pass pairs inside the component stay together
        pos = {m: t for t, m in enumerate(members)}
        for a, b in exact_by_comp.get(int(c), []):
            sub[pos[a], pos[b]] = sub[pos[b], pos[a]] = 0.0
        np.fill_diagonal(sub, 0.0)
        sub = np.clip((sub + sub.T) / 2, 0, None)
        cut = fcluster(linkage(squareform(sub, checks=False), method="average"), t=p.linkage_cutoff,
                       criterion="distance")
        if cut.max() > 1:
            labels[members] = next_label + cut - 1
            next_label += cut.max()
    # Keep only joined pairs that survived the split, for the stage column.
    same = labels[pairs.ij[:, 0]] == labels[pairs.ij[:, 1]]
    if len(exact):
        mark(sha, np.zeros(len(sha)), "sha256")
        mark(ph, np.zeros(len(ph)), "phash")
    mark(pairs.ij[strong & same], pairs.distance[strong & same], "embedding")
    mark(pairs.ij[verified & same], pairs.distance[verified & same], "verified")
    # An image whose joined pairs were all split off is alone again.
    sizes = np.bincount(labels)
    stage[sizes[labels] == 1] = "single"
    dist[sizes[labels] == 1] = np.nan
    partner[sizes[labels] == 1] = -1

    # Bounded fallback: a lone image joins a clearly nearest group of >= 2.
    if len(pairs.ij):
        by_image: dict[int, list[tuple[float, int, int]]] = {}
        for r, (i, j) in enumerate(pairs.ij):
            by_image.setdefault(int(i), []).append((float(D[r]), int(j), r))
            by_image.setdefault(int(j), []).append((float(D[r]), int(i), r))
        fallback = []
        for i in np.nonzero(sizes[labels] == 1)[0]:
            best: dict[int, tuple[float, int, int]] = {}
            for d_, j, r in by_image.get(int(i), []):
                g = labels[j]
                if g not in best or d_ < best[g][0]:
                    best[g] = (d_, j, r)
            if not best:
                continue
            ranked = sorted(best.items(), key=lambda kv: kv[1][0])
            g1, (d1, j1, r1) = ranked[0]
            d2 = ranked[1][1][0] if len(ranked) > 1 else np.inf
            if (sizes[g1] >= 2 and d1 <= p.fallback_max and d1 <= p.fallback_ratio * d2
                    and pairs.colour[r1] <= p.colour_cutoff):
                fallback.append((i, j1, r1, g1))
        for i, j, r, g in fallback:  # decided on the state before any fallback
            labels[i] = g
            stage[i], dist[i], partner[i] = "fallback", pairs.distance[r], j

    # Renumber by first member so labels are stable and readable.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    return Grouping(remap[inverse].astype(np.int64), stage, dist, partner)
