"""Pseudo-labels from a run's own confident joins: measured, not shipped.

``dedup fit`` learns a whitening of the colour-fused vectors from a shop's
labels (held-out cuts of inshop-women: pairwise F1 0.873) or from augmented
copies of each photo (0.755 at precision 0.94). This script asks whether a
run can adapt without either: take the pairs its own pair model already
joins (``p >= threshold``) as matching pairs, the self-training of
Lee's "Pseudo-Label" (ICML 2013 workshop on representation learning), fit
:func:`dedup.adapt.learned_whitening` on them, and give the pair model the
distances and ranks of the whitened space as four more evidence columns:

* ``white_distance``: the cosine distance of the pair in the whitened space;
* ``white_log_rank_min`` / ``white_log_rank_max``: the log of each photo's
  rank in the other's whitened neighbour list (1 = nearest);
* ``white_relative``: that distance over the smaller of the two photos'
  distances to their own nearest neighbour.

A whitening fitted on a pair memorises it: a false pseudo-pair (a colour
variant joined by mistake) comes back with a distance near zero and a
confidence near 1. So the columns are **cross-fitted** (as in Chernozhukov
et al., "Double/debiased machine learning", Econometrics Journal 2018): the
connected components of the pseudo-pair graph are dealt into ``folds``
folds, and each photo's row of similarities is taken in a whitening fitted
on the pseudo-pairs of the other folds only, so no pair is ever scored in a
space fitted on it (a pair's distance is the mean of its two rows'). The
uncross-fitted variant is measured too.

Protocol, as ``benchmarks/calibrate.py`` chose the shipped model (and
``pair_evidence.py`` measured its alternatives): every set's candidate pairs
of the default run, every pair verified; the first-pass confidences that
pick the pseudo-pairs are themselves out of fold
(``calibrate.held_out_cuts``: each fold of 5, by cut or group, predicted
by a model fitted on the other sets and folds), so no label of a pair
reaches its own pseudo-label; then the pair model over the 14 shipped
columns and the 4 new ones is measured by the same held-out cuts. No label
is used to fit a whitening. R@1 is the nearest neighbour in the whitened
space (cross-fitted) against the colour-fused space the run searches.

    python benchmarks/pseudo_labels.py

Writes benchmarks/results/pseudo_labels.{md,json}; about 30 minutes on 2
cores with the sets' runs cached.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402
from calibrate import (  # noqa: E402
    SETS,
    TREE_SETTINGS,
    evidence_table,
    held_out_cuts,
    recall_at_precision,
    run_set,
    scores,
)
from path_support import group_scores, path_features, second_stage  # noqa: E402

from dedup.adapt import DEFAULT_DIM, DEFAULT_SHRINKAGE, learned_whitening  # noqa: E402
from dedup.calibration import FEATURES  # noqa: E402
from dedup.grouping import GroupingParams, fused_vectors  # noqa: E402

NEW = ("white_distance", "white_log_rank_min", "white_log_rank_max", "white_relative")
#: (threshold, dim, shrinkage, folds); folds 1 = not cross-fitted.
SETTINGS = (
    (0.9, DEFAULT_DIM, DEFAULT_SHRINKAGE, 1),
    (0.9, DEFAULT_DIM, DEFAULT_SHRINKAGE, 5),
    (0.95, DEFAULT_DIM, DEFAULT_SHRINKAGE, 5),
    (0.97, DEFAULT_DIM, DEFAULT_SHRINKAGE, 5),
    (0.9, 64, DEFAULT_SHRINKAGE, 5),
    (0.9, DEFAULT_DIM, 3.0, 5),
    (0.9, DEFAULT_DIM, DEFAULT_SHRINKAGE, 10),
)
#: The setting also measured on every set (the others: inshop-women only).
ALL_SETS_SETTING = SETTINGS[1]


def fused_rows(result) -> np.ndarray:
    """A run's colour-fused vectors (:func:`dedup.grouping.fused_vectors` of its
    embeddings and colours, the default colour weight): ``(n, D)`` float32
    with unit rows, in ``result.groups`` order."""
    return fused_vectors(list(result.embeddings.values()), result.colours, GroupingParams().colour_weight)


def whitened_similarity(F: np.ndarray, pseudo: np.ndarray, dim: int, shrinkage: float, folds: int) -> np.ndarray:
    """``(n, n)`` float32 cosine similarities in whitening(s) fitted on ``pseudo``
    (``(p, 2)`` row pairs); with ``folds > 1`` row ``i`` comes from a
    whitening fitted without the pseudo-pairs of ``i``'s component. The
    diagonal is ``-inf``."""
    n = len(F)
    _, comp = connected_components(
        coo_matrix((np.ones(len(pseudo)), (pseudo[:, 0], pseudo[:, 1])), shape=(n, n)), directed=False
    )
    fold = np.random.default_rng(0).permutation(comp.max() + 1)[comp] % folds
    S = np.empty((n, n), np.float32)
    for k in range(folds):
        train = pseudo[fold[pseudo[:, 0]] != k] if folds > 1 else pseudo
        Z = learned_whitening(F, train, min(dim, F.shape[1]), shrinkage).transform(F)
        rows = np.nonzero(fold == k)[0]
        S[rows] = Z[rows] @ Z.T
    np.fill_diagonal(S, -np.inf)
    return S


def whitened_evidence(S: np.ndarray, ij: np.ndarray) -> pd.DataFrame:
    """The :data:`NEW` columns of candidate pairs ``ij`` from similarities ``S``."""
    order = np.argsort(-S, axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(len(S))[:, None], order] = np.arange(S.shape[1])[None, :]
    d = 1.0 - (S[ij[:, 0], ij[:, 1]] + S[ij[:, 1], ij[:, 0]]) / 2
    r1, r2 = rank[ij[:, 0], ij[:, 1]] + 1, rank[ij[:, 1], ij[:, 0]] + 1
    nearest = 1.0 - S.max(axis=1)
    return pd.DataFrame(
        {
            "white_distance": d,
            "white_log_rank_min": np.log(np.minimum(r1, r2)),
            "white_log_rank_max": np.log(np.maximum(r1, r2)),
            "white_relative": d / np.maximum(np.minimum(nearest[ij[:, 0]], nearest[ij[:, 1]]), 1e-6),
        }
    )


def recall_at_1(S: np.ndarray, truth: np.ndarray) -> float:
    """Share of photos with a same-product photo whose nearest neighbour under ``S`` is one."""
    _, inverse, counts = np.unique(truth, return_inverse=True, return_counts=True)
    has = counts[inverse] > 1
    return round(float((truth[S.argmax(axis=1)] == truth)[has].mean()), 4)


def _scores(p: np.ndarray, y: np.ndarray, result=None, truth=None) -> dict:
    """Pair-level scores of confidences ``p``; with the run's ``result``, also
    its groups' pairwise P/R/F1 when grouped with them at 0.9 and 0.95."""
    out = scores(p, y)
    out["pair_recall_at_precision_0.95"] = round(recall_at_precision(p, y, 0.95), 4)
    if result is not None:
        out.update(group_scores(result, truth, p))
    return out


