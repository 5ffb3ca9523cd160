"""The report of ``python -m dedup bench``, beside the run's own files:

* ``bench.json``: the metrics of :func:`dedup.evaluate.run_bench` (the final
  grouping's pairwise, B-cubed and N-S scores, nearest-neighbour recall@1 in
  the colour-fused space, the expected calibration error of the pair
  confidences, copies found per edit kind, images joined per stage, the
  precision/recall sweep over ``--min-confidence``, speed, backbones);
* ``bench.md``: the same as tables a person reads;
* ``sweep.png``: pairwise precision / recall / F1 against ``--min-confidence``,
  the default marked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .files import atomic_write
from .plots import plot_sweep

BENCH_JSON = "bench.json"

BENCH_MD = "bench.md"

SWEEP_PNG = "sweep.png"


#: Column heads of :func:`view_cells`' rows.
VIEW_COLUMNS = (
    "views",
    "same-product pairs",
    "candidates",
    "confident",
    "to review",
    "joined",
    "recall",
    "false joins",
)


def view_cells(recall_by_view: dict) -> list[list[str]]:
    """The cells of the recall-by-views table, one row per pair of views, in
    :data:`VIEW_COLUMNS` order, from :func:`dedup.evaluate.recall_by_view`'s
    output ("-" for a count it did not make, or a recall without pairs)."""
    return [
        [
            k,
            str(v["pairs"]),
            str(v.get("candidates", "-")),
            str(v.get("confident", "-")),
            str(v.get("to_review", "-")),
            str(v["joined"]),
            "-" if v["recall"] is None else f"{v['recall']:.3f}",
            str(v["false_joins"]),
        ]
        for k, v in recall_by_view.items()
    ]


def bench_markdown(d: dict) -> str:
    """``bench.md``: the headline metrics, per-stage numbers and the sweep."""
    pw, b3 = d["pairwise"], d["bcubed"]
    ns = "n/a" if d["ns_score"] is None else f"{d['ns_score']:.3f}"
    lines = [
        f"# Benchmark: {d['dataset']}",
        "",
        f"Backbones: {', '.join(d['backbones'])} ({d['backbone_selection']})",
        "",
        "| images | true groups | predicted groups | pairwise P | pairwise R | pairwise F1 | B-cubed F1 | ARI "
        "| N-S (max 4) | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {d['images']} | {d['true_groups']} | {d['predicted_groups']} | {pw['precision']:.3f} "
        f"| {pw['recall']:.3f} | "
        f"{pw['f1']:.3f} | {b3['f1']:.3f} | {d['ari']:.3f} | {ns} | {d['images_per_second_end_to_end']} |",
        "",
        f"Missing from groups.csv (skipped or unreadable): {d['missing']}; expected skips: {d['expected_skipped']} "
        f"(of which read anyway: {d['expected_skipped_but_grouped']}).",
        "",
        f"Nearest-neighbour recall@1: {d['recall_at_1']} with each image's candidates ranked by pair "
        f"confidence, {d.get('recall_at_1_fused')} in the colour-fused kNN space; expected calibration error of "
        f"the pair confidences: {d['calibration_ece']}; doubtful pairs in review.csv: {d['pairs_to_review']}.",
        "",
        "Images joined per stage: " + ", ".join(f"{k} {v}" for k, v in d["joined_by_stage"].items()) + ".",
        "",
    ]
    if "copies_found_by_edit" in d:
        lines += ["## Edited copies found", "", "| edit | copies | found | share |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {v['copies']} | {v['found']} | {v['share']:.3f} |" for k, v in d["copies_found_by_edit"].items()
        ]
        lines.append("")
    if "recall_by_view" in d:
        lines += [
            "## Pairwise recall by pair of views",
            "",
            "Same-product pairs of images with these views, how many were candidate pairs, how many of those "
            "the pair model gave the join confidence or sent to review, and how many ended in one group; false "
            "joins: pairs of different products with these views put in one group.",
            "",
            "| " + " | ".join(VIEW_COLUMNS) + " |",
            "|---" * len(VIEW_COLUMNS) + "|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in view_cells(d["recall_by_view"])]
        lines.append("")
    lines += [
        "## Precision/recall against --min-confidence",
        "",
        "| min confidence | precision | recall | F1 | B-cubed F1 | groups |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["sweep"]:
        mark = " **default**" if r["default"] else ""
        lines.append(
            f"| {r['min_confidence']:.3f}{mark} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['f1']:.3f} | {r['bcubed_f1']:.3f} | {r['predicted_groups']} |"
        )
    return "\n".join(lines) + "\n"


def write_bench(data: dict, sweep: pd.DataFrame, default: float, out: str | os.PathLike) -> Path:
    """Write ``bench.json``, ``bench.md`` and ``sweep.png`` into ``out`` (each atomically).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.
    """
    out = Path(out)
    text = json.dumps(data, indent=2, default=str)
    atomic_write(out / BENCH_JSON, lambda p: p.write_text(text, encoding="utf-8"))
    atomic_write(out / BENCH_MD, lambda p: p.write_text(bench_markdown(data), encoding="utf-8"))
    plot_sweep(sweep, default, out / SWEEP_PNG, title=data["dataset"])
    return out
