"""Views of a collection on top of a run's embeddings.

* :func:`cluster`: hierarchical clustering cut at a similarity level (the
  image-clustering write-up this project grew from), or k-means, optionally
  after PCA and with capture time (:func:`dedup.decode.capture_times`) mixed in.
* :func:`relabel`: a run's table with the clusters in place of its groups.

The pictures of a view are drawn by :mod:`dedup.report`, its symlink folders
made by :mod:`dedup.links`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Time scale of ``--time-weight``, in seconds: photos one day apart get the
#: full time penalty.
TIME_SCALE_S: float = 86_400.0

#: Largest collection clustered hierarchically (the condensed distance matrix
#: is n(n-1)/2 float64: 20,000 images -> 1.6 GB).
MAX_HIERARCHICAL: int = 20_000


def _prepare(X: np.ndarray, pca: int | None) -> np.ndarray:
    X = np.asarray(X, np.float32)
    if pca and 0 < pca < min(X.shape):
        from sklearn.decomposition import PCA

        X = PCA(n_components=pca, random_state=0).fit_transform(X).astype(np.float32)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def content_time_distances(X: np.ndarray, times: np.ndarray | None, time_weight: float) -> np.ndarray:
    """Condensed pairwise distances for hierarchical clustering.

    ``d(i, j) = (1 - cos(x_i, x_j)) + time_weight * min(1, |t_i - t_j| / TIME_SCALE_S)``:
    cosine distance of the (ensemble) embeddings, in [0, 2], plus a time
    penalty that grows linearly to ``time_weight`` at one day apart (unknown
    times add nothing).

    Args:
        X: ``(n, d)`` float32 L2-normalised embeddings.
        times: ``(n,)`` POSIX seconds or ``None``.
        time_weight: ALPHA >= 0.

    Returns:
        ``(n (n - 1) / 2,)`` float64 condensed distances (SciPy's layout).
    """
    from scipy.spatial.distance import pdist

    d = np.clip(pdist(X, metric="cosine"), 0, 2)
    if times is not None and time_weight > 0:
        t = np.nan_to_num(np.asarray(times, np.float64), nan=np.nanmean(times) if np.isfinite(times).any() else 0)
        d = d + time_weight * np.minimum(1.0, pdist(t[:, None], metric="cityblock") / TIME_SCALE_S)
    return d


def cluster(
    X: np.ndarray,
    method: str = "hierarchical",
    sim: float = 0.5,
    k: int = 8,
    min_size: int = 1,
    pca: int | None = None,
    times: np.ndarray | None = None,
    time_weight: float = 0.0,
    linkage_method: str = "average",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cluster embeddings.

    Args:
        X: ``(n, d)`` float32 L2-normalised embeddings (the ensemble's).
        method: ``"hierarchical"`` (SciPy ``linkage`` with ``linkage_method``,
            default average/UPGMA, on :func:`content_time_distances`) or
            ``"kmeans"`` (scikit-learn, k-means++, ``n_init="auto"``).
        sim: similarity level of the hierarchical cut in [0, 1]: the tree is
            cut at distance ``1 - sim`` (cosine similarity ``sim`` between
            cluster averages, for pooled ReLU features whose cosine distance
            lies in [0, 1]); 0 gives one cluster and 1 leaves every
            non-identical image alone.
        k: number of k-means clusters.
        min_size: clusters smaller than this are not reported: their images
            get label -1.
        pca: reduce to this many principal components first (then re-normalise).
        times: capture times (POSIX s) for ``time_weight``.
        time_weight: ALPHA of :func:`content_time_distances`; for k-means the
            time, divided by TIME_SCALE_S and scaled by ``sqrt(ALPHA)``, is an
            extra feature.

    Returns:
        ``(labels, Z)``: ``(n,)`` int64 cluster ids (0.. by first member; -1
        below ``min_size``) and the SciPy linkage matrix (hierarchical) or
        ``None``.

    Raises:
        ValueError: unknown method, ``sim`` outside [0, 1], or too many images
            for hierarchical clustering (> MAX_HIERARCHICAL).
    """
    n = len(X)
    if n == 0:
        return np.zeros(0, np.int64), None
    Xp = _prepare(X, pca)
    Z = None
    if method == "hierarchical":
        if not 0 <= sim <= 1:
            raise ValueError("--sim must lie in [0, 1]")
        if n > MAX_HIERARCHICAL:
            raise ValueError(
                f"hierarchical clustering of {n} images needs O(n^2) memory; "
                f"the limit is {MAX_HIERARCHICAL} (use the default grouping or kmeans)"
            )
        if n == 1:
            labels = np.zeros(1, np.int64)
        else:
            from scipy.cluster.hierarchy import fcluster, linkage

            Z = linkage(content_time_distances(Xp, times, time_weight), method=linkage_method)
            if sim == 0:
                labels = np.zeros(n, np.int64)
            else:
                labels = fcluster(Z, t=1.0 - sim, criterion="distance") - 1
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        feats = Xp
        if times is not None and time_weight > 0:
            t = np.nan_to_num(np.asarray(times, np.float64), nan=np.nanmean(times) if np.isfinite(times).any() else 0)
            feats = np.hstack([Xp, (np.sqrt(time_weight) * (t - t.min()) / TIME_SCALE_S)[:, None]])
        labels = KMeans(n_clusters=min(k, n), n_init="auto", random_state=0).fit_predict(feats)
    else:
        raise ValueError(f"unknown method {method!r}: hierarchical or kmeans")
    labels = np.asarray(labels, np.int64)
    sizes = np.bincount(labels)
    labels = np.where(sizes[labels] >= min_size, labels, -1)
    # renumber by first member, -1 kept
    out = np.full(n, -1, np.int64)
    nxt = 0
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        if lab < 0:
            continue
        if lab not in seen:
            seen[lab] = nxt
            nxt += 1
        out[i] = seen[lab]
    return out, Z


def relabel(groups: pd.DataFrame, labels: np.ndarray, method: str) -> pd.DataFrame:
    """A copy of a run's groups with cluster labels in place of its groups.

    Images below ``min_size`` (label -1) get their own group each, with stage
    ``"below-min-size"``; clustered images get stage ``method``. ``distance``,
    ``confidence`` and ``matched`` are cleared (a cluster is not made of pairs).
    """
    g = groups.copy()
    n_clusters = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    ids = labels.copy()
    alone = np.nonzero(ids < 0)[0]
    ids[alone] = n_clusters + np.arange(len(alone))
    width = max(4, len(str(max(int(ids.max()) + 1 if len(ids) else 1, 1))))
    g["group"] = [f"c{int(i):0{width}d}" for i in ids]
    g["group_size"] = g.group.map(g.group.value_counts()).astype(int)
    g["stage"] = np.where(labels < 0, "below-min-size", method)
    g["distance"] = np.nan
    if "confidence" in g.columns:
        g["confidence"] = np.nan
    g["matched"] = ""
    return g
