"""Seller edits as image augmentations: crop, pad, watermark, mirror, rotate,
JPEG re-encode, colour jitter.

A marketplace re-upload of a product photo is rarely byte-identical: sellers
crop, pad to square, stamp a watermark, mirror, rotate a little, re-encode and
tweak colours. :data:`EDITS` holds one function per edit kind (each takes a
PIL RGB image and a seeded ``numpy.random.Generator``; the same seed gives
the same pixels). They serve twice: ``dedup fit --self-supervised``
(:mod:`dedup.adapt`) learns from augmented views of the user's own photos
which differences are edits, and ``benchmarks/edits.py`` builds the
edited-copy benchmark sets from them (with other seeds).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps


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
    return im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))


def jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 30-60, after a resize to 60-90 %."""
    f = rng.uniform(0.6, 0.9)
    im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.BILINEAR)
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
