"""Colour evidence: a fine foreground colour histogram in CIELAB.

Pooled CNN features are largely colour-blind (ImageNet training augments
colour), so a red and a blue shirt of one cut look alike to them, while the
views of one product share its colour exactly. This descriptor lets the
nearest-neighbour search and the pair decision tell colour variants apart.

Descriptor: the image is shrunk to 64 x 64 and converted sRGB -> CIELAB (D65,
the standard formulas of CIE 15:2004). The background is the colour of the
image border (the median L*a*b* of the outermost pixel ring, a studio sweep
or a white page); pixels within Delta E*ab 10 of it are dropped unless that
leaves under 5 % of the image. The rest is binned jointly in 6 L* x 12 a* x
12 b* bins (a* and b* clipped to [-45, 45], 7.5 units a bin, so black and
navy, or grey and beige, fall in different bins), soft-assigned by trilinear
interpolation so a small shift does not jump a bin. The histogram is
normalised to sum 1 and stored as its square root: the dot product of two
descriptors is the Bhattacharyya coefficient and their Euclidean distance
divided by sqrt(2) is the Hellinger distance, in [0, 1].

The bin counts, the clipping range and the border background were chosen by
nearest-neighbour recall@1 on ``inshop-women`` (0.30 for the CNN embedding
alone, 0.58 with the previous 3 x 6 x 6 near-white-background histogram,
0.84 with this one, fused as in :func:`dedup.grouping.fused_vectors`), with
no loss on ``ukbench-dev``. Every colour is compared in full: a grey garment
no longer matches any colour of similar lightness, and a greyscale copy of a
colour photo counts as a different colour (it is, for a retailer).

Colour layout (:func:`colour_features`): the same foreground split into
:data:`LAYOUT_BANDS` horizontal bands of its bounding box, top to bottom,
each with its own coarse 3 L* x 6 a* x 6 b* histogram. A product's views
share their layout (the top's colour above the trousers' colour, front or
back), while a colour variant worn with the same outfit differs in one band
only: one band in four moves the whole-image histogram little, but that
band's distance fully. Its pair evidence (:func:`layout_distances`, the mean
and the largest band distance) raised the recall of ``inshop-women``'s
same-product pairs at pair precision 0.98, on cuts held out of the fit,
from 0.32 to 0.40 (``benchmarks/calibrate.py``), and the default run's
pairwise precision there from 0.971 to 0.981 (``benchmarks/run_all.py``);
3, 6 or 8 bands and 4 x 8 x 8 bins measured within 0.03 of that. Fused
into the kNN search as well it did not raise R@1 (0.836 -> at most 0.835),
so it is pair evidence only. Bands are
mirror-invariant, as a mirrored copy must be. Stored as uint8 (the square
root of each band's histogram times 255): 432 bytes an image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

L_BINS, A_BINS, B_BINS = 6, 12, 12
#: Length of a colour descriptor.
DIM = L_BINS * A_BINS * B_BINS
#: a* and b* are clipped to [-AB_RANGE, AB_RANGE].
AB_RANGE = 45.0
#: Delta E*ab from the border colour under which a pixel is background.
BACKGROUND_DELTA_E = 10.0
_SIDE = 64
#: Horizontal bands of the colour layout, and each band's L* x a* x b* bins.
LAYOUT_BANDS = 4
_LAYOUT_BINS = (3, 6, 6)
#: Length of a colour layout (uint8).
LAYOUT_DIM = LAYOUT_BANDS * _LAYOUT_BINS[0] * _LAYOUT_BINS[1] * _LAYOUT_BINS[2]
#: Length of the stored form (:func:`pack`): descriptor then layout, float32.
STORED_DIM = DIM + LAYOUT_DIM


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB -> ``(..., 3)`` float32 CIELAB (L* 0..100, a*/b* about -128..127)."""
    c = rgb.astype(np.float32) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
        np.float32,
    )
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1).astype(np.float32)