def path_stage(tables: dict, conf: dict, sets: dict) -> dict:
    """``path_support.py``'s second stage over first-stage confidences
    ``conf`` (out of fold), itself out of fold: P(same) per set."""
    parts = []
    for s in SETS:
        pr = sets[s]["result"].pairs
        feats = path_features(pr.ij, conf[s], pr.rank_ij, pr.rank_ji, sets[s]["result"].fused_ids)
        parts.append(feats.assign(y=tables[s].y.to_numpy(), set=s, cut=tables[s].cut.to_numpy()))
    table = pd.concat(parts, ignore_index=True)
    return {s: second_stage(table, s) for s in SETS}


def main() -> None:
    sets = {}
    for s in SETS:
        result, truth, labels = run_set(s)
        sets[s] = {
            "table": evidence_table(s, result, truth, labels),
            "ij": result.pairs.ij,
            "truth": truth,
            "result": result,
            "F": fused_rows(result),
        }
        print(s, len(truth), "photos", len(result.pairs.ij), "candidate pairs", flush=True)
    base = pd.concat([v["table"] for v in sets.values()], ignore_index=True)
    first = {s: held_out_cuts(base, s, TREE_SETTINGS) for s in SETS}
    report: dict = {"machine": machine(), "base": {}, "settings": [], "path_support": {}}
    base_paths = path_stage({s: sets[s]["table"] for s in SETS}, first, sets)
    for s in SETS:
        F, y = sets[s]["F"], sets[s]["table"].y.to_numpy()
        report["base"][s] = _scores(first[s], y, sets[s]["result"], sets[s]["truth"])
        report["base"][s]["recall_at_1_fused"] = recall_at_1(F @ F.T - 3 * np.eye(len(F)), sets[s]["truth"])
        report["path_support"][s] = {"base": _scores(base_paths[s], y, sets[s]["result"], sets[s]["truth"])}
    for setting in SETTINGS:
        thr, dim, shrinkage, folds = setting
        tables, extra = [], {}
        for s in SETS:
            pseudo = sets[s]["ij"][first[s] >= thr]
            S = whitened_similarity(sets[s]["F"], pseudo, dim, shrinkage, folds)
            t = pd.concat([sets[s]["table"], whitened_evidence(S, sets[s]["ij"])], axis=1)
            tables.append(t)
            y_pseudo = t.y.to_numpy()[first[s] >= thr]
            extra[s] = {
                "pseudo_pairs": int(len(pseudo)),
                "pseudo_precision": round(float(y_pseudo.mean()), 4) if len(y_pseudo) else None,
                "recall_at_1_whitened": recall_at_1(S, sets[s]["truth"]),
            }
        allx = pd.concat(tables, ignore_index=True)
        shown = SETS if setting == ALL_SETS_SETTING else ("inshop-women",)
        row = {"threshold": thr, "dim": dim, "shrinkage": shrinkage, "folds": folds, "sets": {}}
        conf = {}
        for s in shown:
            conf[s] = held_out_cuts(allx, s, TREE_SETTINGS, cols=list(FEATURES) + list(NEW))
            y = allx[allx.set == s].y.to_numpy()
            row["sets"][s] = {**_scores(conf[s], y, sets[s]["result"], sets[s]["truth"]), **extra[s]}
        report["settings"].append(row)
        if setting == ALL_SETS_SETTING:
            own = {s: t.reset_index(drop=True) for s, t in zip(SETS, tables)}
            for s, q in path_stage(own, conf, sets).items():
                y = own[s].y.to_numpy()
                report["path_support"][s]["whitened"] = _scores(q, y, sets[s]["result"], sets[s]["truth"])
        print(setting, row["sets"]["inshop-women"], flush=True)
    write_report(report)


