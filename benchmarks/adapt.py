"""Where an adapted model (`dedup fit`) helps and where it hurts, on photos it never saw.

Rows of the table (every one scored by `dedup bench`'s metrics at the
default `--min-confidence`):

* **held-out cuts**: `inshop-women`'s cuts split in two halves at random
  (seed 0; no cut on both sides, so no colour variant of a test product was
  seen either); a supervised model fitted on the first half's labels, the
  second half run without and with it.
* **transfer**: the supervised model fitted on all of `inshop-women`, run on
  sets it never saw: `ukbench-dev` (objects), `products-flipkart` (catalogue
  photos), `edited-ukbench` (seller edits of UKBench photos).
* **self-supervised**: a model fitted on each set's own photos without their
  labels (what a retailer without SKU labels would do), run on that set.

Two sweeps chose the defaults (`--sweep`; written to the same results):
the whitening's output dimensions and shrinkage on the held-out cuts
(`dedup.adapt.DEFAULT_DIM`, `DEFAULT_SHRINKAGE`), and the weight of the
shipped pair model as the prior of the refitted one
(`dedup.fit.PRIOR_STRENGTH`), measured on the held-out cuts and on
`edited-ukbench` and `ukbench-dev`, where a pair model refitted on studio
photos alone forgets what an edited copy looks like.

The DeepFashion photos are for research and evaluation only: the models
fitted here are written to a temporary folder and never shipped.

    python benchmarks/adapt.py [--sweep] [--readme]   # results/adapt.{md,json}
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, ROOT, machine, replace_readme_block, write  # noqa: E402
from edits import set_folder  # noqa: E402

from dedup.adapt import DEFAULT_DIM, DEFAULT_SHRINKAGE, read_fit_labels  # noqa: E402
from dedup.calibration import PairModel  # noqa: E402
from dedup.evaluate import run_bench  # noqa: E402
from dedup.fit import embedding_run, fit_self_supervised, fit_supervised, out_of_fold_pairs  # noqa: E402
from dedup.grouping import fused_vectors  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
INSHOP = BENCH / "inshop-women"
TRANSFER = ("ukbench-dev", "products-flipkart", "edited-ukbench")


def _dd(cache_name: str, model=None, force: bool = False) -> Deduplicator:
    cache = CACHE / f"{cache_name}.sqlite"
    return Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False, model=model, force_model=force)


def cut_split(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`inshop-women`'s labels split by cut into two halves."""
    lab = pd.read_csv(INSHOP / "labels.csv", dtype=str, keep_default_na=False)
    cuts = np.array(sorted(lab.cut.unique()))
    np.random.default_rng(seed).shuffle(cuts)
    first = set(cuts[: len(cuts) // 2])
    return lab[lab.cut.isin(first)].reset_index(drop=True), lab[~lab.cut.isin(first)].reset_index(drop=True)


def _scores(r: dict, fit_seconds: float | None = None) -> dict:
    pw = r["pairwise"]
    out = {
        "images": r["images"],
        "recall_at_1": r["recall_at_1"],
        "precision": round(pw["precision"], 4),
        "recall": round(pw["recall"], 4),
        "f1": round(pw["f1"], 4),
        "predicted_groups": r["predicted_groups"],
        "true_groups": r["true_groups"],
        "ece": r["calibration_ece"],
        "best_f1_at_precision_0.95": max(
            (round(s["f1"], 4) for s in r["sweep"] if s["precision"] >= 0.95), default=None
        ),
        "best_f1_at_precision_0.95_min_confidence": max(
            ((round(s["f1"], 4), s["min_confidence"]) for s in r["sweep"] if s["precision"] >= 0.95),
            default=(None, None),
        )[1],
        "fit_seconds": fit_seconds,
        "model_used": None if r.get("adapted_model") is None else r["adapted_model"]["applied"],
        "out_of_domain_share": None if r.get("adapted_model") is None else r["adapted_model"]["out_of_domain_share"],
    }
    if "copies_found_by_edit" in r:
        out["copies_found"] = r["copies_found_by_edit"]["all"]["share"]
    return out


def _bench(labels_csv: Path, root: Path, cache_name: str, out: Path, model=None, force: bool = False) -> dict:
    return run_bench(labels_csv, _dd(cache_name, model, force), out, root=root)


def held_out(tmp: Path, dim: int | None = None, shrinkage: float | None = None) -> dict:
    """Fit on half of the cuts, bench the other half without and with the model."""
    train, test = cut_split()
    train_csv, test_csv = tmp / "train.csv", tmp / "test.csv"
    train[["path", "group"]].to_csv(train_csv, index=False)
    test[["path", "group"]].to_csv(test_csv, index=False)
    kw = {k: v for k, v in {"dim": dim, "shrinkage": shrinkage}.items() if v is not None}
    t = time.perf_counter()
    fit_supervised(train_csv, tmp / "model-half", _dd("inshop-women"), root=INSHOP, **kw)
    fit_s = round(time.perf_counter() - t, 1)
    rows = {"supervised": _scores(_bench(test_csv, INSHOP, "inshop-women", tmp / "b-sup", tmp / "model-half"), fit_s)}
    if not kw:
        rows["default"] = _scores(_bench(test_csv, INSHOP, "inshop-women", tmp / "b-def"))
        # self-supervised on the test half's own photos (no labels used)
        t = time.perf_counter()
        fit_self_supervised(INSHOP, tmp / "model-self-half", _dd("inshop-women"), files=list(test.path))
        fit_s = round(time.perf_counter() - t, 1)
        rows["self-supervised"] = _scores(
            _bench(test_csv, INSHOP, "inshop-women", tmp / "b-self", tmp / "model-self-half"), fit_s
        )
    return rows


def prior_sweep(tmp: Path, strengths=(0.0, 10.0, 30.0, 100.0, 300.0, 1000.0)) -> list[dict]:
    """The pair model refitted with each prior strength (0: no prior, plain
    logistic regression) on the held-out-cut model's out-of-fold pairs; the
    model is forced onto the UKBench sets (its domain check would otherwise
    leave it unused there) to show what the prior protects."""
    dd = _dd("inshop-women")
    labels, root = read_fit_labels(tmp / "train.csv", INSHOP)
    res, nets = embedding_run(dd, root, list(labels.path))
    truth = labels.set_index("path").group.reindex(res.paths).to_numpy()
    cw = dd.grouping_params().colour_weight
    F = fused_vectors(list(res.embeddings.values()), res.colours, cw)
    X, y = out_of_fold_pairs(dd, res, F, truth, pd.notna(truth), nets, cw, DEFAULT_DIM, DEFAULT_SHRINKAGE, 4)
    shipped = PairModel.load()
    out = []
    for strength in strengths:
        pm = PairModel.fit(X, y) if strength == 0 else PairModel.fit(X, y, prior=shipped, prior_strength=strength)
        path = tmp / f"pair-model-{strength}.json"
        path.write_text(pm.to_json())
        row: dict = {"prior_strength": strength}
        dd = Deduplicator(
            backbones="efficientnet-lite0",
            cache=CACHE / "inshop-women.sqlite",
            progress=False,
            model=tmp / "model-half",
            model_path=path,
            force_model=True,
        )
        row["held-out cuts"] = _scores(run_bench(tmp / "test.csv", dd, tmp / "ps", root=INSHOP))
        for name in ("edited-ukbench", "ukbench-dev"):
            folder = set_folder(name)
            dd = Deduplicator(
                backbones="efficientnet-lite0",
                cache=CACHE / f"{name}.sqlite",
                progress=False,
                model=tmp / "model-half",
                model_path=path,
                force_model=True,
            )
            row[name] = _scores(run_bench(folder / "labels.csv", dd, tmp / f"ps-{name}"))
        print(row, flush=True)
        out.append(row)
    return out


def transfer(tmp: Path) -> dict:
    """Fit on all of inshop-women; bench sets it never saw, without and with
    that model, and with a self-supervised model fitted on each set itself."""
    t = time.perf_counter()
    fit_supervised(INSHOP / "labels.csv", tmp / "model-all", _dd("inshop-women"))
    fit_s = round(time.perf_counter() - t, 1)
    out = {}
    for name in TRANSFER:
        folder = set_folder(name)
        csv = folder / "labels.csv"
        labels = pd.read_csv(csv, dtype=str, keep_default_na=False)
        t = time.perf_counter()
        fit_self_supervised(folder, tmp / f"model-self-{name}", _dd(name), files=list(labels.path))
        self_s = round(time.perf_counter() - t, 1)
        out[name] = {
            "default": _scores(_bench(csv, folder, name, tmp / f"{name}-def")),
            "supervised (inshop-women)": _scores(
                _bench(csv, folder, name, tmp / f"{name}-sup", tmp / "model-all"), fit_s
            ),
            "supervised (inshop-women), --force-model": _scores(
                _bench(csv, folder, name, tmp / f"{name}-supf", tmp / "model-all", force=True), fit_s
            ),
            "self-supervised": _scores(
                _bench(csv, folder, name, tmp / f"{name}-self", tmp / f"model-self-{name}"), self_s
            ),
        }
    return out


def _row(set_name: str, model: str, s: dict) -> str:
    f, at = s.get("best_f1_at_precision_0.95"), s.get("best_f1_at_precision_0.95_min_confidence")
    copies = f"{s['copies_found']:.3f}" if "copies_found" in s else "-"
    used = "-" if s["model_used"] is None else f"{'yes' if s['model_used'] else 'no'} ({s['out_of_domain_share']:.2f})"
    return (
        f"| {set_name} | {model} | {s['images']} | {s['recall_at_1']:.3f} | {s['precision']:.3f} | "
        f"{s['recall']:.3f} | {s['f1']:.3f} | {'-' if f is None else f'{f:.3f} (at {at:.2f})'} | {s['ece']:.3f} | "
        f"{copies} | {used} | {'-' if s['fit_seconds'] is None else s['fit_seconds']} |"
    )


def main() -> None:
    args = sys.argv[1:]
    data: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        data["held_out_cuts"] = held_out(tmp)
        data["transfer"] = transfer(tmp)
        if "--sweep" in args:
            data["prior_sweep"] = prior_sweep(tmp)
            sweep = []
            for dim in (64, 128, 256, 512):
                for shrinkage in (0.3, 1.0, 3.0):
                    sub = tmp / f"sweep-{dim}-{shrinkage}"
                    sub.mkdir()
                    s = held_out(sub, dim, shrinkage)["supervised"]
                    sweep.append({"dim": dim, "shrinkage": shrinkage, **s})
                    print(sweep[-1], flush=True)
            data["sweep"] = sweep
    header = (
        "| set | features | images | R@1 | pairwise P | pairwise R | pairwise F1 | best F1 at P >= 0.95 | ECE "
        "| copies found | model used (share outside its domain) | fit seconds |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    h = data["held_out_cuts"]
    lines = [header]
    for model in ("default", "supervised", "self-supervised"):
        lines.append(_row("inshop-women, held-out cuts", model, h[model]))
    for name, rows in data["transfer"].items():
        for model, s in rows.items():
            lines.append(_row(name, model, s))
    table = "\n".join(lines)
    md = (
        "# Adapted features (`dedup fit`)\n\n"
        "Pairwise precision/recall/F1 at the default `--min-confidence`; R@1 in the fused kNN space; ECE of "
        "the pair confidences. *held-out cuts*: supervised model fitted on half of `inshop-women`'s cuts, "
        "measured on the other half; *supervised (inshop-women)*: fitted on all of `inshop-women`, measured on "
        "sets it never saw; *self-supervised*: fitted on the set's own photos without labels. Fit seconds "
        "with the embeddings already cached (a cold fit adds a run's embedding time). A model is not used on a "
        "collection of which more than half lies outside the photos it was fitted on (`--force-model` "
        "overrides; `dedup.adapt.MAX_OUT_OF_DOMAIN`).\n\n" + table + "\n"
    )
    if "sweep" in data:
        md += (
            "\n## Whitening dimensions and shrinkage (supervised, held-out cuts)\n\n"
            "| dim | shrinkage | R@1 | P | R | F1 | best F1 at P >= 0.95 |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {s['dim']} | {s['shrinkage']} | {s['recall_at_1']:.3f} | {s['precision']:.3f} | "
                f"{s['recall']:.3f} | {s['f1']:.3f} | {s['best_f1_at_precision_0.95']} |"
                for s in data["sweep"]
            )
            + "\n"
        )
    if "prior_sweep" in data:
        md += (
            "\n## Prior strength of the refitted pair model (held-out-cut model)\n\n"
            "Pairwise P / R / F1 at the default confidence; 0 = no prior (plain logistic regression).\n\n"
            "| prior strength | held-out cuts | edited-ukbench | ukbench-dev |\n|---|---|---|---|\n"
            + "\n".join(
                f"| {r['prior_strength']:g} | "
                + " | ".join(
                    f"{r[k]['precision']:.3f} / {r[k]['recall']:.3f} / {r[k]['f1']:.3f}"
                    for k in ("held-out cuts", "edited-ukbench", "ukbench-dev")
                )
                + " |"
                for r in data["prior_sweep"]
            )
            + "\n"
        )
    md += f"\nMachine: {data['machine']}\n"
    write("adapt", data, md)
    if "--readme" in args:
        replace_readme_block("ADAPT-TABLE", table)


if __name__ == "__main__":
    main()
