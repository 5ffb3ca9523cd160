"""PNG pictures: the t-SNE map and the dendrogram of a collection, and the
precision/recall sweep of a benchmark (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_write

#: Images drawn on a map at most: t-SNE's cost grows faster than n, and a
#: picture shows no more (a uniform random subsample, seed 0, beyond it).
MAP_MAX_POINTS = 10_000


def plot_map(
    X: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str = "", max_points: int = MAP_MAX_POINTS
) -> Path:
    """A 2-D t-SNE map (scikit-learn; cosine metric, PCA init) coloured by group.

    Images in groups of >= 2 get their group's colour; singletons are grey
    dots. Above ``max_points`` images, a uniform random subsample of that
    many is drawn (the title says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    total = len(X)
    labels = np.asarray(labels)
    sizes_all = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    if total > max_points:
        keep = np.sort(np.random.default_rng(0).choice(total, max_points, replace=False))
        X, labels, sizes_all = np.asarray(X)[keep], labels[keep], sizes_all[keep]
    n = len(X)
    if n >= 4:
        xy = TSNE(
            n_components=2, metric="cosine", init="pca", random_state=0, perplexity=float(min(30, max(2, (n - 1) // 3)))
        ).fit_transform(np.asarray(X, np.float32))
    else:
        xy = np.c_[np.arange(n), np.zeros(n)]
    sizes = sizes_all  # group sizes in the whole run, not in the subsample
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    alone = sizes < 2
    ax.scatter(xy[alone, 0], xy[alone, 1], s=8, c="lightgrey", label="singletons")
    _, codes = np.unique(labels[~alone], return_inverse=True)
    ax.scatter(xy[~alone, 0], xy[~alone, 1], s=14, c=codes, cmap="tab20")
    shown = f"{n} of {total} images (random subsample)" if n < total else f"{n} images"
    ax.set_title(title or f"t-SNE map of {shown}, coloured by group")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)


def plot_dendrogram(Z: np.ndarray, path: str | os.PathLike, cut: float | None = None) -> Path:
    """The hierarchical clustering tree as a PNG (the last 60 merges for big trees)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    dendrogram(
        Z, ax=ax, truncate_mode="lastp" if len(Z) > 60 else None, p=60, no_labels=len(Z) > 60, color_threshold=cut
    )
    if cut is not None:
        ax.axhline(cut, color="k", linestyle="--", linewidth=1)
    ax.set_ylabel("merge distance")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)


def plot_sweep(sweep: pd.DataFrame, default: float, path: str | os.PathLike, title: str = "") -> None:
    """Pairwise P/R/F1 against ``--min-confidence`` as a PNG, the default as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for col in ("precision", "recall", "f1"):
        ax.plot(sweep.min_confidence, sweep[col], label=col, marker=".")
    ax.axvline(default, color="k", linestyle="--", linewidth=1, label=f"default {default:g}")
    ax.set_xlabel("--min-confidence (calibrated P(same product) that joins a pair)")
    ax.set_ylabel("pairwise score")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"confidence sweep {title}".strip())
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
