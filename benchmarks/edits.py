"""Seller edits and the edited-copy benchmark sets, built deterministically
from the shared photos.

A marketplace re-upload of a product photo is rarely byte-identical: sellers
crop, pad to square, stamp a watermark, mirror, rotate a little, re-encode and
tweak colours. :data:`EDITS` holds one function per edit kind (each takes a
PIL RGB image and a seeded ``numpy.random.Generator``), and
:func:`build_edited_set` writes a labelled set (``labels.csv``: ``path, group,
edit``) in which every original photo has one edited copy, next to
look-alikes that must stay apart:

* ``edited-inshop``: one photo of every colour variant of 120 inshop-women
  cuts (same cut, other colour: different products), each with an edited copy.
* ``edited-ukbench``: the first photo of each of the 150 ukbench-dev objects,
  each with an edited copy.

    python benchmarks/edits.py          # writes benchmarks/.cache/sets/edited-*/

Used by ``benchmarks/calibrate.py``, ``benchmarks/precision.py`` and the tests
(which build a small version in a temporary folder).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
SETS = ROOT / "benchmarks" / ".cache" / "sets"


def crop(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep a random 80-92 % of each side, placed at random."""
    f = rng.uniform(0.80, 0.92)
    w, h = round(im.width * f), round(im.height * f)
    x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    return im.crop((x, y, x + w, y + h))


def pad(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Pad to a square 1.1-1.3 times the longer side, white or light grey."""
    side = round(max(im.size) * rng.uniform(1.1, 1.3))
    grey = int(rng.choice([255, 245, 235]))
    out = Image.new("RGB", (side, side), (grey, grey, grey))
    out.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return out


def watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Semi-transparent shop-name text stamped across the lower half."""
    im = im.convert("RGBA")
    layer = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(12, im.width // 9)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    text = str(rng.choice(["SALE -50%", "myshop.example", "BEST PRICE", "(c) SELLER 24"]))
    x, y = int(rng.integers(0, max(1, im.width // 4))), int(im.height * rng.uniform(0.5, 0.8))
    draw.text((x, y), text, fill=(255, 255, 255, 170), font=font, stroke_width=2, stroke_fill=(0, 0, 0, 170))
    return Image.alpha_composite(im, layer).convert("RGB")


def mirror(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Left-right mirror."""
    return ImageOps.mirror(im)


def rotate(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate 2-6 degrees either way, corners filled white."""
    angle = float(rng.uniform(2, 6) * rng.choice([-1, 1]))
    return im.rotate(angle, resample=Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))


def jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 30-60, after a resize to 60-90 %."""
    f = rng.uniform(0.6, 0.9)
    im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(30, 61)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def jitter(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mild colour jitter: brightness, contrast and saturation each x0.85-1.15."""
    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enh(im).enhance(float(rng.uniform(0.85, 1.15)))
    return im


#: One function per edit kind, ``(image, rng) -> image``.
EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": crop,
    "pad": pad,
    "watermark": watermark,
    "mirror": mirror,
    "rotate": rotate,
    "jpeg": jpeg,
    "jitter": jitter,
}
#: Pairs of edits applied one after the other.
PAIRS = [("crop", "jitter"), ("pad", "watermark"), ("mirror", "jpeg"), ("rotate", "crop"), ("jitter", "pad")]
#: Every edit kind of the sets: the single edits, then the pairs as ``a+b``.
KINDS = list(EDITS) + [f"{a}+{b}" for a, b in PAIRS]


def apply_edit(im: Image.Image, kind: str, seed: int) -> Image.Image:
    """Apply edit ``kind`` (a key of :data:`EDITS` or ``"a+b"``) with a fixed seed.

    Raises:
        KeyError: unknown edit kind.
    """
    rng = np.random.default_rng(seed)
    for part in kind.split("+"):
        im = EDITS[part](im.convert("RGB"), rng)
    return im


def _pick_inshop(n_cuts: int, seed: int) -> pd.DataFrame:
    lab = pd.read_csv(BENCH / "inshop-women" / "labels.csv")
    per_cut = lab.groupby("cut").group.nunique()
    cuts = sorted(per_cut[per_cut >= 2].index)
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(cuts, size=min(n_cuts, len(cuts)), replace=False))
    sub = lab[lab.cut.isin(cuts)].copy()
    sub["front"] = sub.view.eq("front")
    # one photo per product: its front view when it has one
    return sub.sort_values(["group", "front", "path"], ascending=[True, False, True]).groupby("group").head(1)


def _pick_ukbench(n: int) -> pd.DataFrame:
    lab = pd.read_csv(BENCH / "ukbench-dev" / "labels.csv")
    return lab.sort_values("path").groupby("group").head(1).head(n)


def build_edited_set(name: str, out: Path | None = None, n: int | None = None, seed: int = 0) -> Path:
    """Write an edited-copy set: the originals, one edited copy each, ``labels.csv``.

    Args:
        name: ``"edited-inshop"`` or ``"edited-ukbench"``.
        out: folder to write (default ``benchmarks/.cache/sets/NAME``).
        n: number of cuts (inshop, default 120) or objects (ukbench, default 150).
        seed: the seed of every random choice; the same seed gives the same files.

    Returns:
        The set's folder (``images/`` and ``labels.csv`` with ``path, group,
        edit``; ``edit`` is empty for originals).

    Raises:
        ValueError: unknown set name.
    """
    if name == "edited-inshop":
        src, picked = BENCH / "inshop-women", _pick_inshop(n or 120, seed)
    elif name == "edited-ukbench":
        src, picked = BENCH / "ukbench-dev", _pick_ukbench(n or 150)
    else:
        raise ValueError(f"unknown edited set {name!r}")
    out = Path(out) if out is not None else SETS / name
    done = out / "labels.csv"
    if done.is_file() and len(pd.read_csv(done)) == 2 * len(picked):
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, r in enumerate(picked.itertuples()):
        stem = f"{k:04d}"
        im = Image.open(src / r.path).convert("RGB")
        im.save(out / "images" / f"{stem}.jpg", quality=95)
        kind = KINDS[k % len(KINDS)]
        apply_edit(im, kind, seed * 100003 + k).save(out / "images" / f"{stem}-x.jpg", quality=90)
        rows += [(f"images/{stem}.jpg", r.group, ""), (f"images/{stem}-x.jpg", r.group, kind)]
    tmp = out / "labels.csv.tmp"
    pd.DataFrame(rows, columns=["path", "group", "edit"]).to_csv(tmp, index=False)
    tmp.replace(done)
    return out


if __name__ == "__main__":
    for set_name in ("edited-inshop", "edited-ukbench"):
        print(build_edited_set(set_name))
