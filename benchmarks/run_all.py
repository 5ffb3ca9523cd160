"""`dedup bench` on every labelled set: the shared sets in ../shared/bench and
the edited-copy sets built by benchmarks/edits.py.

Writes benchmarks/results/bench_sets.{md,json} (the table the README quotes)
and benchmarks/results/precision_recall.png (pairwise precision against
recall over --min-confidence, one curve per set, the default marked); with
--readme, also replaces the table between the BENCH-TABLE markers in README.md.
Embeddings and inlier counts are cached in benchmarks/.cache (delete it for a
cold run; speed is measured by benchmarks/speed.py, not here).

    python benchmarks/run_all.py [--readme]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine, replace_readme_block, write  # noqa: E402
from edits import EDITED_SETS, SHARED_SETS, UPLOAD_SETS, set_folder  # noqa: E402

from dedup.evaluate import run_bench  # noqa: E402
from dedup.pipeline import Deduplicator  # noqa: E402
from dedup.report.bench import VIEW_COLUMNS, view_cells  # noqa: E402

SETS = (*SHARED_SETS, *EDITED_SETS, *UPLOAD_SETS)


def _fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def main() -> None:
    readme = "--readme" in sys.argv[1:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SETS:
            folder = set_folder(name)
            dd = Deduplicator(
                backbones="efficientnet-lite0", cache=ROOT / "benchmarks" / ".cache" / f"{name}.sqlite", progress=False
            )
            rows.append(run_bench(folder / "labels.csv", dd, Path(tmp) / name))
    lines = [
        "| dataset | images | true groups | predicted groups | pairwise P | pairwise R | pairwise F1 "
        "| B-cubed F1 | R@1 (re-ranked) | R@1 (fused kNN) | N-S (max 4) | calibration error (ECE) "
        "| edited copies found (worst kind) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pw = r["pairwise"]
        copies = "-"
        if "copies_found_by_edit" in r:
            c = r["copies_found_by_edit"]
            worst = min((k for k in c if k != "all"), key=lambda k: c[k]["share"])
            copies = f"{c['all']['share']:.3f} ({worst} {c[worst]['share']:.2f})"
        lines.append(
            f"| {r['dataset']} | {r['images']} | {r['true_groups']} | {r['predicted_groups']} | "
            f"{pw['precision']:.3f} | {pw['recall']:.3f} | {pw['f1']:.3f} | {r['bcubed']['f1']:.3f} | "
            f"{_fmt(r['recall_at_1'])} | {_fmt(r['recall_at_1_fused'])} | {_fmt(r['ns_score'])} | "
            f"{r['calibration_ece']:.3f} | {copies} |"
        )
    table = "\n".join(lines)
    curve = [
        "",
        "| dataset | " + " | ".join(f"{s['min_confidence']:.2f}" for s in rows[0]["sweep"]) + " |",
        "|---|" + "---|" * len(rows[0]["sweep"]),
    ]
    for r in rows:
        curve.append(
            f"| {r['dataset']} P/R | "
            + " | ".join(f"{s['precision']:.3f}/{s['recall']:.3f}" for s in r["sweep"])
            + " |"
        )
    views = view_table(rows)
    m = machine()
    md = (
        f"# dedup bench on every labelled set\n\nDefault settings (backbone efficientnet-lite0, the shipped pair "
        f"model), {m['date']}. Produced by `python benchmarks/run_all.py`.\n\n{table}\n\n"
        "## Pairwise precision/recall against --min-confidence\n" + "\n".join(curve) + "\n"
    )
    if views:
        md += "\n## Pairwise recall by pair of views (sets with a `view` column)\n\n" + views + "\n"
    write("bench_sets", {"machine": m, "rows": rows}, md)
    plot(rows, RESULTS / "precision_recall.png")
    if readme:
        replace_readme_block("BENCH-TABLE", table)
        replace_readme_block("PR-TABLE", "\n".join(curve[1:]))
        if views:
            replace_readme_block("VIEW-TABLE", views)


def view_table(rows: list[dict]) -> str:
    """Markdown: for each set whose labels name views, per pair of views the
    same-product pairs, how many were candidates, confident (p >= the join
    threshold) or sent to review, how many ended in one group, and the false
    joins (:func:`dedup.evaluate.recall_by_view`)."""
    lines = []
    for r in rows:
        if "recall_by_view" not in r:
            continue
        if not lines:
            lines = ["| dataset | " + " | ".join(VIEW_COLUMNS) + " |", "|---" * (len(VIEW_COLUMNS) + 1) + "|"]
        lines += [f"| {r['dataset']} | " + " | ".join(cells) + " |" for cells in view_cells(r["recall_by_view"])]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Precision against recall over --min-confidence, one curve per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    for r in rows:
        sw = r["sweep"]
        (line,) = ax.plot([s["recall"] for s in sw], [s["precision"] for s in sw], marker=".", label=r["dataset"])
        d = [s for s in sw if s["default"]][0]
        ax.plot([d["recall"]], [d["precision"]], marker="o", markersize=9, color=line.get_color(), fillstyle="none")
    ax.set_xlabel("pairwise recall")
    ax.set_ylabel("pairwise precision")
    ax.set_title("--min-confidence 0.5 .. 0.99 (circle: default)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
