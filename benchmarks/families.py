"""Product families (same cut, any colour): is there evidence to find them?

Issue #17 asks every run to group products into families, measured on
``inshop-women`` whose ``cut`` column is the truth (products sharing a cut
are colour variants of one garment): family-level pairwise precision
>= 0.95 and F1 >= 0.70. A family join needs a pair of photos of two
*different* products (two colours) recognised as one cut. This script
measures how well the evidence a run has, or could cheaply have, separates
such colour-variant pairs from pairs of two different cuts, before any
family grouping is built on it:

* **per-pair evidence over all photo pairs**: the EfficientNet-Lite0
  embedding's cosine distance (what a run has); the same network's
  embedding of the greyscale photo (colour removed at the input, one more
  embedding pass); the foreground silhouette's intersection over union
  (``dedup.colour.foreground_mask`` at 64 x 64; studio photos are framed
  alike). For each: the recall of colour-variant pairs at pair precision
  0.95, 0.8 and 0.5 against the pairs of two different cuts (pairs of one
  product left out), over all pairs and over pairs of the same view.
* **a classifier over every candidate pair's evidence** (the pair model's
  features, :data:`dedup.calibration.FEATURES`, plus the two above; scikit-
  learn's histogram gradient boosting), fitted on the candidate pairs of two
  products to tell a colour variant from another cut, out of fold with
  folds by cut.
* **features fitted on the shop's own cut labels**: ``dedup fit``'s learned
  whitening (:func:`dedup.adapt.learned_whitening`, its default dimensions
  and shrinkage) of the embeddings, with photos of one cut as the matching
  pairs, fitted on half of the cuts (drawn with seed 0) and measured on the
  other half: what a retailer's labelled cuts could teach.
* **family clustering**: average-linkage clustering of the photos by
  embedding distance (SciPy), swept over the cut height, scored with
  family-level pairwise precision/recall/F1 (:func:`dedup.evaluate.pairwise_scores`
  against ``cut``); and the run's own product groups taken as families.

Writes ``benchmarks/results/families.{md,json}``. Uses the run cache in
``benchmarks/.cache`` (the greyscale embeddings are computed each time:
about a minute).

    python benchmarks/families.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import BENCH, ROOT, machine, write
from calibrate import recall_at_precision
from PIL import Image, ImageOps
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GroupKFold

from dedup.adapt import DEFAULT_DIM, DEFAULT_SHRINKAGE, learned_whitening, matching_pairs
from dedup.backbones import make_backbone
from dedup.calibration import FEATURES, pair_features
from dedup.colour import foreground_mask, srgb_to_lab
from dedup.evaluate import pairwise_scores
from dedup.pipeline import Deduplicator

SET = BENCH / "inshop-women"
BACKBONE = "efficientnet-lite0"
PRECISIONS = (0.95, 0.8, 0.5)
HEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def greyscale_embeddings(paths: list[str]) -> np.ndarray:
    """``(n, 1280)`` float32 EfficientNet-Lite0 embeddings of the photos turned grey."""
    net = make_backbone(BACKBONE)
    net.check_weights()
    net.load()
    out = []
    for s in range(0, len(paths), 32):
        batch = [
            net.prepare(ImageOps.grayscale(Image.open(SET / p).convert("RGB")).convert("RGB"))
            for p in paths[s : s + 32]
        ]
        out.append(net.embed(np.stack(batch)))
    return np.vstack(out)


def average_linkage(X: np.ndarray) -> np.ndarray:
    """SciPy's average-linkage tree of ``(n, d)`` unit rows by cosine distance."""
    D = np.clip(1 - X @ X.T, 0, 2)
    np.fill_diagonal(D, 0)
    return linkage(squareform(D, checks=False), "average")


def silhouettes(paths: list[str], side: int = 64) -> np.ndarray:
    """``(n, side*side)`` float32 foreground masks (1 = garment or model)."""
    rows = []
    for p in paths:
        rgb = np.asarray(Image.open(SET / p).convert("RGB").resize((side, side), Image.Resampling.BILINEAR))
        rows.append(foreground_mask(srgb_to_lab(rgb)).astype(np.float32))
    return np.array(rows)


