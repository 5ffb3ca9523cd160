"""Semantic clusters against content clusters: does ``--similarity semantic``
group by what images show?

For each set, the same clustering (``dedup.views.cluster``: k-means with
k = number of true classes, and average-linkage hierarchical clustering cut
into k clusters) runs on the semantic descriptors (``semantic-lite0``) and on
the content embeddings (``efficientnet-lite0``), and is scored against the
labels with the adjusted Rand index (Hubert and Arabie, 1985; scikit-learn)
and purity (share of images in their cluster's majority class):

* ``inshop-women`` against its ``category`` column (dresses, tees/tanks,
  blouses/shirts): what a shop would call kinds of things.
* ``ukbench-dev`` against its objects (150 objects x 4 photos): identity,
  which semantic similarity is not meant to keep.
* both sets together against what each photo shows: a garment (the 1,603
  shop photos) or some other object (the 600 UKBench photos: CDs, books,
  shoes, household things), k = 2.

Writes ``benchmarks/results/semantic.{md,json}`` and
``benchmarks/results/semantic_map.png`` (a 2-D t-SNE map of the mixed set
coloured by semantic cluster, beside the same map coloured by what each
photo shows).
Embeddings are cached in ``benchmarks/.cache``.

    python benchmarks/semantic.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import BENCH, RESULTS, ROOT, machine, write
from sklearn.metrics import adjusted_rand_score

from dedup.pipeline import Deduplicator
from dedup.views import cluster

SETS = {"inshop-women": "category", "ukbench-dev": "group"}
BACKBONES = ("semantic-lite0", "efficientnet-lite0")


def purity(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of items whose cluster's most common true class is their own, in [0, 1]."""
    table = pd.crosstab(pred, true)
    return float(table.max(axis=1).sum() / len(true))


def embeddings(name: str, backbone: str) -> tuple[np.ndarray, pd.DataFrame]:
    labels = pd.read_csv(BENCH / name / "labels.csv", keep_default_na=False)
    dd = Deduplicator(backbones=backbone, cache=ROOT / "benchmarks" / ".cache" / f"{name}.sqlite", progress=True)
    got = dd.embed(BENCH / name, files=list(labels.path))
    X = got.embeddings[backbone]
    truth = labels.set_index("path").reindex(got.paths)
    return X, truth.reset_index()


def _sets(backbone: str):
    """``(name, column, X, true)`` per scored set, the mixed one last."""
    parts = []
    for name, column in SETS.items():
        X, truth = embeddings(name, backbone)
        parts.append((name, X))
        yield name, column, X, truth[column].to_numpy()
    kinds = np.concatenate([np.full(len(X), "garment" if n == "inshop-women" else "object") for n, X in parts])
    yield "inshop-women + ukbench-dev", "garment or object", np.vstack([X for _, X in parts]), kinds


def main() -> None:
    rows, maps = [], {}
    for backbone in BACKBONES:
        for name, column, X, true in _sets(backbone):
            k = len(np.unique(true))
            for method in ("kmeans", "hierarchical"):
                if method == "kmeans":
                    pred, _ = cluster(X, "kmeans", k=k)
                else:
                    from scipy.cluster.hierarchy import fcluster

                    _, Z = cluster(X, "hierarchical", sim=0.5)
                    pred = fcluster(Z, t=k, criterion="maxclust") - 1
                rows.append(
                    {
                        "dataset": name,
                        "labels": column,
                        "classes": k,
                        "descriptor": backbone,
                        "method": method,
                        "ari": float(adjusted_rand_score(true, pred)),
                        "purity": purity(true, pred),
                    }
                )
                print(rows[-1], flush=True)
                if name.endswith("+ ukbench-dev") and backbone == "semantic-lite0" and method == "kmeans":
                    maps = {"X": X, "pred": pred, "true": true}
    _plot(maps)
    rows.sort(key=lambda r: (list(SETS).index(r["dataset"]) if r["dataset"] in SETS else len(SETS), r["descriptor"]))
    lines = [
        "# Semantic clusters against content clusters\n",
        f"Machine: {machine()}. Produced by `python benchmarks/semantic.py`. k = number of true classes; "
        "ARI: adjusted Rand index (0 = chance, 1 = the labels exactly); purity: share of images in their "
        "cluster's majority class.\n",
        "| dataset | scored against | k | descriptor | clustering | ARI | purity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['labels']} | {r['classes']} | {r['descriptor']} | {r['method']} | "
            f"{r['ari']:.3f} | {r['purity']:.3f} |"
        )
    lines += ["", "![garments and objects by semantic cluster and by what they are](semantic_map.png)", ""]
    write("semantic", {"machine": machine(), "rows": rows}, "\n".join(lines))


def _plot(maps: dict) -> None:
    """t-SNE of the mixed set's semantic descriptors, coloured by semantic cluster and by what each photo shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, metric="cosine", init="pca", random_state=0, perplexity=30).fit_transform(maps["X"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    cats = {c: i for i, c in enumerate(sorted(set(maps["true"])))}
    for ax, colour, title in (
        (axes[0], maps["pred"], "coloured by semantic cluster (k-means, k=2)"),
        (axes[1], np.array([cats[c] for c in maps["true"]]), "coloured by what the photo shows (labels)"),
    ):
        ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab10", s=6, vmin=0, vmax=9)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=plt.cm.tab10(i), label=c.split("/")[-1]) for c, i in cats.items()
    ]
    axes[1].legend(handles=handles, loc="best", fontsize=8)
    fig.suptitle("inshop-women garments + ukbench-dev objects: 2-D t-SNE map of the semantic descriptors")
    fig.tight_layout()
    fig.savefig(RESULTS / "semantic_map.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