def write_report(report: dict) -> None:
    """benchmarks/results/pseudo_labels.{md,json}."""
    md = [
        "# Pseudo-labels from the run's own joins (measured, not shipped)",
        "",
        "Learned whitening (`dedup.adapt.learned_whitening`) fitted on the candidate pairs the first pass joins "
        "(out-of-fold p >= threshold), its distances and ranks added to the pair model as four columns; "
        "cross-fitted by components of the pseudo-pair graph (folds 1: not). Held-out cuts as in "
        "`calibrate.py`, every pair verified. R at P: pair recall at pair precision 0.98 / 0.95 among the "
        "candidate pairs; P / R at 0.9: the pairs with p >= 0.9 (the default). R@1: nearest neighbour, "
        "colour-fused space (first row) or whitened space. The candidate pairs are the default run's "
        "(the whitened space adds none).",
        "",
        "| set | pseudo-pairs from | dim | shrinkage | folds | pseudo-pairs (precision) "
        "| R at P 0.98 | R at P 0.95 | P / R at 0.9 | ECE | R@1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in SETS:
        b = report["base"][s]
        md.append(
            f"| {s} | none (the shipped columns) | - | - | - | - | {b['pair_recall_at_precision_0.98']:.3f} "
            f"| {b['pair_recall_at_precision_0.95']:.3f} | {b['pair_precision_at_0.9']:.3f} / "
            f"{b['pair_recall_at_0.9']:.3f} | {b['ece']:.4f} | {b['recall_at_1_fused']:.3f} |"
        )
        for row in report["settings"]:
            if s not in row["sets"]:
                continue
            r = row["sets"][s]
            md.append(
                f"| {s} | p >= {row['threshold']} | {row['dim']} | {row['shrinkage']} | {row['folds']} "
                f"| {r['pseudo_pairs']} ({r['pseudo_precision']}) | {r['pair_recall_at_precision_0.98']:.3f} "
                f"| {r['pair_recall_at_precision_0.95']:.3f} | {r['pair_precision_at_0.9']:.3f} / "
                f"{r['pair_recall_at_0.9']:.3f} | {r['ece']:.4f} | {r['recall_at_1_whitened']:.3f} |"
            )
    md += [
        "",
        "## Groups (`dedup.grouping.group` with these confidences), and path support stacked on them",
        "",
        "Pairwise P / R / F1 of the groups at --min-confidence 0.9 and 0.95. *path support*: the second stage "
        "of `path_support.py` (out of fold) over the first stage's out-of-fold confidences. *whitened*: the "
        f"setting p >= {ALL_SETS_SETTING[0]}, dim {ALL_SETS_SETTING[1]}, shrinkage {ALL_SETS_SETTING[2]}, "
        f"{ALL_SETS_SETTING[3]} folds.",
        "",
        "| set | first stage | second stage | R at P 0.98 | groups at 0.9 | groups at 0.95 |",
        "|---|---|---|---|---|---|",
    ]
    whitened = next(
        r for r in report["settings"] if (r["threshold"], r["dim"], r["shrinkage"], r["folds"]) == ALL_SETS_SETTING
    )

    def prf(d: dict) -> str:
        return f"{d['precision']:.3f} / {d['recall']:.3f} / {d['f1']:.3f}"

    for s in SETS:
        for first_stage, second, r in (
            ("shipped columns", "-", report["base"][s]),
            ("shipped columns", "path support", report["path_support"][s]["base"]),
            ("+ whitened columns", "-", whitened["sets"][s]),
            ("+ whitened columns", "path support", report["path_support"][s]["whitened"]),
        ):
            md.append(
                f"| {s} | {first_stage} | {second} | {r['pair_recall_at_precision_0.98']:.3f} "
                f"| {prf(r['groups_at_0.9'])} | {prf(r['groups_at_0.95'])} |"
            )
    md += ["", f"Machine: {report['machine']}"]
    write("pseudo_labels", report, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
