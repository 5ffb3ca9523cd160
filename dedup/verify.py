"""Geometric verification of candidate pairs with local features.

After Philbin et al., "Object retrieval with large vocabularies and fast
spatial matching" (CVPR 2007): two photos of the same object share many local
features whose positions agree with one geometric transform. Here: SIFT
keypoints (Lowe, IJCV 2004; OpenCV, patent-free since 4.4) with RootSIFT
descriptors (Arandjelovic and Zisserman, CVPR 2012: L1-normalise, square
root), Lowe's ratio test (0.8) on the two nearest matches (found by one
matrix product, :func:`two_nearest`), then a RANSAC homography; the score
is the number of inlier matches. The second image is
also matched mirrored, and the larger count is kept, so a mirrored re-upload
verifies like any copy (RANSAC is skipped for an orientation whose
ratio-test matches are fewer than the other's inliers: it cannot win, so
the count is the same). The mirrored features are not detected again: each
keypoint is reflected and its descriptor's bins permuted
(:func:`mirror_features`; a reflection reorders SIFT's cells and
orientation bins, as analysed by Guo et al., "MIFT", ACCV 2010, and Zhao
and Ngo, "F-SIFT", IEEE TIP 2013), which halves the feature cost; measured
against SIFT computed on the flipped image at the reflected keypoints, the
mean cosine is 0.99.

Not every candidate pair is worth verifying: :func:`worth_verifying` picks
those whose decision verification can change, neither a clear "different
product" nor a clear "same product" without it (chosen by
``benchmarks/verify_screen.py``: on every labelled set the groups are the
same as with every pair verified).

An edited copy (crop, pad, watermark, rotation, re-encoding) keeps dozens to
hundreds of inliers; a look-alike of the same kind keeps few. A colour
variant shot in the same pose (same model, same studio) can keep many, since
SIFT sees only greyscale: so once a homography aligns the pair, the two
images' CIELAB colours are compared pixel by pixel over the first image's
foreground (at 96 px), and the share of pixels differing by more than Delta
E*ab 25 (a clearly visible colour change; mild brightness, contrast or
saturation edits stay under it) is the pair's colour mismatch. Absence of
inliers is weak evidence (a garment's front and back share no features): the
pair model (:mod:`dedup.calibration`) weighs it with everything else.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable

import numpy as np
from PIL import Image

#: Longest side of the greyscale image keypoints are taken from, in pixels.
MAX_SIDE = 480
#: Longest side of the colour image compared after alignment, in pixels.
COLOUR_SIDE = 96
#: Delta E*ab above which an aligned pixel counts as a different colour.
MISMATCH_DELTA_E = 25.0
#: Fewest RANSAC inliers for a homography trusted for the colour comparison.
MIN_ALIGN_INLIERS = 12
#: :func:`worth_verifying`: a pair is verified when the pair model for
#: unverified evidence gives it at least this P(same product) ...
SCREEN_MIN_CONFIDENCE = 0.05
#: ... or when it is among either image's this many nearest candidates by
#: ensemble distance (an edited copy whose colours were changed scores low
#: without verification but stays near) ...
SCREEN_NEAREST = 3
#: ... or when its ensemble cosine distance is at most this: many
#: near-identical photos of one product crowd each other's neighbourhoods,
#: so that without verification each pair looks ordinary and scores low.
#: The three chosen by ``benchmarks/verify_screen.py``: the cheapest setting
#: of its grid whose groups equal those of verifying every pair on every
#: labelled set and on its crowd set (one pair's decision differs, in the
#: 25-photo robustness set: a greyscale and a rotated copy of one photo,
#: which verification would send to review at p 0.63, stay apart).
SCREEN_MAX_DISTANCE = 0.20
#: ... but never when the pair model for unverified evidence already gives
#: it at least this P(same product): the pair joins on that evidence, and
#: on the labelled sets verifying such pairs changed no decision (join,
#: review or apart) at the default thresholds. Verifying it would cost the
#: RootSIFT features of both photos, which dominate verification
#: (``benchmarks/speed.py``). Chosen by ``benchmarks/verify_screen.py``,
#: one step of its grid more cautious than the lowest setting whose
#: decisions and groups equal those of the lower screen alone on every
#: labelled set and on its crowd set (0.98; at 0.95, 16 more pairs of
#: inshop-women change their decision). On ukbench-dev, 75 % of the photos
#: then need RootSIFT features instead of all.
SCREEN_MAX_CONFIDENCE = 0.99

#: :func:`mirror_features`: where each of the 128 RootSIFT bins goes when
#: the image is mirrored. OpenCV's descriptor is 4 x 4 spatial cells (in the
#: keypoint's rotated frame) x 8 orientation bins; a reflection reverses the
#: cells' order along the frame's first axis and negates the relative
#: orientation (bin ``o`` -> ``-o mod 8``). Found by search over the 32
#: reflections and rotations of the grid and bins: the best match to SIFT
#: computed on the flipped image at the reflected keypoints (cosine 0.99;
#: the next best 0.59-0.71, on photos of three shared sets).
_MIRROR = np.arange(128).reshape(4, 4, 8)[::-1][:, :, (-np.arange(8)) % 8].ravel()


def mirror_features(points: np.ndarray, descriptors: np.ndarray | None, width: int):
    """The features of the mirrored (left-right flipped) image, from the
    image's own: keypoints reflected, descriptors' bins permuted.

    Args:
        points: ``(k, 2)`` float32 keypoint positions ``(x, y)`` in pixels.
        descriptors: ``(k, 128)`` float32 SIFT or RootSIFT (an element-wise
            map of SIFT, so permuting commutes with it), or ``None``.
        width: the image's width in pixels.

    Returns:
        ``(points, descriptors)`` of the flipped image, same shapes and dtypes:
        ``x -> width - 1 - x``.
    """
    flipped = np.array(points, np.float32, copy=True).reshape(-1, 2)
    flipped[:, 0] = np.float32(width - 1) - flipped[:, 0]
    return flipped, None if descriptors is None else np.ascontiguousarray(descriptors[:, _MIRROR])


def two_nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``a``'s two nearest rows of ``b`` by Euclidean distance:
    what Lowe's ratio test needs.

    One matrix product (BLAS) and two arg-extrema over it: the same
    neighbours as OpenCV's ``BFMatcher.knnMatch(k=2)`` / ``cv2.batchDistance``
    (distances within 1e-4 on RootSIFT) at a fraction of the time on 300-500
    descriptors a side (measured by ``benchmarks/speed.py``), since
    ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` turns the search into a GEMM.

    Args:
        a: ``(k, d)`` float32 descriptors; b: ``(n, d)`` float32, ``n >= 2``.

    Returns:
        ``(distance, nearest)``: ``(k, 2)`` float64 distances to the nearest
        and second nearest row of ``b`` (ascending), and ``(k,)`` int64 index
        of the nearest.

    Raises:
        ValueError: ``b`` has fewer than two rows, or the widths differ.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if b.ndim != 2 or a.ndim != 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"two_nearest: shapes {a.shape} and {b.shape} (b needs two rows and a's width)")
    # Ranking by |b|^2 - 2 a.b orders each row of a's neighbours by distance
    # exactly (|a|^2 is the same along the row).
    score = (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    rows = np.arange(len(a))
    first = score.argmin(axis=1)
    best = score[rows, first].astype(np.float64)
    score[rows, first] = np.inf
    second = score.min(axis=1).astype(np.float64)
    norm = (a.astype(np.float64) ** 2).sum(axis=1)
    dist = np.sqrt(np.maximum(np.stack([best, second], axis=1) + norm[:, None], 0.0))
    return dist, first.astype(np.int64)


def worth_verifying(
    ij: np.ndarray,
    distance: np.ndarray,
    p_unverified: np.ndarray,
    min_confidence: float = SCREEN_MIN_CONFIDENCE,
    nearest: int = SCREEN_NEAREST,
    max_distance: float = SCREEN_MAX_DISTANCE,
    max_confidence: float = SCREEN_MAX_CONFIDENCE,
) -> np.ndarray:
    """Which candidate pairs geometric verification is spent on.

    A pair is worth verifying when, without verification, it is not already
    a clear "different product" (``p_unverified >= min_confidence``), when
    it is among the ``nearest`` candidates of either of its images by
    ensemble distance, or when that distance is at most ``max_distance``;
    and in every case only if it is not already a clear "same product"
    (``p_unverified < max_confidence``). The others keep their unverified
    confidence: below the review threshold, or at least ``max_confidence``.
    Verification rarely turns a pair of the first kind into a join, or a
    pair of the second kind into anything else, and never did on the
    labelled sets at the defaults (``benchmarks/verify_screen.py``).

    Args:
        ij: ``(m, 2)`` int64 candidate pairs.
        distance: ``(m,)`` ensemble cosine distance of each pair, [0, 2].
        p_unverified: ``(m,)`` P(same product) from the pair model for
            unverified evidence (:meth:`dedup.calibration.PairModel.load`
            with ``verified=False``).
        min_confidence: in [0, 1]; nearest: >= 0; max_distance: in [0, 2]
            (negative: none by distance alone); max_confidence: in [0, 1]
            (above 1: no pair is skipped as a clear "same product").

    Returns:
        ``(m,)`` bool mask.

    Raises:
        ValueError: the arrays' lengths differ.
    """
    ij = np.asarray(ij, np.int64).reshape(-1, 2)
    distance, p_unverified = np.asarray(distance, np.float64), np.asarray(p_unverified, np.float64)
    if not len(ij) == len(distance) == len(p_unverified):
        raise ValueError(
            f"worth_verifying: {len(ij)} pairs, {len(distance)} distances, {len(p_unverified)} confidences"
        )
    keep = (p_unverified >= min_confidence) | (distance <= max_distance)
    if nearest > 0 and len(ij):
        image = np.concatenate([ij[:, 0], ij[:, 1]])  # each pair once under each of its images
        row = np.tile(np.arange(len(ij)), 2)
        order = np.lexsort((row, np.tile(distance, 2), image))  # by image, then nearest first
        first = np.r_[True, image[order[1:]] != image[order[:-1]]]
        starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        keep[row[order[np.arange(len(order)) - starts < nearest]]] = True
    return keep & (p_unverified < max_confidence)


class GeometricVerifier:
    """Count RANSAC-consistent RootSIFT matches for image pairs, mirror included.

    Args:
        load: ``i -> PIL.Image`` for image index ``i`` (any mode).
        n_features: SIFT keypoints per image (strongest first).
        ratio: Lowe's ratio-test threshold.
        reprojection_px: RANSAC inlier threshold in pixels at ``MAX_SIDE``.

        max_images: images whose features are kept at once (least recently
            used dropped first): memory stays under about ``max_images`` x
            0.5 MB (2 x 500 x 128 float32 per image) at any catalogue size.
            Pairs are verified grouped by their first image, so most
            features are reused while they are kept.
        threads: threads computing features and matching pairs (default:
            the CPU count, at most 8).
    """

    def __init__(
        self,
        load: Callable[[int], Image.Image],
        n_features: int = 500,
        ratio: float = 0.8,
        reprojection_px: float = 5.0,
        max_images: int = 2048,
        threads: int | None = None,
    ):
        self.load = load
        self.n_features = n_features
        self.ratio = ratio
        self.reprojection_px = reprojection_px
        self.max_images = max_images
        self.threads = threads or min(8, os.cpu_count() or 1)
        self._feats: OrderedDict[int, list[tuple[np.ndarray, np.ndarray | None]]] = OrderedDict()
        self._lab: dict[int, tuple[np.ndarray, np.ndarray, int] | None] = {}
        self.pairs_checked = 0
        #: scale of the greyscale image SIFT detects on, relative to ``MAX_SIDE``
        #: (1: as loaded). Smaller is cheaper (OpenCV doubles the image for
        #: SIFT's first octave, so 0.5 skips that octave's cost) but finds
        #: fewer inliers: ``benchmarks/sift_scale.py`` measured 0.7 and 0.5
        #: worse on held-out cuts, so runs keep 1 (the pair model is fitted on it).
        self.sift_scale = 1.0
        #: show a tqdm bar in :meth:`__call__`
        self.progress = False

    @property
    def method_id(self) -> str:
        """Identifies the settings, so that cached inlier counts are reused only for the same method."""
        scale = "" if self.sift_scale == 1 else f"-siftscale{self.sift_scale:g}"
        return (
            f"rootsift{self.n_features}-mirrorbins-ratio{self.ratio}-ransac{self.reprojection_px}-side{MAX_SIDE}"
            f"{scale}-lab{COLOUR_SIDE}de{MISMATCH_DELTA_E}"
        )

    def _features(self, i: int):
        """Image ``i``'s keypoints and RootSIFT descriptors (as it is and
        mirrored), computed once and kept while recently used."""
        if i in self._feats:
            self._feats.move_to_end(i)
        else:
            self._keep(i, self._compute(i))
        return self._feats[i]

    def _keep(self, i: int, computed) -> None:
        """Store :meth:`_compute`'s result, dropping the least recently used beyond ``max_images``."""
        while len(self._feats) >= max(2, self.max_images):
            old, _ = self._feats.popitem(last=False)
            self._lab.pop(old, None)
        self._feats[i], self._lab[i] = computed

    def _compute(self, i: int):
        """``(features, colour)`` of image ``i``; touches no shared state (runs in threads).

        features: ``[(points, descriptors)]`` for the image and its mirror
        (``(k, 2)`` float32 pixel positions at ``MAX_SIDE``, ``(k, 128)``
        float32 RootSIFT or ``None``); colour: ``(lab, foreground mask,
        width)`` at ``COLOUR_SIDE``, or ``None`` when unreadable."""
        import cv2

        from .colour import foreground_mask, srgb_to_lab

        try:
            rgb = self.load(i).convert("RGB")
            s = MAX_SIDE / max(rgb.size)
            if s < 1:
                rgb = rgb.resize(
                    (max(1, round(rgb.width * s)), max(1, round(rgb.height * s))), Image.Resampling.BILINEAR
                )
            a = np.asarray(rgb.convert("L"))
            c = COLOUR_SIDE / max(rgb.size)
            small = rgb.resize((max(2, round(rgb.width * c)), max(2, round(rgb.height * c))), Image.Resampling.BILINEAR)
            lab = srgb_to_lab(np.asarray(small))
            colour = (lab, foreground_mask(lab).reshape(lab.shape[:2]), a.shape[1])
            g, f = a, self.sift_scale
            if f != 1:
                g = cv2.resize(
                    a, (max(1, round(a.shape[1] * f)), max(1, round(a.shape[0] * f))), interpolation=cv2.INTER_AREA
                )
            sift = cv2.SIFT_create(nfeatures=self.n_features)  # type: ignore[attr-defined]
            kp, des = sift.detectAndCompute(g, None)
            if des is None or len(kp) == 0:
                return [(np.zeros((0, 2), np.float32), None)] * 2, colour
            des = np.sqrt(des / (des.sum(axis=1, keepdims=True) + 1e-7)).astype(np.float32)
            pts = np.array([k.pt for k in kp], np.float32).reshape(-1, 2)
            if f != 1:  # back to the positions at MAX_SIDE (pixel centres), where RANSAC's tolerance is set
                pts = ((pts + 0.5) / np.float32(f) - 0.5).astype(np.float32)
            return [(pts, des), mirror_features(pts, des, a.shape[1])], colour
        except Exception:  # noqa: BLE001 - an unreadable image verifies nothing
            return [(np.zeros((0, 2), np.float32), None)] * 2, None

    def _ratio_matches(self, a, b) -> tuple[np.ndarray, np.ndarray] | None:
        """The matches of features ``a`` to ``b`` that pass Lowe's ratio test, as
        ``(source points, destination points)``, or ``None`` when fewer than 5."""
        (pa, da), (pb, db) = a, b
        if da is None or db is None or len(da) < 5 or len(db) < 5:
            return None
        d, nearest = two_nearest(da, db)
        good = np.nonzero(d[:, 0] < self.ratio * d[:, 1])[0]
        if len(good) < 5:
            return None
        return pa[good], pb[nearest[good]]

    def _ransac(self, matches) -> tuple[int, np.ndarray | None]:
        """``(inliers, homography)`` of RANSAC on :meth:`_ratio_matches`' output (0 and ``None`` without one)."""
        import cv2

        if matches is None:
            return 0, None
        H, mask = cv2.findHomography(matches[0], matches[1], cv2.RANSAC, self.reprojection_px)
        return (int(mask.sum()), H) if mask is not None else (0, None)

    def _mismatch(self, i: int, j: int, H: np.ndarray, mirrored: bool) -> float:
        """Share of i's foreground whose colour differs from j's aligned pixel (-1 if not comparable)."""
        li, lj = self._lab.get(i), self._lab.get(j)
        if li is None or lj is None:
            return -1.0
        (lab_a, fg_a, wa), (lab_b, _, wb) = li, lj
        ha, wa_s = fg_a.shape
        sa, sb = wa_s / wa, lab_b.shape[1] / wb  # keypoint pixels -> colour-grid pixels
        ys, xs = np.nonzero(fg_a)
        pts = np.stack([(xs + 0.5) / sa, (ys + 0.5) / sa, np.ones(len(xs))])
        q = H @ pts
        with np.errstate(divide="ignore", invalid="ignore"):
            xb, yb = q[0] / q[2], q[1] / q[2]
        if mirrored:
            xb = wb - xb
        xb, yb = np.floor(xb * sb).astype(np.int64, copy=False), np.floor(yb * sb).astype(np.int64, copy=False)
        ok = (xb >= 0) & (yb >= 0) & (xb < lab_b.shape[1]) & (yb < lab_b.shape[0])
        if ok.sum() < 0.2 * max(len(xs), 1):
            return -1.0
        diff = np.linalg.norm(lab_a[ys[ok], xs[ok]] - lab_b[yb[ok], xb[ok]], axis=1)
        return float((diff > MISMATCH_DELTA_E).mean())

    def inliers(self, i: int, j: int) -> tuple[int, float]:
        """``(inliers, mismatch)`` between images ``i`` and ``j``: RANSAC
        homography inliers (0 if too few matches), the better of ``j`` as it
        is and mirrored, and the colour mismatch after alignment in [0, 1]
        (``-1`` when fewer than ``MIN_ALIGN_INLIERS`` support the homography)."""
        i, j = int(i), int(j)
        self._features(i), self._features(j)
        self.pairs_checked += 1
        return self._pair(i, j)

    def _best_orientation(self, m0, m1) -> tuple[int, np.ndarray | None, bool, int]:
        """``(inliers, homography, mirrored, RANSAC calls)`` of the better of
        the two orientations' :meth:`_ratio_matches` (``m0`` as it is, ``m1``
        mirrored; a tie keeps ``m0``).

        RANSAC's inliers are a subset of the ratio-test matches, so an
        orientation with fewer matches than the other's inliers cannot win:
        its RANSAC is skipped (the same result, ties included, as running both)."""
        g0, g1 = (0 if m is None else len(m[0]) for m in (m0, m1))
        if g0 >= g1:
            n0, H0 = self._ransac(m0)
            run_other = m1 is not None and g1 > n0
            n1, H1 = self._ransac(m1) if run_other else (0, None)
            calls = (m0 is not None) + run_other
        else:
            n1, H1 = self._ransac(m1)
            run_other = m0 is not None and g0 >= n1
            n0, H0 = self._ransac(m0) if run_other else (0, None)
            calls = (m1 is not None) + run_other
        return (n0, H0, False, calls) if n0 >= n1 else (n1, H1, True, calls)

    def _pair(self, i: int, j: int) -> tuple[int, float]:
        """:meth:`inliers` on features already kept (reads shared state only: runs in threads)."""
        fa, fb = self._feats[i], self._feats[j]
        n, H, mirrored, _ = self._best_orientation(self._ratio_matches(fa[0], fb[0]), self._ratio_matches(fa[0], fb[1]))
        if n < MIN_ALIGN_INLIERS or H is None:
            return n, -1.0
        return n, self._mismatch(i, j, H, mirrored)

    def _chunk(self, ij: np.ndarray, ex) -> np.ndarray:
        """Verify ``(c, 2)`` pairs whose images fit in ``max_images``: features first, then matches."""
        need = [int(i) for i in dict.fromkeys(ij.ravel().tolist())]
        for i in need:
            if i in self._feats:
                self._feats.move_to_end(i)  # kept: the oldest are dropped first, never these
        missing = [i for i in need if i not in self._feats]
        for i, computed in zip(missing, ex.map(self._compute, missing)):
            self._keep(i, computed)
        found = list(ex.map(lambda p: self._pair(int(p[0]), int(p[1])), ij))
        self.pairs_checked += len(ij)
        return np.asarray(found, np.float64).reshape(-1, 2)

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        """``(m, 2)`` int64 pairs -> ``(m, 2)`` float64 ``(inliers, mismatch)`` rows.

        Pairs are taken in chunks grouped by first image; each chunk's missing
        features are computed, then its pairs matched, each in ``threads``
        threads (OpenCV and NumPy release the GIL), so memory stays bounded by
        ``max_images`` at any number of pairs.
        """
        from concurrent.futures import ThreadPoolExecutor

        import cv2
        from threadpoolctl import threadpool_limits
        from tqdm.auto import tqdm

        ij = np.asarray(ij, np.int64).reshape(-1, 2)
        out = np.zeros((len(ij), 2), np.float64)
        order = np.lexsort((ij[:, 1], ij[:, 0]))  # by first image: its features stay warm
        chunk = max(1, self.max_images // 4)
        quiet = not self.progress or len(ij) < 50
        bar = tqdm(total=len(ij), desc="verify (RootSIFT+RANSAC)", unit="pair", disable=quiet)
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # one OpenCV thread per worker: measured 1.1x faster than nested pools
        try:  # and one BLAS thread, so that the workers' GEMMs (two_nearest) do not oversubscribe the cores
            with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, self.threads)) as ex:
                for s in range(0, len(order), chunk):
                    rows = order[s : s + chunk]
                    out[rows] = self._chunk(ij[rows], ex)
                    bar.update(len(rows))
        finally:
            cv2.setNumThreads(cv_threads)
            bar.close()
        return out
