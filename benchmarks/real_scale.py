"""A real-image run at 60k+ images: memory through decoding and embedding stays flat in n.

The largest real folder the shared sets give: every photo of ukbench-dev,
inshop-women, products-flipkart and robustness, plus ``--crops``
deterministic crops of each (70-95% of each side at a seeded offset, saved
as JPEG quality 90; built once under benchmarks/.cache/real-scale). Each size
runs in a fresh process (so its peak resident memory is its own): the whole
``Deduplicator.run``, cold (no cache), without geometric verification
(RootSIFT on every candidate pair of 60k images would take hours on two
cores; ``benchmarks/scale.py`` times the other stages at 1M). The grouping is
scored against the shared labels (a crop belongs to its photo's product).

    python benchmarks/real_scale.py [--crops 26] [--n 6000 --n 20000 --n 0] [--readme]

``--n 0`` means every image. Writes benchmarks/results/real_scale.{md,json};
with --readme, the REAL-SCALE-TABLE block of README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, ROOT, machine, replace_readme_block, write  # noqa: E402

SETS = ("ukbench-dev", "inshop-women", "products-flipkart", "robustness")
FOLDER = ROOT / "benchmarks" / ".cache" / "real-scale"


def build(crops: int) -> pd.DataFrame:
    """The folder of photos and crops (made once); returns its ``path, group`` labels."""
    labels_csv = FOLDER / f"labels-{crops}.csv"
    if labels_csv.is_file():
        return pd.read_csv(labels_csv)
    rows = []
    for name in SETS:
        labels = pd.read_csv(BENCH / name / "labels.csv")
        for k, (rel, group) in enumerate(zip(labels.path, labels.group)):
            try:
                with Image.open(BENCH / name / rel) as im:
                    im = im.convert("RGB")
            except OSError:
                continue  # the robustness set's deliberately broken file
            out = FOLDER / name / f"{k:05d}"
            out.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([k, len(name)])
            for c in range(crops + 1):
                if c == 0:
                    img = im
                else:
                    fw, fh = rng.uniform(0.70, 0.95, 2)
                    w, h = max(16, int(im.width * fw)), max(16, int(im.height * fh))
                    x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
                    img = im.crop((x, y, x + w, y + h))
                path = out / f"{c:02d}.jpg"
                img.save(path, quality=90)
                rows.append((path.relative_to(FOLDER).as_posix(), f"{name}:{group}"))
    df = pd.DataFrame(rows, columns=["path", "group"])
    tmp = labels_csv.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(labels_csv)
    return df


def one(n: int, crops: int) -> dict:
    """One run on the first ``n`` images (0: all) in this process; its figures."""
    from dedup.evaluate import pairwise_scores
    from dedup.pipeline import Deduplicator

    labels = build(crops)
    if n:
        labels = labels.iloc[np.sort(np.random.default_rng(0).choice(len(labels), n, replace=False))]
    t = time.perf_counter()
    dd = Deduplicator(backbones="efficientnet-lite0", cache=False, verify=False, progress=False)
    result = dd.run(FOLDER, files=list(labels.path))
    secs = time.perf_counter() - t
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    pw = pairwise_scores(result.groups.group.to_numpy(), truth)
    dims = sum(E.shape[1] for E in result.embeddings.values())
    return {
        "n": int(len(result.groups)),
        "seconds": round(secs, 1),
        "images_per_second": round(len(result.groups) / secs, 1),
        "stage_seconds": result.meta["seconds"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "embedding_matrix_gib": round(len(result.groups) * dims * 4 / 2**30, 3),
        "pairwise": {k: round(float(pw[k]), 3) for k in ("precision", "recall", "f1")},
        "groups": int(result.groups.group.nunique()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=26)
    ap.add_argument("--n", type=int, action="append", default=None)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--readme", action="store_true")
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.crops)))
        return
    total = len(build(args.crops))
    rows = []
    for n in args.n or [6_000, 20_000, 0]:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--crops", str(args.crops)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    m = machine()
    lines = [
        "| images | whole run | images/second | decode + embed | index | group | peak memory | embeddings "
        "(n x d floats) | peak minus embeddings | pairwise P / R |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["stage_seconds"]
        lines.append(
            f"| {r['n']:,} | {r['seconds']:.0f} s | {r['images_per_second']:.1f} | {s['decode_embed']:.0f} s | "
            f"{s.get('index', 0):.0f} s | {s.get('group', 0):.0f} s | {r['peak_rss_gib']:.2f} GiB | "
            f"{r['embedding_matrix_gib']:.2f} GiB | {r['peak_rss_gib'] - r['embedding_matrix_gib']:.2f} GiB | "
            f"{r['pairwise']['precision']:.3f} / {r['pairwise']['recall']:.3f} |"
        )
    table = "\n".join(lines) + f"\n\n{total:,} images in all; {m['cores']} cores, {m['date']}."
    md = (
        "# A real-image run at 60k+ images\n\nSee `benchmarks/real_scale.py`: the shared sets' photos plus "
        f"{args.crops} deterministic crops of each; each size a fresh process, cold, without geometric "
        "verification; pairwise precision/recall against the shared labels (a crop belongs to its photo's "
        "product).\n\n" + table + "\n"
    )
    write("real_scale", {"machine": m, "crops": args.crops, "rows": rows}, md)
    if args.readme:
        replace_readme_block("REAL-SCALE-TABLE", table)


if __name__ == "__main__":
    main()
