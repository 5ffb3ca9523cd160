"""``python -m dedup bench``: run the main job on a labelled set and score it.

Writes into OUT, beside the run's own report:

* ``bench.json``: the metrics of :func:`dedup.evaluate.evaluate` for the
  final grouping, per stage (exact pass alone, and what the embedding stage
  added), the cutoff sweep, speed and the backbones used;
* ``bench.md``: the same as tables a person reads;
* ``sweep.png``: pairwise precision / recall / F1 against ``--cutoff``, the
  default marked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .evaluate import evaluate
from .report import write_report

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
        sweep: cutoffs (contextual distance) for the sweep; default 0.3..1.2 in steps of 0.05
            plus the configured cutoff.
        backbones: the output of ``dedup.check()`` when already called.

    Returns:
        The dict written to ``bench.json``.
    """
    labels_csv = Path(labels_csv)
    labels = read_labels(labels_csv)
    result = dedup.run(labels_csv.parent, files=list(labels.path), backbones=backbones)
    write_report(result, out)
    out = Path(out)
    n = len(result.groups)
    emb = result.ensemble_embeddings()
    metrics = evaluate(result.groups, labels, emb, list(result.groups.path))

    # Per stage: the exact pass alone, then what embeddings added.
    exact_only = dedup.regroup(n, result.pairs.subset(np.zeros(len(result.pairs.ij), bool)),
                               result.exact_pairs, result.colours, list(result.embeddings.values()))
    exact_metrics = evaluate(_labels_frame(result, exact_only), labels)
    per_stage = {
        "exact_pass": {"images_joined": int(np.isin(result.groups.stage, ["sha256", "phash"]).sum()),
                       "predicted_pairs": exact_metrics["pairwise"]["predicted_pairs"],
                       "pairwise_precision": exact_metrics["pairwise"]["precision"],
                       "pairwise_recall": exact_metrics["pairwise"]["recall"]},
        "embedding_stage_added": {
            "images_joined": int(np.isin(result.groups.stage, ["embedding", "verified", "fallback"]).sum()),
            "predicted_pairs": metrics["pairwise"]["predicted_pairs"] - exact_metrics["pairwise"]["predicted_pairs"],
            "true_pairs_added": metrics["pairwise"]["tp_pairs"] - exact_metrics["pairwise"]["tp_pairs"],
        },
    }

    cutoffs = np.round(np.arange(0.3, 1.201, 0.05), 4) if sweep is None else np.asarray(sweep, float)
    cutoffs = np.unique(np.append(cutoffs, dedup.cutoff))
    rows = []
    for c in cutoffs:
        g = dedup.regroup_result(result, cutoff=float(c))
        m = evaluate(_labels_frame(result, g), labels)
        rows.append({"cutoff": float(c), "precision": m["pairwise"]["precision"], "recall": m["pairwise"]["recall"],
                     "f1": m["pairwise"]["f1"], "bcubed_f1": m["bcubed"]["f1"],
                     "predicted_groups": m["predicted_groups"], "default": bool(np.isclose(c, dedup.cutoff))})
    sweep_df = pd.DataFrame(rows)

    secs = result.meta["seconds"]
    data = {
        "labels": str(labels_csv),
        "dataset": labels_csv.parent.name,
        **metrics,
        "per_stage": per_stage,
        "sweep": rows,
        "best_cutoff_after_the_fact": float(sweep_df.loc[sweep_df.f1.idxmax(), "cutoff"]),
        "images_per_second_end_to_end": round(n / secs["total"], 2) if secs["total"] else None,
        "images_per_second_inference": result.meta.get("images_per_second_inference"),
        "seconds": secs,
        "backbones": [b["name"] for b in result.meta["backbones"]],
        "backbone_selection": result.meta["backbone_selection"],
        "settings": result.meta["settings"],
        "counts": result.meta["counts"],
    }
    (out / BENCH_JSON).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    (out / BENCH_MD).write_text(bench_markdown(data), encoding="utf-8")
    plot_sweep(sweep_df, dedup.cutoff, out / SWEEP_PNG, title=data["dataset"])
    return data


def plot_sweep(sweep: pd.DataFrame, default: float, path: str | os.PathLike, title: str = "") -> None:
    """Pairwise P/R/F1 against the cutoff as a PNG, the default as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for col in ("precision", "recall", "f1"):
        ax.plot(sweep.cutoff, sweep[col], label=col, marker=".")
    ax.axvline(default, color="k", linestyle="--", linewidth=1, label=f"default {default:g}")
    ax.set_xlabel("cutoff (contextual ensemble distance)")
    ax.set_ylabel("pairwise score")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"cutoff sweep {title}".strip())
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
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
        "## Per stage",
        "",
        f"- exact pass (SHA-256 + pHash): {d['per_stage']['exact_pass']['images_joined']} images joined, "
        f"{d['per_stage']['exact_pass']['predicted_pairs']} pairs, pairwise precision "
        f"{d['per_stage']['exact_pass']['pairwise_precision']:.3f}",
        f"- embedding stage added: {d['per_stage']['embedding_stage_added']['predicted_pairs']} pairs, "
        f"{d['per_stage']['embedding_stage_added']['true_pairs_added']} of them true",
        "",
        "## Cutoff sweep",
        "",
        f"Best cutoff after the fact: {d['best_cutoff_after_the_fact']:g} (not used: defaults are not tuned per set).",
        "",
        "| cutoff | precision | recall | F1 | B-cubed F1 | groups |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["sweep"]:
        mark = " **default**" if r["default"] else ""
        lines.append(f"| {r['cutoff']:.3f}{mark} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['bcubed_f1']:.3f} | {r['predicted_groups']} |")
    return "\n".join(lines) + "\n"
