"""Fit the pair model (dedup/data/pair_model.json) and check its calibration.

For every labelled set (the shared sets and the edited-copy sets built by
``benchmarks/edits.py``) the main job runs with the default settings
(embeddings, colours and inlier counts cached in ``benchmarks/.cache``), and
every scored candidate pair becomes one row: its evidence
(:func:`dedup.calibration.pair_features`) and whether both images show the
same product. Then:

* leave-one-set-out: fit on all sets but one, predict the one left out, and
  report its expected calibration error (ECE) and its pairwise precision and
  recall at the default confidence;
* held-out cuts: each set split into 5 folds by garment cut (the `cut`
  column: colour variants of one cut stay in one fold) or by group, each
  fold predicted by a model fitted on the other sets and the set's other
  folds: how the shipped model does on products it has not seen, beside
  the same split with the logistic model alone (the choice of the boosted
  trees rests on this comparison);
* the shipped model: fit on all sets (each set weighted equally), written to
  ``dedup/data/pair_model.json`` with its provenance;
* the model for runs without geometric verification (``--no-verify``): the
  same fit on the same pairs with the verification evidence as an
  unverified pair has it (``dedup/data/pair_model_unverified.json``; its
  held-out-cuts precision and recall in the table's last column).

It is a logistic regression over a dozen evidence columns with 100 small
regression trees boosted from its logit: calibration constants measured on
the sets, no network weights and no projection of image features.

    python benchmarks/calibrate.py [--readme]   # refit; write the model, results/calibration.md
                                                # (and the README's calibration table)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, replace_readme_block, write  # noqa: E402
from edits import set_folder  # noqa: E402

from dedup.calibration import (  # noqa: E402
    FEATURES,
    TREE_SETTINGS,
    UNVERIFIED_MODEL_FILE,
    PairModel,
    expected_calibration_error,
    pair_features,
    unverified,
)
from dedup.grouping import GroupingParams  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402

#: The labelled sets the model is fitted and checked on.
SETS = ("products-flipkart", "ukbench-dev", "inshop-women", "edited-inshop", "edited-ukbench")
CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_MIN_CONFIDENCE = GroupingParams().min_confidence
MODEL_OUT = ROOT / "dedup" / "data" / "pair_model.json"
UNVERIFIED_OUT = ROOT / "dedup" / "data" / UNVERIFIED_MODEL_FILE


def run_set(name: str, model_path: str | None = None, verify_all: bool = True, **kwargs):
    """Run the default job on a labelled set, every candidate pair verified
    (the evidence a verified pair model is fitted on; ``verify_all=False``:
    the default run, verification screened); returns (result, true group
    per row, labels)."""
    folder = set_folder(name)
    labels = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels[~labels.group.str.startswith("_")]
    dd = Deduplicator(
        backbones="efficientnet-lite0",
        cache=CACHE / f"{name}.sqlite",
        progress=False,
        model_path=model_path,
        verify_all=verify_all,
        **kwargs,
    )
    result = dd.run(folder, files=list(labels.path))
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    return result, truth, labels


def pair_table(name: str, model_path: str | None = None) -> pd.DataFrame:
    """Evidence and truth of every candidate pair of one set."""
    return evidence_table(name, *run_set(name, model_path))


def evidence_table(name: str, result, truth: np.ndarray, labels: pd.DataFrame) -> pd.DataFrame:
    """The pair table of one :func:`run_set` outcome: one row per candidate
    pair, its :data:`FEATURES`, ``y`` (1: same product), ``set`` and ``cut``
    (the fold key of :func:`held_out_cuts`)."""
    X = pair_features(result.pairs)
    df = pd.DataFrame(X, columns=list(FEATURES))
    df["y"] = (truth[result.pairs.ij[:, 0]] == truth[result.pairs.ij[:, 1]]).astype(int)
    df["set"] = name
    by_path = labels.set_index("path")
    cut = (by_path["cut"] if "cut" in by_path else by_path["group"]).reindex(result.groups.path).to_numpy()
    df["cut"] = cut[result.pairs.ij[:, 0]]
    return df


def neutral_model() -> str:
    """A model file that scores every pair 0.5 (to collect evidence before any fit)."""
    k = len(FEATURES)
    m = PairModel(np.zeros(k), np.ones(k), np.zeros(k), 0.0, {"fitted_on": "nothing (neutral)"})
    path = Path(tempfile.mkdtemp()) / "neutral.json"
    path.write_text(m.to_json())
    return str(path)


def weights(df: pd.DataFrame) -> np.ndarray:
    """Each set weighs the same in the fit, whatever its number of pairs."""
    return (1.0 / df.groupby("set").y.transform("size")).to_numpy() * len(df) / df.set.nunique()


def fit(
    df: pd.DataFrame,
    boost: dict | None = TREE_SETTINGS,
    info: dict | None = None,
    cols: list[str] | None = None,
    set_weight: dict[str, float] | None = None,
) -> PairModel:
    """The pair model fitted on a pair table, each set weighted equally
    (times ``set_weight[set]`` where given), over ``cols`` (default
    :data:`FEATURES`)."""
    cols = cols or list(FEATURES)
    w = weights(df) * df.set.map(set_weight or {}).fillna(1.0).to_numpy()
    return PairModel.fit(df[cols].to_numpy(), df.y.to_numpy(), sample_weight=w, boost=boost, info=info)


def recall_at_precision(p: np.ndarray, y: np.ndarray, target: float = 0.98) -> float:
    """The largest share of same-product pairs above a confidence cut whose pairs are >= ``target`` precise."""
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order])
    ok = np.nonzero(tp / np.arange(1, len(y) + 1) >= target)[0]
    return float(tp[ok.max()] / max(y.sum(), 1)) if len(ok) else 0.0


def held_out_cuts(
    allx: pd.DataFrame,
    name: str,
    boost: dict | None,
    folds: int = 5,
    cols: list[str] | None = None,
    set_weight: dict[str, float] | None = None,
) -> np.ndarray:
    """Out-of-fold P(same) of one set's pairs: folds by cut, fitted on the
    other sets and the other folds (``cols``, ``set_weight``: as :func:`fit`)."""
    from sklearn.model_selection import GroupKFold

    own = allx[allx.set == name].reset_index(drop=True)
    rest = allx[allx.set != name]
    p = np.zeros(len(own))
    k = min(folds, own.cut.nunique())
    for train, test in GroupKFold(k).split(own, groups=own.cut):
        m = fit(pd.concat([rest, own.iloc[train]], ignore_index=True), boost, cols=cols, set_weight=set_weight)
        p[test] = m.predict(own.iloc[test][cols or list(FEATURES)].to_numpy())
    return p


def scores(p: np.ndarray, y: np.ndarray) -> dict:
    """ECE, precision and recall at the default --min-confidence (0.9), and
    recall at pair precision >= 0.98 of predictions ``p``."""
    sel = p >= DEFAULT_MIN_CONFIDENCE
    return {
        "ece": round(expected_calibration_error(p, y), 4),
        "pair_precision_at_0.9": round(float(y[sel].mean()) if sel.any() else 1.0, 4),
        "pair_recall_at_0.9": round(float(y[sel].sum() / max(y.sum(), 1)), 4),
        "pair_recall_at_precision_0.98": round(recall_at_precision(p, y), 4),
    }


def without_verification(allx: pd.DataFrame) -> pd.DataFrame:
    """The pair table as a run without geometric verification has it."""
    out = allx.copy()
    out[list(FEATURES)] = unverified(allx[list(FEATURES)].to_numpy())
    return out


def held_out_table(allx: pd.DataFrame) -> list[dict]:
    """Held-out-cuts scores of the shipped kind of model, of the logistic
    model alone, and of the model for unverified pairs, per set."""
    rows = []
    bare = without_verification(allx)
    for s in SETS:
        y = allx[allx.set == s].y.to_numpy()
        rows.append(
            {
                "set": s,
                "boosted": scores(held_out_cuts(allx, s, TREE_SETTINGS), y),
                "logistic": scores(held_out_cuts(allx, s, None), y),
                "unverified": scores(held_out_cuts(bare, s, TREE_SETTINGS), y),
            }
        )
    return rows


def main() -> None:
    neutral = neutral_model()
    tables = {s: pair_table(s, neutral) for s in SETS}
    allx = pd.concat(tables.values(), ignore_index=True)
    cols = list(FEATURES)
    loso = []
    for s in SETS:
        tr, te = allx[allx.set != s], tables[s]
        m = fit(tr)
        p = m.predict(te[cols].to_numpy())
        loso.append({"left_out": s, "pairs": len(te), "positives": int(te.y.sum()), **scores(p, te.y.to_numpy())})
    held = held_out_table(allx)
    provenance = {
        "fitted_on": list(SETS),
        "fitted_with": ["efficientnet-lite0"],
        "pairs": int(len(allx)),
        "positives": int(allx.y.sum()),
        "trees": TREE_SETTINGS,
        "script": "benchmarks/calibrate.py",
        "date": machine()["date"],
    }
    final = fit(
        allx,
        info={
            **provenance,
            "leave_one_set_out_ece": {r["left_out"]: r["ece"] for r in loso},
            "held_out_cuts_ece": {r["set"]: r["boosted"]["ece"] for r in held},
        },
    )
    final_unverified = fit(
        without_verification(allx),
        info={
            **provenance,
            "evidence": "without geometric verification (inlier and aligned-colour features 0)",
            "held_out_cuts_ece": {r["set"]: r["unverified"]["ece"] for r in held},
        },
    )
    p_all = final.predict(allx[cols].to_numpy())
    in_sample = {s: round(expected_calibration_error(p_all[allx.set == s], allx.y[allx.set == s]), 4) for s in SETS}
    for model, path in ((final, MODEL_OUT), (final_unverified, UNVERIFIED_OUT)):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(model.to_json() + "\n")
        tmp.replace(path)
    header = (
        "| set | candidate pairs | same-product pairs | ECE, held-out cuts | ECE left out | ECE in the shipped fit | "
        "P / R at p >= 0.9, held-out cuts | same, logistic alone | R at pair P >= 0.98, held-out cuts | "
        "same, logistic alone | P / R at p >= 0.9, set left out | P / R at p >= 0.9 without verification, "
        "held-out cuts |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = "\n".join(
        f"| {r['left_out']} | {r['pairs']} | {r['positives']} | {h['boosted']['ece']:.3f} | {r['ece']:.3f} | "
        f"{in_sample[r['left_out']]:.3f} | "
        f"{h['boosted']['pair_precision_at_0.9']:.3f} / {h['boosted']['pair_recall_at_0.9']:.3f} | "
        f"{h['logistic']['pair_precision_at_0.9']:.3f} / {h['logistic']['pair_recall_at_0.9']:.3f} | "
        f"{h['boosted']['pair_recall_at_precision_0.98']:.3f} | {h['logistic']['pair_recall_at_precision_0.98']:.3f} | "
        f"{r['pair_precision_at_0.9']:.3f} / {r['pair_recall_at_0.9']:.3f} | "
        f"{h['unverified']['pair_precision_at_0.9']:.3f} / {h['unverified']['pair_recall_at_0.9']:.3f} |"
        for r, h in zip(loso, held)
    )
    md = (
        "# Pair model calibration\n\n"
        "Logistic regression over the pair evidence with 100 regression trees of depth 3 boosted from its logit "
        f"(`dedup/calibration.py`, {TREE_SETTINGS}), fitted on the candidate pairs of every set, each set "
        "weighted equally. Held-out cuts: each set in 5 folds by garment cut (colour variants of one cut in one "
        "fold) or by group, each fold predicted by a model fitted on the other sets and the other folds. "
        "Left out: fitted on the other sets only. ECE: expected calibration error, 10 equal-width bins "
        "(0 = perfectly calibrated). P / R: precision and recall of the candidate pairs with p >= 0.9 (the "
        "default --min-confidence); R at pair P >= 0.98: the recall at the loosest cut whose pairs are still "
        "98 % precise. Without verification: the model shipped for `--no-verify` runs "
        "(`dedup/data/pair_model_unverified.json`), fitted on the same pairs with the verification evidence "
        "as an unverified pair has it (inlier and aligned-colour features 0).\n\n" + header + rows + "\n\n"
        "Coefficients of the shipped model's logistic part (standardised features):\n\n"
        + "\n".join(f"- `{c}`: {w:+.3f}" for c, w in zip(cols, final.coef))
        + "\n"
    )
    write(
        "calibration",
        {
            "machine": machine(),
            "leave_one_set_out": loso,
            "held_out_cuts": held,
            "in_sample_ece": in_sample,
            "model": {k: v for k, v in json.loads(final.to_json()).items() if k != "trees"},
            "model_file": "dedup/data/pair_model.json",
            "unverified_model_file": f"dedup/data/{UNVERIFIED_MODEL_FILE}",
        },
        md,
    )
    if "--readme" in sys.argv[1:]:
        replace_readme_block("CALIBRATION-TABLE", header + rows)


if __name__ == "__main__":
    main()
