"""Stage 5, index: each image's nearest neighbours, and Annoy indexes for ``query``.

Neighbour lists (what the grouping reads) are exact up to
:data:`EXACT_KNN_MAX` images (blocked matrix products, :func:`exact_knn`).
Above, they come from a clustered search (:func:`clustered_knn`): k-means
lists in a PCA projection, then exact matrix products between each list and
the lists nearest to it, the inverted-file scheme of Sivic and Zisserman
(ICCV 2003) and Jegou et al. (TPAMI 2011) with the exhaustive per-list step
of SemDeDup (Abbas et al., 2023); ``benchmarks/scale.py`` measures its
recall@10 against exact search at 1M rows.

Annoy (Bernhardsson, Spotify; random-projection trees) with the ``angular``
metric is the index saved for ``query``; its distance is ``sqrt(2 - 2
cos)``; on L2-normalised embeddings ``cos = 1 - d**2 / 2``, so the cosine
distance ``1 - cos = d**2 / 2`` in [0, 2]. At 1-2k dimensions Annoy's
default search (``search_k = n_trees * k``) misses many true neighbours, so
dedup searches ``search_k = n_trees * k * SEARCH_K_FACTOR`` nodes;
``benchmarks/ann_recall.py`` measures recall@10 against exact search for the
defaults.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

#: Trees per index. More trees: better recall, bigger index, slower build.
DEFAULT_N_TREES: int = 50
#: search_k = n_trees * k * factor; chosen by benchmarks/ann_recall.py.
SEARCH_K_FACTOR: int = 20


class AnnIndex:
    """An Annoy index over L2-normalised embeddings.

    Args:
        n_trees: number of random-projection trees.
        search_k_factor: nodes inspected per query = ``n_trees * k * factor``.
        seed: Annoy's random seed (builds are reproducible).
        n_jobs: threads answering queries (-1: one per core). Annoy releases
            the GIL while it searches, so threads scale (2.0x on 2 cores,
            identical answers).
        build_jobs: threads building the trees (-1: one per core). One
            thread (the default) gives the same index on any machine; more
            give trees that depend on the number of cores (used by ``query``
            when it builds the index of a large run itself).
    """

    def __init__(
        self,
        n_trees: int = DEFAULT_N_TREES,
        search_k_factor: int = SEARCH_K_FACTOR,
        seed: int = 42,
        n_jobs: int = -1,
        build_jobs: int = 1,
    ):
        self.n_trees = n_trees
        self.search_k_factor = search_k_factor
        self.seed = seed
        self.n_jobs = n_jobs
        self.build_jobs = build_jobs
        self._index: Any = None
        self.dim = 0
        self.size = 0

    def build(self, X: np.ndarray) -> "AnnIndex":
        """Index the rows of ``X``: ``(n, d)`` float32, L2-normalised. Returns self."""
        from annoy import AnnoyIndex

        X = np.asarray(X, dtype=np.float32)
        self.size, self.dim = X.shape
        index = AnnoyIndex(self.dim, "angular")
        index.set_seed(self.seed)
        for i, row in enumerate(X):
            index.add_item(i, row)
        index.build(self.n_trees, n_jobs=self.build_jobs)
        self._index = index
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (Annoy's memory-mappable format)."""
        self._index.save(str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int, **kwargs) -> "AnnIndex":
        """Memory-map an index written by :meth:`save`; ``dim`` is its dimension."""
        from annoy import AnnoyIndex

        self = cls(**kwargs)
        index = AnnoyIndex(dim, "angular")
        index.load(str(Path(path)))
        self._index, self.dim, self.size = index, dim, index.get_n_items()
        return self

    def query(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` approximate nearest indexed items of each row of ``X``.

        Args:
            X: ``(m, d)`` float32 L2-normalised query vectors.
            k: neighbours per query (fewer when the index is smaller).

        Returns:
            ``(ids, dists)``: ``(m, k)`` int64 item ids, ``-1`` padded, and
            ``(m, k)`` float32 cosine distances ``1 - cos`` in [0, 2],
            ``inf`` padded; each row sorted nearest first.
        """
        X = np.asarray(X, np.float32)
        k_eff = min(k, self.size)
        ids = np.full((len(X), k), -1, np.int64)
        dists = np.full((len(X), k), np.inf, np.float32)
        search_k = self.n_trees * max(k_eff, 1) * self.search_k_factor

        def rows(part: np.ndarray) -> None:
            for r in part:
                found, d = self._index.get_nns_by_vector(X[r], k_eff, search_k=search_k, include_distances=True)
                ids[r, : len(found)] = found
                dists[r, : len(found)] = np.asarray(d, np.float32) ** 2 / 2.0

        threads = (os.cpu_count() or 1) if self.n_jobs < 0 else max(1, self.n_jobs)
        parts = np.array_split(np.arange(len(X)), max(1, min(len(X) // 256, 8 * threads)))
        if threads == 1 or len(parts) == 1:
            for part in parts:
                rows(part)
        else:
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(rows, parts))
        return ids, dists


#: Up to this many rows each row's nearest neighbours are found exactly
#: (blocked matrix products, :func:`exact_knn`): on 2 cores that took 1/6 of
#: Annoy's time at 20,000 rows and 1/3 at 50,000, with recall 1 where
#: Annoy's was 0.95 and 0.90 (``benchmarks/knn_speed.py``). Its cost grows as
#: n^2, so larger collections use :func:`clustered_knn`.
EXACT_KNN_MAX: int = 50_000
#: Clustered search: rows per k-means list, lists searched per list, and the
#: PCA dimension the lists are formed in; chosen by recall@10 against exact
#: search in the colour-fused space of ``benchmarks/scale.py``'s data at
#: 100,000 rows: 0.974 with lists of 512, 10 searched, 64 dimensions; 0.981
#: with 128 dimensions; 0.987 with 16 searched; 0.994 with these (lists of
#: 256, 20 searched, 128 dimensions) at 1.2x the time of the first. 1M:
#: ``benchmarks/results/scale.md``. Two-level k-means lists (hierarchical
#: k-means, Nister and Stewenius 2006: training O(n sqrt(lists))) were
#: measured and not kept: at 1M the index stage took 615 s instead of 825 s,
#: but recall@10 in the embedding space fell to 0.89 (0.96 with every row
#: assigned to its nearest list), against 0.993 with these flat lists.
LIST_SIZE: int = 256
N_PROBE: int = 20
COARSE_DIM: int = 128
#: Most rows the k-means lists are trained on (besides at most 32 per list).
#: Training costs ``rows * lists`` per iteration, so without a cap it grows
#: as n^2; with it, as n. Measured on ``benchmarks/scale.py``'s data at
#: 1,000,000 rows (3,906 lists): recall@10 of the clustered search 0.9918
#: with 32 rows per list (125,000; training 202 s) and 0.9918 with this cap
#: (training 82 s); mini-batch k-means (scikit-learn ``MiniBatchKMeans``)
#: trained in 56 s but lost recall (0.9882).
KMEANS_SAMPLE: int = 65_536


class WeightedVectors:
    """Rows given as weighted parts, never stacked in memory.

    Row ``i`` stands for the unit vector ``[sqrt(w_1) X_1[i], ...,
    sqrt(w_B) X_B[i]] / norm``, so the inner product of two rows is
    ``sum_b w_b <X_b[i], X_b[j]>`` over the two norms: the colour-fused
    space (:func:`dedup.grouping.fused_parts`) searched without building its
    ``(n, sum d_b)`` matrix (8 GiB at 1M images).

    Args:
        parts: ``B`` arrays ``(n, d_b)`` float32 (memory-mapped arrays work).
        weights: ``B`` non-negative floats.

    Raises:
        ValueError: no parts, parts of different lengths, or a negative weight.
    """

    def __init__(self, parts: list[np.ndarray], weights: list[float]):
        if not parts or len(parts) != len(weights):
            raise ValueError("WeightedVectors needs one weight per part, and at least one part")
        if len({len(X) for X in parts}) != 1:
            raise ValueError("WeightedVectors: parts of different lengths")
        if min(weights) < 0:
            raise ValueError("WeightedVectors: weights must be >= 0")
        self.parts = [np.asarray(X, np.float32) for X in parts]
        self.weights = [float(w) for w in weights]
        self.dim = sum(X.shape[1] for X in self.parts)
        sq = np.zeros(len(self), np.float64)
        for a in range(0, len(self), _ROW_BLOCK):
            for X, w in zip(self.parts, self.weights):
                sq[a : a + _ROW_BLOCK] += w * np.einsum("ij,ij->i", X[a : a + _ROW_BLOCK], X[a : a + _ROW_BLOCK])
        self.inv_norm = (1.0 / np.maximum(np.sqrt(sq), 1e-12)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.parts[0])

    def rows(self, idx) -> np.ndarray:
        """``(len(idx), dim)`` float32: the stacked unit rows ``idx``."""
        out = np.hstack([X[idx] * np.float32(np.sqrt(w)) for X, w in zip(self.parts, self.weights)])
        return out * self.inv_norm[idx][:, None]

    def take(self, idx: np.ndarray) -> "WeightedVectors":
        """The rows ``idx`` as :class:`WeightedVectors` of their own (parts copied)."""
        return WeightedVectors([X[idx] for X in self.parts], self.weights)

    def stack(self) -> np.ndarray:
        """``(n, dim)`` float32: every row stacked (what the class avoids; for small n)."""
        return self.rows(np.arange(len(self)))

    def gram(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``(len(q), len(c))`` float32 inner products of rows ``q`` with rows ``c``."""
        out = np.zeros((len(q), len(c)), np.float32)
        for X, w in zip(self.parts, self.weights):
            out += np.float32(w) * (X[q] @ X[c].T)
        return out * self.inv_norm[q][:, None] * self.inv_norm[c][None, :]

    def pair_dot(self, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``(m,)`` float32 inner products of rows ``a[t]`` and ``c[t]``."""
        out = np.zeros(len(a), np.float32)
        for X, w in zip(self.parts, self.weights):
            out += np.float32(w) * np.einsum("ij,ij->i", X[a], X[c])
        return out * self.inv_norm[a] * self.inv_norm[c]


_ROW_BLOCK = 65_536


def annoy_indexes(
    vectors: dict,
    n_trees: int = DEFAULT_N_TREES,
    search_k_factor: int = SEARCH_K_FACTOR,
    exact_max: int = EXACT_KNN_MAX,
) -> dict[str, AnnIndex]:
    """One Annoy index per matrix, saved in OUT for ``query``.

    Annoy indexes serve ``query`` only (no group depends on them) and are
    built up to ``exact_max`` rows, on one thread (the same index on any
    machine). Above, building one costs too much time and memory for the run
    (about 12 minutes and 5.7 GB for one 1280-d backbone at 1M images,
    measured when the scaling work began), so the run leaves it to the first
    ``query`` (:class:`dedup.query.Searcher`).

    Args:
        vectors: name -> ``(n, d)`` float32 L2-normalised rows.

    Returns:
        name -> :class:`AnnIndex` (none for an empty matrix or one of more
        than ``exact_max`` rows).

    Raises:
        ValueError: a :class:`WeightedVectors` (an index needs stacked rows).
    """
    out = {}
    for name, X in vectors.items():
        if isinstance(X, WeightedVectors):
            raise ValueError("annoy_indexes: an Annoy index needs stacked vectors, not WeightedVectors")
        if 0 < len(X) <= exact_max:
            out[name] = AnnIndex(n_trees, search_k_factor).build(X)
    return out


def neighbour_lists(
    vectors: dict, k: int, exact_max: int = EXACT_KNN_MAX, progress: bool = False, search=None
) -> list[np.ndarray]:
    """Stage 5, search: each row's ``k`` nearest, per matrix.

    Exact up to ``exact_max`` rows (:func:`exact_knn`), from
    :func:`clustered_knn` above (or ``search``).

    Args:
        vectors: name -> ``(n, d)`` float32 L2-normalised rows, or a
            :class:`WeightedVectors`.
        k: neighbours per row (the row itself comes first, so ``k + 1`` ids).
        progress: show the clustered search's progress (tqdm).
        search: ``(X, k) -> (n, k) int64 ids`` finding the neighbour lists
            above ``exact_max`` rows instead of :func:`clustered_knn` (the
            Spark engine's :meth:`dedup.spark.SparkEngine.neighbours`).

    Returns:
        Per matrix, ``(n, k + 1)`` int64 ids, nearest first (-1 padded).
    """
    ids = []
    for X in vectors.values():
        if len(X) == 0:
            ids.append(np.zeros((0, k + 1), np.int64))
            continue
        if len(X) <= exact_max:
            X32 = X.stack() if isinstance(X, WeightedVectors) else np.asarray(X, np.float32)
            found = exact_knn(X32, X32, k + 1)[0]
        elif search is not None:
            found = search(X, k + 1)
        else:
            found = clustered_knn(X, k + 1, progress=progress)[0]
        out = np.full((len(X), k + 1), -1, np.int64)
        out[:, : found.shape[1]] = found
        ids.append(out)
    return ids


def clustered_knn(
    X,
    k: int,
    list_size: int = LIST_SIZE,
    n_probe: int = N_PROBE,
    coarse_dim: int = COARSE_DIM,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours of every row, for collections too
    large for :func:`exact_knn`.

    The rows are projected to ``coarse_dim`` dimensions by PCA (fitted on at
    most 50,000 rows) and split into ``n // list_size`` k-means lists
    (scikit-learn ``KMeans`` on at most 32 rows per list and at most
    :data:`KMEANS_SAMPLE` rows, so that training grows as ``n``). Each list's rows
    are then compared exactly, by matrix products in the full space, with
    every row of the ``n_probe`` lists whose centroids are nearest its own
    (itself included): the inverted file of Jegou et al. (TPAMI 2011)
    searched exhaustively per list, as in SemDeDup (Abbas et al., 2023).
    Cost: about ``n * n_probe * list_size * d`` multiply-adds, linear in
    ``n`` (and ``n * n_lists * coarse_dim`` to assign the rows to lists, a
    small n^2 term: 15 s at 1M); recall depends on ``n_probe``
    (``benchmarks/scale.py`` measures it).

    Args:
        X: ``(n, d)`` float32 L2-normalised rows, or a :class:`WeightedVectors`.
        k: neighbours per row (the row itself is normally the first).
        list_size: mean rows per list; n_probe: lists searched per list;
            coarse_dim: the PCA dimension of the lists; seed: k-means seed.
        progress: a tqdm bar over the lists.

    Returns:
        ``(ids, dists)`` as in :meth:`AnnIndex.query`: ``(n, k)`` int64 ids
        (-1 padded) and float32 cosine distances (inf padded), nearest first.
    """
    from sklearn.decomposition import PCA

    W = X if isinstance(X, WeightedVectors) else WeightedVectors([X], [1.0])
    n = len(W)
    ids = np.full((n, k), -1, np.int64)
    dists = np.full((n, k), np.inf, np.float32)
    if n == 0 or k == 0:
        return ids, dists
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, 50_000), replace=False))
    dim = max(1, min(coarse_dim, W.dim, len(sample)))
    pca = PCA(dim, svd_solver="randomized", random_state=seed).fit(W.rows(sample))
    comp, off, maps = pca.components_.astype(np.float32), 0, []
    for P, w in zip(W.parts, W.weights):
        maps.append(comp[:, off : off + P.shape[1]].T * np.float32(np.sqrt(w)))
        off += P.shape[1]
    Y = np.empty((n, dim), np.float32)
    for a in range(0, n, _ROW_BLOCK):
        blk = slice(a, a + _ROW_BLOCK)
        Y[blk] = sum(P[blk] @ M for P, M in zip(W.parts, maps)) * W.inv_norm[blk][:, None]
    n_lists = max(1, n // max(1, list_size))
    train = Y[np.sort(rng.choice(n, min(n, 32 * n_lists, KMEANS_SAMPLE), replace=False))]
    centres = kmeans_lists(train, n_lists, seed)
    c2 = (centres**2).sum(axis=1)
    label = np.empty(n, np.int64)
    for a in range(0, n, 16_384):
        label[a : a + 16_384] = (c2[None, :] - 2 * Y[a : a + 16_384] @ centres.T).argmin(axis=1)
    del Y, train
    order = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[order], np.arange(n_lists + 1))
    probes = _nearest_centres(centres, min(n_probe, n_lists))
    lists = range(n_lists)
    if progress:
        from tqdm import tqdm

        lists = tqdm(lists, desc="neighbours", unit="list")
    for li in lists:
        q = order[bounds[li] : bounds[li + 1]]
        if len(q) == 0:
            continue
        c = np.sort(np.concatenate([order[bounds[p] : bounds[p + 1]] for p in probes[li]]))
        kk = min(k, len(c))
        cols, dist = _top_k(W.gram(q, c), kk)
        ids[q, :kk] = c[cols]
        dists[q, :kk] = dist
    return ids, dists


def kmeans_lists(train: np.ndarray, n_lists: int, seed: int = 0) -> np.ndarray:
    """``(n_lists, d)`` float32 centres of the clustered search's lists:
    scikit-learn ``KMeans`` (k-means++ start, one initialisation, 20 Lloyd
    iterations) on ``(s, d)`` float32 training rows, ``1 <= n_lists <= s``.
    Its cost grows as ``s * n_lists`` per iteration."""
    from sklearn.cluster import KMeans

    km = KMeans(n_lists, n_init=1, max_iter=20, random_state=seed).fit(train)
    return km.cluster_centers_.astype(np.float32)


def _nearest_centres(centres: np.ndarray, p: int, block: int = 1_024) -> np.ndarray:
    """``(m, p)`` int64: each centre's ``p`` nearest centres (itself first), in blocks."""
    c2 = (centres**2).sum(axis=1)
    out = np.empty((len(centres), p), np.int64)
    for a in range(0, len(centres), block):
        d = c2[None, :] + c2[a : a + block, None] - 2 * centres[a : a + block] @ centres.T
        part = np.argpartition(d, p - 1, axis=1)[:, :p]
        out[a : a + block] = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, axis=1), axis=1), axis=1)
    return out


def _top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the ``k`` largest similarities of each row, largest first,
    and their cosine distances ``1 - sim``."""
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    psim = np.take_along_axis(sim, part, axis=1)
    order = np.argsort(-psim, axis=1)
    return np.take_along_axis(part, order, axis=1), 1.0 - np.take_along_axis(psim, order, axis=1)


def exact_knn(X: np.ndarray, Q: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance, in blocks (never n x n at once).

    Args:
        X: ``(n, d)`` float32 L2-normalised database.
        Q: ``(m, d)`` float32 L2-normalised queries.
        k: neighbours per query.

    Returns:
        ``(ids, dists)`` as in :meth:`AnnIndex.query`.
    """
    k = min(k, len(X))
    if len(Q) == 0 or k == 0:
        return np.zeros((len(Q), k), np.int64), np.zeros((len(Q), k), np.float32)
    ids_out, d_out = [], []
    for s in range(0, len(Q), block):
        cols, dist = _top_k(Q[s : s + block] @ X.T, k)
        ids_out.append(cols)
        d_out.append(dist)
    return np.concatenate(ids_out).astype(np.int64), np.concatenate(d_out).astype(np.float32)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of the exact k nearest found by the approximate search (0..1)."""
    hits = [len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0
