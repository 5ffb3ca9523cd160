"""Make the pictures the README shows (docs/*.jpg) from real runs.

* query-content.jpg / query-style.jpg: one query each against the
  products-flipkart photos plus fabric crops, with the top 5 results.
* map.jpg, dendrogram.jpg: `run --method hierarchical --sim 0.7 --map` on
  ukbench-dev.
* gallery.jpg: the HTML gallery of that run in headless Chromium.

    python benchmarks/readme_pictures.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH, ROOT
from PIL import Image, ImageDraw

from dedup.query import Searcher

DOCS = ROOT / "docs"
FK = BENCH / "products-flipkart" / "images"


def crop(path, box):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    return im.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))


def montage(query, results, title, path):
    cell = 170
    canvas = Image.new("RGB", (cell * (len(results) + 1), cell + 40), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black")
    items = [(query, "query")] + results
    for k, (im, label) in enumerate(items):
        im = im.copy()
        im.thumbnail((cell - 10, cell - 30))
        canvas.paste(im, (k * cell + 5, 22))
        draw.text((k * cell + 5, cell + 12), label, fill="black")
    canvas.save(path, quality=85)


def cli(*args):
    subprocess.run([sys.executable, "-m", "dedup", *args, "--quiet"], cwd=ROOT, check=True, capture_output=True)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cat = tmp / "catalogue"
        shutil.copytree(FK, cat)
        blue = sorted(FK.glob("free-hm-kash-*"))
        for k, p in enumerate(blue[1:]):
            crop(p, (0.40, 0.55, 0.62, 0.80)).save(cat / f"blue-fabric-{k}.jpg", quality=95)
        for mode in ("content", "style"):
            cli("run", str(cat), "--out", str(tmp / mode), "--similarity", mode)
        queries = {
            "content": Image.open(FK / "m-rs19stkt-b-rope-original-imafeeugebf5nghr.jpeg")
            .convert("RGB")
            .transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            "style": crop(blue[0], (0.40, 0.55, 0.62, 0.80)),
        }
        for mode, q in queries.items():
            res = Searcher(tmp / mode).query([q], n=5)
            results = [
                (Image.open(cat / p).convert("RGB"), f"{r}. d={d:.3f}")
                for r, p, d in zip(res["rank"], res.path, res.distance)
            ]
            what = (
                "content: a mirrored photo of a shirt -> the same shirt"
                if mode == "content"
                else "style: a crop of blue silk -> the same fabric before the same sari shape in orange"
            )
            montage(q, results, what, DOCS / f"query-{mode}.jpg")

        out = tmp / "ukb"
        cli(
            "run",
            str(BENCH / "ukbench-dev" / "images"),
            "--out",
            str(out),
            "--method",
            "hierarchical",
            "--sim",
            "0.7",
            "--map",
        )
        for name in ("map", "dendrogram"):
            im = Image.open(out / f"{name}.png").convert("RGB")
            im.thumbnail((700, 700))
            im.save(DOCS / f"{name}.jpg", quality=85)
        chromium = shutil.which("chromium")
        if chromium:
            shot = tmp / "gallery.png"
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={tmp / 'profile'}",
                    f"--screenshot={shot}",
                    "--window-size=1000,700",
                    (out / "gallery.html").as_uri(),
                ],
                capture_output=True,
            )
            Image.open(shot).convert("RGB").save(DOCS / "gallery.jpg", quality=80)


if __name__ == "__main__":
    main()
