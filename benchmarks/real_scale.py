"""A real-image run at 60k+ images: memory through decoding and embedding stays flat in n.

The largest real folder the shared sets give: every photo of ukbench-dev,
inshop-women, products-flipkart and robustness, plus ``--crops``
deterministic crops of each (70-95% of each side at a seeded offset, saved
as JPEG quality 90; built once under benchmarks/.cache/real-scale). Each size
runs in a fresh process: discovery, hashing, decoding and embedding cold
(``Deduplicator.embed`` writing a fresh cache), its seconds and peak
resident memory (sampled every 10 ms), then the whole ``Deduplicator.run``
warm from that cache, its seconds and peak. No geometric verification
(RootSIFT features of 60k photos, and the matches of the pairs worth
verifying, would add about half an hour on two cores, by ukbench-dev's
rates; ``benchmarks/scale.py`` times the other stages at 1M). The grouping
is scored against the shared labels (a crop belongs to its photo's product).

    python benchmarks/real_scale.py [--crops 26] [--n 6000 --n 20000 --n 0] [--readme]

``--n 0`` means every image. Writes benchmarks/results/real_scale.{md,json};
with --readme, the REAL-SCALE-TABLE block of README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, ROOT, machine, replace_readme_block, write  # noqa: E402
from scale import Peak  # noqa: E402

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
    """One size in this process: the first ``n`` images (0: all), cold
    through decoding and embedding (``Deduplicator.embed``, writing a fresh
    cache), then the whole run warm from that cache; seconds and peak
    resident memory of each."""
    from dedup.evaluate import pairwise_scores
    from dedup.pipeline import Deduplicator

    labels = build(crops)
    if n:
        labels = labels.iloc[np.sort(np.random.default_rng(0).choice(len(labels), n, replace=False))]
    files = list(labels.path)
    with tempfile.TemporaryDirectory(dir=FOLDER.parent) as tmp:
        cache = Path(tmp) / "cache.sqlite"
        dd = Deduplicator(backbones="efficientnet-lite0", cache=cache, verify=False, progress=False)
        nets = dd.check()
        with Peak() as cold:
            embedded = dd.embed(FOLDER, files=files, backbones=nets)
        count = len(embedded.paths)
        del embedded
        with Peak() as warm:
            result = dd.run(FOLDER, files=files, backbones=nets)
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    pw = pairwise_scores(result.groups.group.to_numpy(), truth)
    dims = sum(E.shape[1] for E in result.embeddings.values())
    secs = result.meta["seconds"]
    return {
        "n": int(count),
        "cold_embed_seconds": round(cold.seconds, 1),
        "images_per_second": round(count / cold.seconds, 1),
        "cold_embed_peak_gib": round(cold.peak / 2**30, 2),
        "warm_run_seconds": round(warm.seconds, 1),
        "warm_run_peak_gib": round(warm.peak / 2**30, 2),
        "stage_seconds": secs,
        "embedding_matrix_gib": round(count * dims * 4 / 2**30, 3),
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
        "| images | decode + embed, cold | images/second | its peak memory | embeddings (n x d floats) "
        "| whole run, warm from the cache | its peak memory | pairwise P / R |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['cold_embed_seconds']:.0f} s | {r['images_per_second']:.1f} | "
            f"{r['cold_embed_peak_gib']:.2f} GiB | {r['embedding_matrix_gib']:.2f} GiB | "
            f"{r['warm_run_seconds']:.0f} s | {r['warm_run_peak_gib']:.2f} GiB | "
            f"{r['pairwise']['precision']:.3f} / {r['pairwise']['recall']:.3f} |"
        )
    table = "\n".join(lines) + f"\n\n{total:,} images in all; {m['cores']} cores, {m['date']}."
    md = (
        "# A real-image run at 60k+ images\n\nSee `benchmarks/real_scale.py`: the shared sets' photos plus "
        f"{args.crops} deterministic crops of each; each size a fresh process: decoding and embedding cold "
        "(writing a fresh cache), then the whole run warm from it, without geometric verification; pairwise "
        "precision/recall against the shared labels (a crop belongs to its photo's product).\n\n" + table + "\n"
    )
    write("real_scale", {"machine": m, "crops": args.crops, "rows": rows}, md)
    if args.readme:
        replace_readme_block("REAL-SCALE-TABLE", table)


if __name__ == "__main__":
    main()
