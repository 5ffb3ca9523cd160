"""``python -m dedup bench``: run the main job on a labelled set and score it.

Writes into OUT, beside the run's own report:

* ``bench.json``: the metrics of :func:`dedup.evaluate.evaluate` for the
  final grouping, nearest-neighbour recall@1 in the colour-fused space, the
  expected calibration error of the pair confidences, copies found per edit
  kind (for sets whose labels have an ``edit`` column), images joined per
  stage, the precision/recall sweep over ``--min-confidence``, speed and the
  backbones used;
* ``bench.md``: the same as tables a person reads;
* ``sweep.png``: pairwise precision / recall / F1 against ``--min-confidence``,
  the default marked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import expected_calibration_error
from .evaluate import evaluate
from .grouping import STAGES
from .report import atomic_write, write_report

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
SWEEP_PNG = "sweep.png"


def read_labels(labels_csv: str | os.PathLike) -> pd.DataFrame:
    """Read a ``path,group`` CSV.

    Raises:
        ValueError: the columns are missing.
    """
    labels = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if not {"path", "group"} <= set(labels.columns):
        raise ValueError(f"{labels_csv}: needs columns path,group (has {list(labels.columns)})")
    return labels


def _labels_frame(result, grouping) -> pd.DataFrame:
    return pd.DataFrame({"path": result.groups.path, "group": grouping.labels})


def run_bench(labels_csv: str | os.PathLike, dedup, out: str | os.PathLike,
              sweep: np.ndarray | None = None, backbones=None) -> dict:
    """Run ``dedup`` on the images of a labelled set, score it, write reports.

    Args:
        labels_csv: a ``path,group`` CSV; paths relative to its folder.
        dedup: a configured :class:`dedup.pipeline.Deduplicator`.
        out: output folder (the run's report and the bench files).
        sweep: ``--min-confidence`` levels for the sweep; default 0.5..0.99 in
            steps of 0.05 plus the configured level.
        backbones: the output of ``dedup.check()`` when already called.

    Returns:
        The dict written to ``bench.json``.
    """
    labels_csv = Path(labels_csv)
    labels = read_labels(labels_csv)
    result = dedup.run(labels_csv.parent, files=list(labels.path), backbones=backbones)
    write_report(result, out)
    out = Path(out)
    emb = result.ensemble_embeddings()
    metrics = evaluate(result.groups, labels, emb, list(result.groups.path))
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    known = pd.notna(truth) & ~pd.Series(truth).astype(str).str.startswith("_").to_numpy()
    metrics["recall_at_1"] = recall_at_1(result.fused_ids, truth, known)
    ij = result.pairs.ij
    same = (truth[ij[:, 0]] == truth[ij[:, 1]]) & known[ij[:, 0]] & known[ij[:, 1]]
    metrics["calibration_ece"] = round(expected_calibration_error(result.confidence, same), 4)
    metrics["pairs_to_review"] = int(len(result.review))
    if "edit" in labels.columns:
        metrics["copies_found_by_edit"] = copies_found(result.groups, labels)

    per_stage = {s: int((result.groups.stage == s).sum()) for s in STAGES}
    levels = np.round(np.arange(0.5, 0.991, 0.05), 4) if sweep is None else np.asarray(sweep, float)
    default = dedup.grouping_params().min_confidence
    levels = np.unique(np.append(levels, default))
    rows = []
    for c in levels:
        g = dedup.regroup(result, min_confidence=float(c), review_confidence=min(float(c), 0.5))
        m = evaluate(_labels_frame(result, g), labels)
        rows.append({"min_confidence": float(c), "precision": m["pairwise"]["precision"],
                     "recall": m["pairwise"]["recall"], "f1": m["pairwise"]["f1"], "bcubed_f1": m["bcubed"]["f1"],
                     "predicted_groups": m["predicted_groups"], "default": bool(np.isclose(c, default))})
    sweep_df = pd.DataFrame(rows)

    secs = result.meta["seconds"]
    n = len(result.groups)
    data = {
        "labels": str(labels_csv),
        "dataset": labels_csv.parent.name,
        **metrics,
        "joined_by_stage": per_stage,
        "sweep": rows,
        "images_per_second_end_to_end": round(n / secs["total"], 2) if secs["total"] else None,
        "images_per_second_inference": result.meta.get("images_per_second_inference"),
        "seconds": secs,
        "backbones": [b["name"] for b in result.meta["backbones"]],
        "backbone_selection": result.meta["backbone_selection"],
        "pair_model": result.meta["pair_model"],
        "settings": result.meta["settings"],
        "counts": result.meta["counts"],
    }
    text = json.dumps(data, indent=2, default=str)
    atomic_write(out / BENCH_JSON, lambda p: p.write_text(text, encoding="utf-8"))
    atomic_write(out / BENCH_MD, lambda p: p.write_text(bench_markdown(data), encoding="utf-8"))
    plot_sweep(sweep_df, default, out / SWEEP_PNG, title=data["dataset"])
    return data


def recall_at_1(fused_ids: np.ndarray, truth: np.ndarray, known: np.ndarray | None = None) -> float | None:
    """Nearest-neighbour recall@1 in the colour-fused space: the share of
    images with at least one other image of their group whose nearest
    neighbour is of their group.

    Args:
        fused_ids: ``(n, k)`` int64 kNN ids, nearest first (the image itself
            may come first and is skipped).
        truth: ``(n,)`` true group per image; known: ``(n,)`` bool, rows to count.

    Returns:
        A share in [0, 1], or ``None`` when no image has a partner.
    """
    truth = pd.Series(truth).astype(str).to_numpy()
    n = len(truth)
    known = np.ones(n, bool) if known is None else np.asarray(known, bool)
    if n == 0 or fused_ids.size == 0:
        return None
    sizes = pd.Series(truth[known]).value_counts()
    has_partner = known & (pd.Series(truth).map(sizes).fillna(0).to_numpy() > 1)
    first = np.where(fused_ids[:, 0] == np.arange(n), fused_ids[:, 1] if fused_ids.shape[1] > 1 else -1,
                     fused_ids[:, 0])
    ok = has_partner & (first >= 0)
    if not ok.any():
        return None
    return round(float((truth[first[ok]] == truth[ok]).mean()), 4)


def copies_found(groups: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """For an edited-copy set (labels with an ``edit`` column): per edit kind,
    the share of copies in the same predicted group as their original.

    Returns:
        ``{kind: {"copies": int, "found": int, "share": float}}`` plus ``"all"``.
    """
    g = groups.set_index("path").group
    lab = labels.copy()
    lab["edit"] = lab["edit"].fillna("").astype(str)
    originals = lab[lab.edit == ""].set_index("group").path
    copies = lab[lab.edit != ""]
    out: dict = {}
    for kind, rows in list(copies.groupby("edit")) + [("all", copies)]:
        found = sum(1 for r in rows.itertuples()
                    if r.group in originals.index and r.path in g.index and originals[r.group] in g.index
                    and g[r.path] == g[originals[r.group]])
        out[str(kind)] = {"copies": int(len(rows)), "found": int(found),
                          "share": round(found / len(rows), 4) if len(rows) else 1.0}
    return out


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


def bench_markdown(d: dict) -> str:
    """``bench.md``: the headline metrics, per-stage numbers and the sweep."""
    pw, b3 = d["pairwise"], d["bcubed"]
    ns = "n/a" if d["ns_score"] is None else f"{d['ns_score']:.3f}"
    lines = [
        f"# Benchmark: {d['dataset']}",
        "",
        f"Backbones: {', '.join(d['backbones'])} ({d['backbone_selection']})",
        "",
        "| images | true groups | predicted groups | pairwise P | pairwise R | pairwise F1 | B-cubed F1 | ARI | N-S (max 4) | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {d['images']} | {d['true_groups']} | {d['predicted_groups']} | {pw['precision']:.3f} | {pw['recall']:.3f} | "
        f"{pw['f1']:.3f} | {b3['f1']:.3f} | {d['ari']:.3f} | {ns} | {d['images_per_second_end_to_end']} |",
        "",
        f"Missing from groups.csv (skipped or unreadable): {d['missing']}; expected skips: {d['expected_skipped']} "
        f"(of which read anyway: {d['expected_skipped_but_grouped']}).",
        "",
        f"Nearest-neighbour recall@1 (colour-fused space): {d['recall_at_1']}; expected calibration error of "
        f"the pair confidences: {d['calibration_ece']}; doubtful pairs in review.csv: {d['pairs_to_review']}.",
        "",
        "Images joined per stage: " + ", ".join(f"{k} {v}" for k, v in d["joined_by_stage"].items()) + ".",
        "",
    ]
    if "copies_found_by_edit" in d:
        lines += ["## Edited copies found", "", "| edit | copies | found | share |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['copies']} | {v['found']} | {v['share']:.3f} |"
                  for k, v in d["copies_found_by_edit"].items()]
        lines.append("")
    lines += [
        "## Precision/recall against --min-confidence",
        "",
        "| min confidence | precision | recall | F1 | B-cubed F1 | groups |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["sweep"]:
        mark = " **default**" if r["default"] else ""
        lines.append(f"| {r['min_confidence']:.3f}{mark} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['f1']:.3f} | {r['bcubed_f1']:.3f} | {r['predicted_groups']} |")
    return "\n".join(lines) + "\n"
