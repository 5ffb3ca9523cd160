"""Second-stage pair decisions from the confidences around a pair: measured, not shipped.

The pair model scores each candidate pair alone. Its neighbours know more:
a product's views that each match a third photo confidently support one
another, while a colour variant is often its look-alike's single best
match. This script measures a second stage (stacking, Wolpert 1992) over
the first stage's P(same) of the pair and of the paths through a third
photo:

* ``lp``: the pair's own logit;
* ``lbest``: the logit of the strongest two-step path, max over k of
  min(p_ik, p_jk);
* ``c5``, ``c9``: how many third photos k have min(p_ik, p_jk) >= 0.5, 0.9;
* ``rmin``, ``rmax``: the pair's ranks in the two photos' neighbour lists
  re-ranked by P(same) (:func:`dedup.rerank.ranked_neighbours`);
* ``gap``: the logit of the better photo's best pair minus ``lp``.

Both stages are measured out of fold: the first stage is
``calibrate.held_out_cuts`` (each set in 5 folds by cut or group, fitted on
the other sets and folds, every pair verified), and the second stage
(scikit-learn's ``HistGradientBoostingClassifier``, depth 3, 100 trees,
each set weighted equally) is fitted the same way on those out-of-fold
confidences. Reported per set: pair-level recall at pair precision 0.98
and precision/recall at p >= 0.9, and the groups' pairwise P/R/F1 when the
library groups with either stage's confidences (:func:`dedup.grouping.group`)
at --min-confidence 0.9 and 0.95.

    python benchmarks/path_support.py

Writes benchmarks/results/path_support.{md,json}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402
from calibrate import SETS, TREE_SETTINGS, evidence_table, held_out_cuts, run_set, scores  # noqa: E402

from dedup.evaluate import pairwise_scores  # noqa: E402
from dedup.grouping import GroupingParams, group  # noqa: E402
from dedup.rerank import ranked_neighbours  # noqa: E402

COLUMNS = ("lp", "lbest", "c5", "c9", "rmin", "rmax", "gap")


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def path_features(ij: np.ndarray, p: np.ndarray, rank_ij, rank_ji, fused_ids: np.ndarray) -> pd.DataFrame:
    """The second stage's features of every pair (see the module docstring)."""
    m = len(ij)
    edges = pd.DataFrame({"a": np.r_[ij[:, 0], ij[:, 1]], "k": np.r_[ij[:, 1], ij[:, 0]], "p": np.r_[p, p]})
    pairs = pd.DataFrame({"pair": np.arange(m), "i": ij[:, 0], "j": ij[:, 1]})
    left = pairs.merge(edges.rename(columns={"a": "i", "p": "pi"}), on="i")
    both = left.merge(edges.rename(columns={"a": "j", "p": "pj"}), on=["j", "k"])
    both["path"] = np.minimum(both.pi, both.pj)
    agg = both.groupby("pair").path.agg(
        best="max", c5=lambda s: int((s >= 0.5).sum()), c9=lambda s: int((s >= 0.9).sum())
    )
    agg = agg.reindex(np.arange(m), fill_value=0)
    nb = ranked_neighbours(ij, p, rank_ij, rank_ji, fused_ids)
    width = nb.shape[1]

    def rank(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        hit = nb[a] == b[:, None]
        return np.where(hit.any(axis=1), hit.argmax(axis=1), width)

    r1, r2 = rank(ij[:, 0], ij[:, 1]), rank(ij[:, 1], ij[:, 0])
    best_of = pd.Series(np.r_[p, p]).groupby(np.r_[ij[:, 0], ij[:, 1]]).max()
    top = np.maximum(best_of.reindex(ij[:, 0]).to_numpy(), best_of.reindex(ij[:, 1]).to_numpy())
    return pd.DataFrame(
        {
            "lp": logit(p),
            "lbest": logit(np.maximum(agg.best.to_numpy(float), 1e-4)),
            "c5": agg.c5.to_numpy(float),
            "c9": agg.c9.to_numpy(float),
            "rmin": np.minimum(r1, r2).astype(float),
            "rmax": np.maximum(r1, r2).astype(float),
            "gap": logit(top) - logit(p),
        }
    )


def second_stage(table: pd.DataFrame, name: str, folds: int = 5) -> np.ndarray:
    """Out-of-fold second-stage P(same) of one set's pairs (folds by cut)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import GroupKFold

    own = table[table.set == name].reset_index(drop=True)
    rest = table[table.set != name]
    q = np.zeros(len(own))
    for train, test in GroupKFold(min(folds, own.cut.nunique())).split(own, groups=own.cut):
        fit_on = pd.concat([rest, own.iloc[train]], ignore_index=True)
        w = (1.0 / fit_on.groupby("set").y.transform("size")).to_numpy()
        model = HistGradientBoostingClassifier(max_depth=3, max_iter=100, random_state=0)
        model.fit(fit_on[list(COLUMNS)], fit_on.y, sample_weight=w)
        q[test] = model.predict_proba(own.iloc[test][list(COLUMNS)])[:, 1]
    return q


def group_scores(result, truth: np.ndarray, conf: np.ndarray, levels=(0.9, 0.95)) -> dict:
    """Pairwise P/R/F1 of the groups :func:`dedup.grouping.group` makes from
    a run's pairs with confidences ``conf`` (``(m,)`` in [0, 1]) at each
    --min-confidence level, against ``truth`` (a group per row):
    ``{"groups_at_LEVEL": {"precision", "recall", "f1"}}``."""
    out = {}
    for level in levels:
        g = group(len(truth), result.pairs, conf, result.hash_pairs, GroupingParams(min_confidence=level))
        m = pairwise_scores(g.labels, truth)
        out[f"groups_at_{level}"] = {k: round(float(m[k]), 4) for k in ("precision", "recall", "f1")}
    return out


def main() -> None:
    runs = {s: run_set(s) for s in SETS}
    tables = {s: evidence_table(s, *runs[s]) for s in SETS}
    allx = pd.concat(tables.values(), ignore_index=True)
    firsts, parts = {}, []
    for s in SETS:
        result = runs[s][0]
        firsts[s] = held_out_cuts(allx, s, TREE_SETTINGS)
        pr = result.pairs
        feats = path_features(pr.ij, firsts[s], pr.rank_ij, pr.rank_ji, result.fused_ids)
        parts.append(feats.assign(y=tables[s].y.to_numpy(), set=s, cut=tables[s].cut.to_numpy()))
    table = pd.concat(parts, ignore_index=True)
    rows = []
    for s in SETS:
        result, truth, _ = runs[s]
        y = tables[s].y.to_numpy()
        stacked = second_stage(table, s)
        row: dict = {"set": s, "pairs": len(y)}
        for stage, conf in (("first", firsts[s]), ("stacked", stacked)):
            row[stage] = {**scores(conf, y), **group_scores(result, truth, conf)}
        rows.append(row)
        print(row, flush=True)
    header = (
        "| set | pairs | stage | pair R at P 0.98 | pair P / R at p >= 0.9 | groups P / R / F1 at 0.9 "
        "| groups P / R / F1 at 0.95 |\n|---|---|---|---|---|---|---|\n"
    )

    def prf(d: dict) -> str:
        return f"{d['precision']:.3f} / {d['recall']:.3f} / {d['f1']:.3f}"

    table_md = header + "\n".join(
        f"| {r['set']} | {r['pairs']} | {stage} | {r[stage]['pair_recall_at_precision_0.98']:.3f} | "
        f"{r[stage]['pair_precision_at_0.9']:.3f} / {r[stage]['pair_recall_at_0.9']:.3f} | "
        f"{prf(r[stage]['groups_at_0.9'])} | {prf(r[stage]['groups_at_0.95'])} |"
        for r in rows
        for stage in ("first", "stacked")
    )
    md = (
        "# Second-stage pair decisions from path support (measured, not shipped)\n\n"
        f"Machine: {machine()}. Produced by `python benchmarks/path_support.py`. Both stages out of fold "
        "(5 folds by cut or group, fitted on the other sets and folds; every candidate pair verified). "
        "*first*: the pair model's held-out P(same); *stacked*: the second stage over it and the paths "
        "through third photos. Groups: `dedup.grouping.group` with that stage's confidences.\n\n" + table_md + "\n"
    )
    write("path_support", {"machine": machine(), "rows": rows}, md)


if __name__ == "__main__":
    main()
