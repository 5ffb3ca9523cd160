"""Colour evidence: a foreground colour histogram in CIELAB.

Pooled CNN features are largely colour-blind (ImageNet training augments
colour), so a red and a blue shirt of one cut look alike to them. This
descriptor lets grouping tell colour variants apart.

Descriptor: the image is shrunk to 64 x 64, converted sRGB -> CIELAB (D65,
the standard formulas of CIE 15:2004), near-white background pixels
(L* > 92 and chroma < 6, a white studio sweep) are dropped when they are not
the whole image, and the rest is binned jointly in 3 L* x 6 a* x 6 b* bins
(108 bins, soft-assigned by linear interpolation so a small shift does not
jump a bin), plus an 8-bin histogram of L* alone. Each histogram is
normalised to sum 1 and stored as its square root, so that the Euclidean
distance between two descriptors divided by sqrt(2) is the Hellinger
distance between the histograms, in [0, 1].

:func:`colour_distance` compares the joint histograms, except when either
image is achromatic (a greyscale copy, a black or white product: at least
97 % of its foreground mass in the four central a*/b* bins); then only the
L* histograms are compared, because hue carries no evidence there. A
greyscale copy of a photo thus matches its original, while a black dress
still differs from the same dress in red (different lightness).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

L_BINS, A_BINS, B_BINS = 3, 6, 6
JOINT = L_BINS * A_BINS * B_BINS
L_ONLY = 8
#: Length of a colour descriptor.
DIM = JOINT + L_ONLY
#: Share of foreground mass in the central a*/b* bins that makes an image achromatic.
ACHROMATIC_SHARE = 0.97
_AB_RANGE = 80.0  # a*, b* clipped to [-80, 80]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB -> ``(..., 3)`` float32 CIELAB (L* 0..100, a*/b* about -128..127)."""
    c = rgb.astype(np.float32) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]], np.float32)
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1).astype(np.float32)


def _soft_bin(x: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation assignment of values to ``n`` bin centres."""
    pos = np.clip((x - lo) / (hi - lo) * n - 0.5, 0, n - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = pos - i0
    return i0, i1, 1.0 - w1


def colour_descriptor(image: Image.Image) -> np.ndarray:
    """The colour descriptor of an RGB image.

    Returns:
        ``(116,)`` float32: the square root of a normalised 108-bin joint
        L*a*b* histogram, then the square root of an 8-bin L* histogram
        (each part has unit L2 norm).
    """
    rgb = np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR))
    lab = srgb_to_lab(rgb).reshape(-1, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    fg = ~((lab[:, 0] > 92) & (chroma < 6))
    if fg.sum() >= 0.05 * len(lab):
        lab = lab[fg]
    li = _soft_bin(lab[:, 0], 0, 100, L_BINS)
    ai = _soft_bin(np.clip(lab[:, 1], -_AB_RANGE, _AB_RANGE), -_AB_RANGE, _AB_RANGE, A_BINS)
    bi = _soft_bin(np.clip(lab[:, 2], -_AB_RANGE, _AB_RANGE), -_AB_RANGE, _AB_RANGE, B_BINS)
    hist = np.zeros(JOINT, np.float64)
    for lx, lw in ((li[0], li[2]), (li[1], 1 - li[2])):
        for ax, aw in ((ai[0], ai[2]), (ai[1], 1 - ai[2])):
            for bx, bw in ((bi[0], bi[2]), (bi[1], 1 - bi[2])):
                np.add.at(hist, (lx * A_BINS + ax) * B_BINS + bx, lw * aw * bw)
    hist /= max(hist.sum(), 1e-12)
    lum = np.histogram(np.clip(lab[:, 0], 0, 100), bins=L_ONLY, range=(0, 100))[0].astype(np.float64)
    lum /= max(lum.sum(), 1e-12)
    return np.sqrt(np.concatenate([hist, lum])).astype(np.float32)


_CENTRAL = np.zeros((L_BINS, A_BINS, B_BINS), bool)
_CENTRAL[:, A_BINS // 2 - 1:A_BINS // 2 + 1, B_BINS // 2 - 1:B_BINS // 2 + 1] = True
_CENTRAL = _CENTRAL.reshape(-1)


def is_achromatic(desc: np.ndarray) -> np.ndarray:
    """Whether descriptors (rows) are achromatic; ``(..., 116)`` -> ``(...)`` bool."""
    desc = np.asarray(desc)
    return (desc[..., :JOINT][..., _CENTRAL] ** 2).sum(axis=-1) >= ACHROMATIC_SHARE


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Colour distance between descriptors (rows, broadcast), in [0, 1].

    Hellinger distance of the joint L*a*b* histograms, or of the L*
    histograms alone when either side is achromatic (see module docstring).
    """
    a, b = np.asarray(a), np.asarray(b)
    joint = hellinger(a[..., :JOINT], b[..., :JOINT])
    lum = hellinger(a[..., JOINT:], b[..., JOINT:])
    return np.where(is_achromatic(a) | is_achromatic(b), lum, joint).astype(np.float32)


def hellinger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hellinger distance between descriptors (rows), in [0, 1].

    Args:
        a, b: ``(m, k)`` or ``(k,)`` float32 square-rooted histograms
            (broadcast row-wise).
    """
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1) / np.sqrt(2.0)