def _soft_bin(x: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear-interpolation assignment of values to ``n`` bin centres:
    the lower bin index and the weight of the next bin."""
    pos = np.clip((x - lo) / (hi - lo) * n - 0.5, 0, n - 1)
    i0 = np.floor(pos).astype(np.int64)
    return i0, pos - i0


def foreground_mask(lab: np.ndarray) -> np.ndarray:
    """Pixels that are not background.

    Args:
        lab: ``(h, w, 3)`` float32 CIELAB image.

    Returns:
        ``(h * w,)`` bool, True for foreground; all True when the border
        colour covers more than 95 % of the image (a plain or tiny image).
    """
    ring = np.concatenate([lab[0], lab[-1], lab[1:-1, 0], lab[1:-1, -1]])
    ref = np.median(ring, axis=0)
    fg = np.linalg.norm(lab.reshape(-1, 3) - ref, axis=1) > BACKGROUND_DELTA_E
    if fg.sum() < 0.05 * fg.size:
        fg[:] = True
    return fg


def _histograms(
    lab: np.ndarray, bins: tuple[int, int, int], group: np.ndarray | None = None, groups: int = 1
) -> np.ndarray:
    """Soft (trilinear) joint L* x a* x b* histograms of ``(m, 3)`` CIELAB
    pixels, a*/b* clipped to +-:data:`AB_RANGE`, one per pixel group.

    Args:
        lab: ``(m, 3)`` pixels; bins: ``(nl, na, nb)``.
        group: ``(m,)`` int group of each pixel in ``[0, groups)``
            (``None``: all in group 0).

    Returns:
        ``(groups, nl * na * nb)`` float64, each row summing to 1 (all zero
        for a group with no pixels). The eight corner weights of every pixel
        go into one ``np.bincount``.
    """
    nl, na, nb = bins
    size = nl * na * nb
    l0, lw = _soft_bin(lab[:, 0], 0, 100, nl)
    a0, aw = _soft_bin(np.clip(lab[:, 1], -AB_RANGE, AB_RANGE), -AB_RANGE, AB_RANGE, na)
    b0, bw = _soft_bin(np.clip(lab[:, 2], -AB_RANGE, AB_RANGE), -AB_RANGE, AB_RANGE, nb)
    offset = 0 if group is None else np.asarray(group, np.int64) * size
    idx, wts = [], []
    for dl in (0, 1):
        for da in (0, 1):
            for db in (0, 1):
                wts.append((lw if dl else 1 - lw) * (aw if da else 1 - aw) * (bw if db else 1 - bw))
                idx.append(
                    (np.minimum(l0 + dl, nl - 1) * na + np.minimum(a0 + da, na - 1)) * nb
                    + np.minimum(b0 + db, nb - 1)
                    + offset
                )
    hist = np.bincount(np.concatenate(idx), weights=np.concatenate(wts), minlength=groups * size)
    hist = hist.reshape(groups, size)
    total = hist.sum(axis=1, keepdims=True)
    return np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)


def _shrunk_lab(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The image shrunk to ``_SIDE`` x ``_SIDE``, in CIELAB ``(side, side, 3)``
    float32, and its ``(side, side)`` bool foreground mask."""
    rgb = np.asarray(image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.BILINEAR))
    lab = srgb_to_lab(rgb)
    return lab, foreground_mask(lab).reshape(_SIDE, _SIDE)


def _descriptor(lab: np.ndarray, fg: np.ndarray) -> np.ndarray:
    return np.sqrt(_histograms(lab[fg], (L_BINS, A_BINS, B_BINS))[0]).astype(np.float32)


