"""Stage 5, index: each image's nearest neighbours, and Annoy indexes for ``query``.

Up to :data:`EXACT_KNN_MAX` images the neighbour lists are exact (blocked
matrix products); above, they come from the Annoy index.

Annoy (Bernhardsson, Spotify; random-projection trees) with the ``angular``
metric, whose distance is ``sqrt(2 - 2 cos)``; on L2-normalised embeddings
``cos = 1 - d**2 / 2``, so the cosine distance ``1 - cos = d**2 / 2`` in
[0, 2]. At 1-2k dimensions Annoy's default search (``search_k = n_trees * k``)
misses many true neighbours, so dedup searches ``search_k = n_trees * k *
SEARCH_K_FACTOR`` nodes; ``benchmarks/ann_recall.py`` measures recall@10
against exact search for the defaults.
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
            identical answers). The build stays on one thread: Annoy's
            multi-threaded build gives trees that depend on the number of
            cores, and the groups must not depend on the machine.
    """

    def __init__(
        self,
        n_trees: int = DEFAULT_N_TREES,
        search_k_factor: int = SEARCH_K_FACTOR,
        seed: int = 42,
        n_jobs: int = -1,
    ):
        self.n_trees = n_trees
        self.search_k_factor = search_k_factor
        self.seed = seed
        self.n_jobs = n_jobs
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
        index.build(self.n_trees, n_jobs=1)  # one thread: reproducible on any machine (see the class docstring)
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
#: (blocked matrix products, :func:`exact_knn`) instead of by Annoy's
#: search: on 2 cores that took 1/6 of Annoy's time at 20,000 rows and 1/3
#: at 50,000, with recall 1 where Annoy's was 0.95 and 0.90
#: (``benchmarks/knn_speed.py``). Its cost grows as n^2, so larger
#: collections use Annoy.
EXACT_KNN_MAX: int = 50_000


def build_indexes(
    vectors: dict[str, np.ndarray],
    k: int,
    n_trees: int = DEFAULT_N_TREES,
    search_k_factor: int = SEARCH_K_FACTOR,
    keep: bool = True,
    exact_max: int = EXACT_KNN_MAX,
) -> tuple[dict[str, AnnIndex], list[np.ndarray]]:
    """Stage 5, index: each row's ``k`` nearest and, with ``keep``, one Annoy
    index per matrix (saved in OUT for ``query``).

    The neighbours are exact up to ``exact_max`` rows (:func:`exact_knn`)
    and Annoy's above (:meth:`AnnIndex.query`).

    Args:
        vectors: name -> ``(n, d)`` float32 L2-normalised rows.
        k: neighbours per row (the row itself comes first, so ``k + 1`` ids).
        keep: return the Annoy indexes (``False``: only the neighbour lists,
            as for the fused vectors, which no later command searches; no
            index is then built up to ``exact_max`` rows).

    Returns:
        ``(indexes, neighbour_ids)``: name -> :class:`AnnIndex` (none when
        ``n == 0`` or not ``keep``) and, per matrix, ``(n, k + 1)`` int64 ids
        (-1 padded).
    """
    indexes, ids = {}, []
    for name, X in vectors.items():
        if len(X) == 0:
            ids.append(np.zeros((0, k + 1), np.int64))
            continue
        index = AnnIndex(n_trees, search_k_factor).build(X) if keep or len(X) > exact_max else None
        if keep and index is not None:
            indexes[name] = index
        if len(X) <= exact_max or index is None:
            X32 = np.asarray(X, np.float32)
            found = exact_knn(X32, X32, k + 1)[0]
            out = np.full((len(X), k + 1), -1, np.int64)
            out[:, : found.shape[1]] = found
            ids.append(out)
        else:
            ids.append(index.query(X, k + 1)[0])
    return indexes, ids


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
        sim = Q[s : s + block] @ X.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        psim = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-psim, axis=1)
        ids_out.append(np.take_along_axis(part, order, axis=1))
        d_out.append(1.0 - np.take_along_axis(psim, order, axis=1))
    return np.concatenate(ids_out).astype(np.int64), np.concatenate(d_out).astype(np.float32)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of the exact k nearest found by the approximate search (0..1)."""
    hits = [len(set(a[a >= 0]) & set(e)) / len(e) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0