def main() -> None:
    labels = pd.read_csv(SET / "labels.csv", dtype=str, keep_default_na=False)
    dd = Deduplicator(backbones=BACKBONE, cache=ROOT / "benchmarks" / ".cache" / "inshop-women.sqlite", progress=True)
    result = dd.run(SET, files=list(labels.path))
    paths = list(result.groups.path)
    truth = labels.set_index("path").reindex(paths)
    cut, product, view = (truth[c].to_numpy() for c in ("cut", "group", "view"))
    n = len(paths)

    E = result.embeddings[BACKBONE]
    G = greyscale_embeddings(paths)
    M = silhouettes(paths)
    inter = M @ M.T
    area = M.sum(1)
    evidence = {
        "embedding cosine similarity": E @ E.T,
        "greyscale embedding cosine similarity": G @ G.T,
        "silhouette IoU": inter / np.maximum(area[:, None] + area[None, :] - inter, 1),
    }
    nn = (evidence["embedding cosine similarity"] - 2 * np.eye(n)).argmax(1)  # no photo its own neighbour
    has_variants = pd.Series(cut).map(pd.Series(product).groupby(cut).nunique()).to_numpy() > 1
    nearest = {
        "photos": int(has_variants.sum()),
        "same_product": round(float((product[nn] == product)[has_variants].mean()), 4),
        "colour_variant": round(float(((cut[nn] == cut) & (product[nn] != product))[has_variants].mean()), 4),
        "other_cut": round(float((cut[nn] != cut)[has_variants].mean()), 4),
    }
    iu = np.triu_indices(n, 1)
    same_cut = (cut[:, None] == cut[None, :])[iu]
    same_product = (product[:, None] == product[None, :])[iu]
    same_view = (view[:, None] == view[None, :])[iu]
    variant = same_cut & ~same_product
    scored = ~same_product  # colour variants against pairs of two cuts
    per_pair = []
    for name, S in evidence.items():
        s = S[iu]
        for scope, mask in (("all pairs", scored), ("same view", scored & same_view)):
            per_pair.append(
                {
                    "evidence": name,
                    "pairs": scope,
                    "variant_pairs": int((variant & mask).sum()),
                    "other_cut_pairs": int((~same_cut & mask).sum()),
                    "variant_median": round(float(np.median(s[variant & mask])), 3),
                    "other_cut_median": round(float(np.median(s[~same_cut & mask])), 3),
                    **{f"recall_at_p{t}": round(recall_at_precision(s[mask], variant[mask], t), 4) for t in PRECISIONS},
                }
            )

    # a classifier over the candidate pairs' evidence, folds by cut
    ij = result.pairs.ij
    X = pd.DataFrame(pair_features(result.pairs), columns=list(FEATURES))
    X["greyscale_distance"] = 1 - evidence["greyscale embedding cosine similarity"][ij[:, 0], ij[:, 1]]
    X["silhouette_iou"] = evidence["silhouette IoU"][ij[:, 0], ij[:, 1]]
    two = product[ij[:, 0]] != product[ij[:, 1]]  # pairs of two products: variant or other cut
    X, y, groups = X[two].reset_index(drop=True), (cut[ij[two, 0]] == cut[ij[two, 1]]).astype(int), cut[ij[two, 0]]
    p = np.zeros(len(y))
    for train, test in GroupKFold(5).split(X, y, groups=groups):
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
        p[test] = model.fit(X.iloc[train], y[train]).predict_proba(X.iloc[test])[:, 1]
    classifier = {
        "candidate_pairs": int(len(ij)),
        "variant_pairs_among_them": int(y.sum()),
        "variant_pairs_in_all": int(variant.sum()),
        **{f"variant_recall_at_p{t}": round(recall_at_precision(p, y, t), 4) for t in PRECISIONS},
    }

    # family clustering
    cuts = pd.factorize(cut)[0]
    families = [
        {"method": "the run's product groups as families", "height": None, **_scores(result.groups.group, cuts)}
    ]
    Z = average_linkage(E)
    for h in HEIGHTS:
        families.append(
            {"method": "average linkage, embedding", "height": h, **_scores(fcluster(Z, h, "distance"), cuts)}
        )

    # whitening fitted on half of the cuts, measured on the other half
    names = np.unique(cut)
    fit_cuts = set(np.random.default_rng(0).choice(names, len(names) // 2, replace=False).tolist())
    train = np.array([c in fit_cuts for c in cut])
    test = ~train
    W = learned_whitening(E[train], matching_pairs(cut[train]), DEFAULT_DIM, DEFAULT_SHRINKAGE).transform(E[test])
    ct, pt = cut[test], product[test]
    it = np.triu_indices(len(W), 1)
    two = (pt[:, None] != pt[None, :])[it]
    sz, yz = (W @ W.T)[it][two], (ct[:, None] == ct[None, :])[it][two]
    fitted = {
        "images": int(test.sum()),
        "variant_pairs": int(yz.sum()),
        **{f"variant_recall_at_p{t}": round(recall_at_precision(sz, yz, t), 4) for t in PRECISIONS},
    }
    Lz = average_linkage(W)
    test_cuts = pd.factorize(ct)[0]
    for h in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        families.append(
            {
                "method": "average linkage, whitened on the other half's cuts (held-out half)",
                "height": h,
                **_scores(fcluster(Lz, h, "distance"), test_cuts),
            }
        )
    report(nearest, per_pair, classifier, fitted, families, n)


def _scores(pred, cuts: np.ndarray) -> dict:
    s = pairwise_scores(pd.factorize(np.asarray(pred))[0], cuts)
    return {k: round(float(s[k]), 4) for k in ("precision", "recall", "f1")}


def report(nearest: dict, per_pair: list[dict], classifier: dict, fitted: dict, families: list[dict], n: int) -> None:
    t = " | ".join(f"recall at P {p}" for p in PRECISIONS)
    lines = [
        "# Product families: evidence for 'same cut, another colour'\n",
        f"Machine: {machine()}. Produced by `python benchmarks/families.py` on `inshop-women` ({n:,} photos; "
        "`cut` = family truth). A colour-variant pair: two photos of two different products of one cut. "
        "Other-cut pair: two photos of different cuts. Pairs of one product are left out of these tables.\n",
        f"Nearest neighbour by embedding of the {nearest['photos']:,} photos whose cut has other colours: "
        f"the same product {nearest['same_product']:.1%}, a colour variant {nearest['colour_variant']:.1%}, "
        f"another cut {nearest['other_cut']:.1%}.\n",
        "## Each piece of evidence alone, over all photo pairs\n",
        f"| evidence | pairs | variant pairs | other-cut pairs | variant median | other-cut median | {t} |",
        "|---|---|---|---|---|---|" + "---|" * len(PRECISIONS),
    ]
    for r in per_pair:
        rec = " | ".join(f"{r[f'recall_at_p{p}']:.4f}" for p in PRECISIONS)
        lines.append(
            f"| {r['evidence']} | {r['pairs']} | {r['variant_pairs']:,} | {r['other_cut_pairs']:,} | "
            f"{r['variant_median']} | {r['other_cut_median']} | {rec} |"
        )
    c = classifier
    lines += [
        "\n## A classifier over every candidate pair's evidence (out of fold, folds by cut)\n",
        f"{c['candidate_pairs']:,} candidate pairs hold {c['variant_pairs_among_them']:,} of the "
        f"{c['variant_pairs_in_all']:,} colour-variant pairs. Recall of those at pair precision "
        + ", ".join(f"{p}: {c[f'variant_recall_at_p{p}']:.4f}" for p in PRECISIONS)
        + ".\n",
        "## Embeddings whitened on the shop's cut labels (`dedup fit`'s whitening, held-out cuts)\n",
        f"Fitted on half of the cuts, measured on the other half ({fitted['images']:,} photos, "
        f"{fitted['variant_pairs']:,} colour-variant pairs). Recall of those at pair precision "
        + ", ".join(f"{p}: {fitted[f'variant_recall_at_p{p}']:.4f}" for p in PRECISIONS)
        + ".\n",
        "## Family clustering (family-level pairwise scores against `cut`)\n",
        "| method | cut height | precision | recall | F1 |",
        "|---|---|---|---|---|",
    ]
    for f in families:
        h = "-" if f["height"] is None else f["height"]
        lines.append(f"| {f['method']} | {h} | {f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} |")
    write(
        "families",
        {
            "machine": machine(),
            "nearest_neighbour": nearest,
            "per_pair": per_pair,
            "classifier": classifier,
            "whitened_on_cuts": fitted,
            "families": families,
        },
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