def _layout(lab: np.ndarray, fg: np.ndarray) -> np.ndarray:
    rows = np.nonzero(fg.any(axis=1))[0]
    top, bottom = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, _SIDE)
    # band k holds rows top + (bottom - top) * k // BANDS up to the next band's first
    starts = [top + (bottom - top) * k // LAYOUT_BANDS for k in range(LAYOUT_BANDS)]
    band = np.searchsorted(np.array(starts[1:]), np.arange(lab.shape[0]), side="right")
    inside = fg & ((np.arange(lab.shape[0]) >= top) & (np.arange(lab.shape[0]) < bottom))[:, None]
    group = np.broadcast_to(band[:, None], fg.shape)[inside]
    hists = _histograms(lab[inside], _LAYOUT_BINS, group, LAYOUT_BANDS)
    return np.round(np.sqrt(hists).ravel() * 255).astype(np.uint8)


def colour_features(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The colour descriptor and the colour layout of an image (any mode;
    converted to RGB), from one shrunk copy.

    Returns:
        ``(descriptor, layout)``: ``(DIM,)`` = ``(864,)`` float32, the square
        root of a normalised 6 x 12 x 12 L*a*b* foreground histogram (unit L2
        norm); ``(LAYOUT_DIM,)`` = ``(432,)`` uint8, per band (top first) the
        square root of its normalised 3 x 6 x 6 histogram times 255 (a band
        with no foreground is all 0).
    """
    lab, fg = _shrunk_lab(image)
    return _descriptor(lab, fg), _layout(lab, fg)


def colour_descriptor(image: Image.Image) -> np.ndarray:
    """The colour descriptor alone (see :func:`colour_features`; no layout
    computed): ``(DIM,)`` float32, unit L2 norm."""
    return _descriptor(*_shrunk_lab(image))


def pack(descriptor: np.ndarray, layout: np.ndarray) -> np.ndarray:
    """The stored form of an image's colour evidence (cache and Spark
    features table): ``(STORED_DIM,)`` float32, the descriptor then the
    layout's values."""
    return np.concatenate([np.asarray(descriptor, np.float32), np.asarray(layout, np.float32)])


def unpack(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(descriptor float32, layout uint8)`` from :func:`pack`'s output, or
    ``None`` when it was stored by another descriptor version (another
    length): the image is then decoded again."""
    stored = np.asarray(stored, np.float32)
    if stored.shape != (STORED_DIM,):
        return None
    return stored[:DIM].copy(), np.clip(np.round(stored[DIM:]), 0, 255).astype(np.uint8)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hellinger distance between colour descriptors (rows, broadcast), in [0, 1].

    Args:
        a, b: ``(..., DIM)`` float32 descriptors from :func:`colour_descriptor`.

    Returns:
        ``(...)`` float32; 0 for the same colour distribution, 1 for disjoint ones.
    """
    return hellinger(np.einsum("...k,...k->...", np.asarray(a, np.float32), np.asarray(b, np.float32)))


def hellinger(bc: np.ndarray) -> np.ndarray:
    """Hellinger distance ``sqrt(1 - BC)`` from Bhattacharyya coefficients (the
    dot products of two descriptors), float32 in [0, 1], any shape."""
    return np.sqrt(np.clip(1.0 - np.asarray(bc), 0.0, 1.0)).astype(np.float32)


def layout_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band-by-band Hellinger distances of colour layouts (rows, broadcast).

    Args:
        a, b: ``(..., LAYOUT_DIM)`` uint8 layouts from :func:`colour_features`.

    Returns:
        ``(mean, max)`` over the bands, each ``(...)`` float32 in [0, 1]. A
        band empty in one image and not in the other counts 1; empty in both, 0.
    """
    fa = np.asarray(a, np.float32).reshape(*np.shape(a)[:-1], LAYOUT_BANDS, -1)
    fb = np.asarray(b, np.float32).reshape(*np.shape(b)[:-1], LAYOUT_BANDS, -1)
    bc = np.einsum("...k,...k->...", fa, fb) / np.float32(255 * 255)
    d = np.sqrt(np.clip(1.0 - bc, 0.0, 1.0))
    ea, eb = ~fa.any(axis=-1), ~fb.any(axis=-1)
    d = np.where(ea & eb, 0.0, np.where(ea | eb, 1.0, d)).astype(np.float32)
    return d.mean(axis=-1), d.max(axis=-1)
