"""A photo under thousands of SKUs: what a run costs when one picture is
most of the catalogue.

Catalogues fill products without a photo with one "no image" placeholder:
the same file under every such SKU (byte copies), or the picture saved again
by each upload path (other bytes, one pHash). The run treats byte copies as
one row of the search, of the pHash pass and of a person's decisions, pairs
more than ``dedup.hashing.MAX_SAME_PHASH`` contents of one pHash with the
first of them only, and shows a huge group's first
``dedup.report.gallery.MAX_GROUP_THUMBS`` thumbnails. This script measures a
cold run of the CLI on 40 ukbench-dev photos beside

* ``copies``: a placeholder under N SKUs, byte for byte;
* ``versions``: the placeholder as N PNG files of other bytes (one pixel
  differs each), all with one pHash;

reporting seconds, peak resident memory (the CLI's process), groups and the
gallery's size, each in a fresh process with its own cache.

    python benchmarks/placeholder.py [--readme]

Writes benchmarks/results/placeholder.{md,json}.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH, machine, replace_readme_block, write
from PIL import Image, ImageDraw

#: (case, number of placeholder files)
CASES = (("copies", 20_000), ("versions", 3_000))
PHOTOS = 40

_RUN = """
import json, resource, sys, time
from pathlib import Path
from dedup.job import run_job
from dedup.pipeline import Deduplicator
t = time.perf_counter()
res = run_job(Deduplicator(backbones="efficientnet-lite0", cache=sys.argv[3], progress=False), sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - t
g = res.result.groups
print(json.dumps({"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "images": len(g), "groups": int((g.group_size > 1).groupby(g.group).any().sum()),
                  "largest_group": int(g.group_size.max()), "joined_by": res.result.meta["counts"]["joined_by_stage"]}))
"""


def placeholder(i: int | None) -> Image.Image:
    """The "no image" picture; ``i``: which pixel differs (other bytes, the same pHash)."""
    im = Image.new("RGB", (300, 300), (240, 240, 240))
    ImageDraw.Draw(im).text((100, 140), "no image", fill=(120, 120, 120))
    if i is not None:
        im.putpixel((i % 300, i // 300 % 300), (200, 240, 240))
    return im


def build(folder: Path, case: str, n: int) -> None:
    """The catalogue: the first PHOTOS ukbench-dev photos and ``n`` placeholder files."""
    pics = folder / "pics"
    pics.mkdir(parents=True)
    for p in sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))[:PHOTOS]:
        shutil.copyfile(p, pics / p.name)
    if case == "copies":
        placeholder(None).save(folder / "placeholder.jpg", quality=90)
        for i in range(n):
            shutil.copyfile(folder / "placeholder.jpg", pics / f"sku{i:05d}.jpg")
    else:
        for i in range(n):
            placeholder(i).save(pics / f"sku{i:05d}.png")


def main() -> None:
    readme = "--readme" in sys.argv[1:]
    rows = []
    for case, n in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            build(folder, case, n)
            proc = subprocess.run(
                [sys.executable, "-c", _RUN, str(folder / "pics"), str(folder / "out"), str(folder / "cache.sqlite")],
                capture_output=True,
                text=True,
                check=True,
            )
            row = {"case": case, "placeholder_files": n, **json.loads(proc.stdout.strip().splitlines()[-1])}
            row["gallery_mib"] = sum(p.stat().st_size for p in (folder / "out").glob("gallery*.html")) / 2**20
            rows.append(row)
            print(row, flush=True)
    table = [
        "| case | placeholder files | images | seconds | peak memory | groups | largest group | gallery |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        what = "byte copies" if r["case"] == "copies" else "other bytes, one pHash"
        table.append(
            f"| {what} | {r['placeholder_files']:,} | {r['images']:,} | {r['seconds']:.1f} s | "
            f"{r['peak_rss_gib']:.2f} GiB | {r['groups']} | {r['largest_group']:,} | {r['gallery_mib']:.2f} MiB |"
        )
    text = "\n".join(table)
    md = (
        "# A photo under thousands of SKUs\n\nProduced by `python benchmarks/placeholder.py`: a cold CLI run "
        f"(`dedup.job.run_job`) on {PHOTOS} ukbench-dev photos beside a placeholder picture, each case in its own "
        f"process.\n\n{text}\n\nMachine: {machine()}\n"
    )
    write("placeholder", {"machine": machine(), "rows": rows}, md)
    if readme:
        replace_readme_block("PLACEHOLDER-TABLE", text)


if __name__ == "__main__":
    main()
