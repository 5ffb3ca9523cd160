"""Run `python -m dedup bench` on every labelled set in ../shared/bench and
write the table to benchmarks/results/bench_sets.{md,json}; with --readme,
also replace the table between the BENCH-TABLE markers in README.md.

    python benchmarks/run_all.py [--readme] [-- extra run options]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH, ROOT, machine, replace_readme_block, write


def main() -> None:
    args = sys.argv[1:]
    readme = "--readme" in args
    extra = [a for a in args if a not in ("--readme", "--")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for labels in sorted(BENCH.glob("*/labels.csv")):
            out = Path(tmp) / labels.parent.name
            cmd = [sys.executable, "-m", "dedup", "bench", str(labels), "--out", str(out), "--quiet",
                   "--no-cache", *extra]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bench failed on {labels}: {proc.stderr}")
            d = json.loads((out / "bench.json").read_text())
            rows.append({k: d[k] for k in ("dataset", "images", "true_groups", "predicted_groups", "pairwise",
                                           "bcubed", "ari", "ns_score", "images_per_second_end_to_end",
                                           "backbones", "best_cutoff_after_the_fact", "per_stage", "seconds")})
    lines = ["| dataset | images | true groups | predicted groups | pairwise P | pairwise R | pairwise F1 "
             "| B-cubed F1 | N-S (max 4) | images/s | backbones |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pw = r["pairwise"]
        lines.append(f"| {r['dataset']} | {r['images']} | {r['true_groups']} | {r['predicted_groups']} | "
                     f"{pw['precision']:.3f} | {pw['recall']:.3f} | {pw['f1']:.3f} | {r['bcubed']['f1']:.3f} | "
                     f"{r['ns_score']:.3f} | {r['images_per_second_end_to_end']} | {', '.join(r['backbones'])} |")
    table = "\n".join(lines)
    m = machine()
    md = (f"# dedup bench on every set in ../shared/bench\n\nDefault settings, cold run (no cache), "
          f"{m['cores']} CPU cores, {m['date']}. Produced by `python benchmarks/run_all.py`.\n\n{table}\n")
    write("bench_sets", {"machine": m, "extra_options": extra, "rows": rows}, md)
    if readme:
        replace_readme_block("BENCH-TABLE", table)


if __name__ == "__main__":
    main()
