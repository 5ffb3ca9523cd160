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
* the shipped model: fit on all sets (each set weighted equally), written to
  ``dedup/data/pair_model.json`` with its provenance.

It is a logistic regression over a dozen evidence columns: calibration
constants measured on the sets, no network weights and no projection of
image features.

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
from _common import BENCH, ROOT, machine, replace_readme_block, write  # noqa: E402
from edits import build_edited_set  # noqa: E402

from dedup.calibration import FEATURES, PairModel, expected_calibration_error, pair_features  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402

#: The labelled sets the model is fitted and checked on.
SETS = ("products-flipkart", "ukbench-dev", "inshop-women", "edited-inshop", "edited-ukbench")
CACHE = ROOT / "benchmarks" / ".cache"
MODEL_OUT = ROOT / "dedup" / "data" / "pair_model.json"


def set_folder(name: str) -> Path:
    """The folder of a labelled set (edited sets are built on first use)."""
    return build_edited_set(name) if name.startswith("edited-") else BENCH / name


def run_set(name: str, model_path: str | None = None, **kwargs):
    """Run the default job on a labelled set; returns (result, true group per row)."""
    folder = set_folder(name)
    labels = pd.read_csv(folder / "labels.csv", dtype=str, keep_default_na=False)
    labels = labels[~labels.group.str.startswith("_")]
    dd = Deduplicator(
        backbones="efficientnet-lite0", cache=CACHE / f"{name}.sqlite", progress=False, model_path=model_path, **kwargs
    )
    result = dd.run(folder, files=list(labels.path))
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    return result, truth, labels


def pair_table(name: str, model_path: str | None = None) -> pd.DataFrame:
    """Evidence and truth of every candidate pair of one set."""
    result, truth, _ = run_set(name, model_path)
    X = pair_features(result.pairs)
    df = pd.DataFrame(X, columns=list(FEATURES))
    df["y"] = (truth[result.pairs.ij[:, 0]] == truth[result.pairs.ij[:, 1]]).astype(int)
    df["set"] = name
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


def main() -> None:
    neutral = neutral_model()
    tables = {s: pair_table(s, neutral) for s in SETS}
    allx = pd.concat(tables.values(), ignore_index=True)
    cols = list(FEATURES)
    loso = []
    for s in SETS:
        tr, te = allx[allx.set != s], tables[s]
        m = PairModel.fit(tr[cols].to_numpy(), tr.y.to_numpy(), sample_weight=weights(tr))
        p = m.predict(te[cols].to_numpy())
        sel = p >= 0.9
        loso.append(
            {
                "left_out": s,
                "pairs": len(te),
                "positives": int(te.y.sum()),
                "ece": round(expected_calibration_error(p, te.y.to_numpy()), 4),
                "pair_precision_at_0.9": round(float(te.y[sel].mean()) if sel.any() else 1.0, 4),
                "pair_recall_at_0.9": round(float(te.y[sel].sum() / max(te.y.sum(), 1)), 4),
            }
        )
    final = PairModel.fit(
        allx[cols].to_numpy(),
        allx.y.to_numpy(),
        sample_weight=weights(allx),
        info={
            "fitted_on": list(SETS),
            "fitted_with": ["efficientnet-lite0"],
            "pairs": int(len(allx)),
            "positives": int(allx.y.sum()),
            "leave_one_set_out_ece": {r["left_out"]: r["ece"] for r in loso},
            "script": "benchmarks/calibrate.py",
            "date": machine()["date"],
        },
    )
    p_all = final.predict(allx[cols].to_numpy())
    in_sample = {s: round(expected_calibration_error(p_all[allx.set == s], allx.y[allx.set == s]), 4) for s in SETS}
    tmp = MODEL_OUT.with_suffix(".json.tmp")
    tmp.write_text(final.to_json() + "\n")
    tmp.replace(MODEL_OUT)
    header = (
        "| set left out | candidate pairs | same-product pairs | ECE left out | ECE in the shipped fit | "
        "pair precision at p >= 0.9 (left out) | pair recall at p >= 0.9 (left out) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows = "\n".join(
        f"| {r['left_out']} | {r['pairs']} | {r['positives']} | {r['ece']:.3f} | "
        f"{in_sample[r['left_out']]:.3f} | {r['pair_precision_at_0.9']:.3f} | "
        f"{r['pair_recall_at_0.9']:.3f} |"
        for r in loso
    )
    md = (
        "# Pair model calibration\n\n"
        "Logistic regression over the pair evidence (`dedup/calibration.py`), fitted on the candidate pairs of "
        "every set, each set weighted equally. Leave-one-set-out: fitted on the other sets, measured on the "
        "one left out. ECE: expected calibration error, 10 equal-width bins (0 = perfectly calibrated).\n\n"
        + header
        + rows
        + "\n\n"
        "Coefficients of the shipped model (standardised features):\n\n"
        + "\n".join(f"- `{c}`: {w:+.3f}" for c, w in zip(cols, final.coef))
        + "\n"
    )
    write(
        "calibration",
        {
            "machine": machine(),
            "leave_one_set_out": loso,
            "in_sample_ece": in_sample,
            "model": json.loads(final.to_json()),
        },
        md,
    )
    if "--readme" in sys.argv[1:]:
        replace_readme_block("CALIBRATION-TABLE", header + rows)


if __name__ == "__main__":
    main()
