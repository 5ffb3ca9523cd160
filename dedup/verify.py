"""Geometric verification of candidate pairs with local features.

After Philbin et al., "Object retrieval with large vocabularies and fast
spatial matching" (CVPR 2007): two photos of the same object share many local
features whose positions agree with one geometric transform. Here: SIFT
keypoints (Lowe, IJCV 2004; OpenCV, patent-free since 4.4) with RootSIFT
descriptors (Arandjelovic and Zisserman, CVPR 2012: L1-normalise, square
root), Lowe's ratio test (0.8) on the two nearest matches, then a RANSAC
homography; the score is the number of inlier matches. The second image is
also matched mirrored (its features are computed on the flipped image), and
the larger count is kept, so a mirrored re-upload verifies like any copy.

An edited copy (crop, pad, watermark, rotation, re-encoding) keeps dozens to
hundreds of inliers; a look-alike of the same kind keeps few. Absence of
inliers is weak evidence (a garment's front and back share no features): the
pair model (:mod:`dedup.calibration`) weighs it with everything else.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

#: Longest side of the greyscale image keypoints are taken from, in pixels.
MAX_SIDE = 480


class GeometricVerifier:
    """Count RANSAC-consistent RootSIFT matches for image pairs, mirror included.

    Args:
        load: ``i -> PIL.Image`` for image index ``i`` (any mode).
        n_features: SIFT keypoints per image (strongest first).
        ratio: Lowe's ratio-test threshold.
        reprojection_px: RANSAC inlier threshold in pixels at ``MAX_SIDE``.

    Features are computed once per image (both orientations) and kept for
    the object's lifetime (about 2 x 500 x 128 float32, 0.5 MB, per image at
    most); so is each pair's count.
    """

    def __init__(self, load: Callable[[int], Image.Image], n_features: int = 500, ratio: float = 0.8,
                 reprojection_px: float = 5.0):
        self.load = load
        self.n_features = n_features
        self.ratio = ratio
        self.reprojection_px = reprojection_px
        self._feats: dict[int, list[tuple[np.ndarray, np.ndarray | None]]] = {}
        self._done: dict[tuple[int, int], int] = {}
        self.pairs_checked = 0
        #: show a tqdm bar in :meth:`__call__`
        self.progress = False

    @property
    def method_id(self) -> str:
        """Identifies the settings, so that cached inlier counts are reused only for the same method."""
        return f"rootsift{self.n_features}-mirror-ratio{self.ratio}-ransac{self.reprojection_px}-side{MAX_SIDE}"

    def _features(self, i: int):
        if i not in self._feats:
            import cv2

            try:
                im = self.load(i).convert("L")
                s = MAX_SIDE / max(im.size)
                if s < 1:
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
                a = np.asarray(im)
                sift = cv2.SIFT_create(nfeatures=self.n_features)
                out = []
                for arr in (a, np.ascontiguousarray(a[:, ::-1])):
                    kp, des = sift.detectAndCompute(arr, None)
                    if des is None or len(kp) == 0:
                        out.append((np.zeros((0, 2), np.float32), None))
                        continue
                    des = np.sqrt(des / (des.sum(axis=1, keepdims=True) + 1e-7)).astype(np.float32)
                    out.append((np.float32([k.pt for k in kp]).reshape(-1, 2), des))
                self._feats[i] = out
            except Exception:  # noqa: BLE001 - an unreadable image verifies nothing
                self._feats[i] = [(np.zeros((0, 2), np.float32), None)] * 2
        return self._feats[i]

    def inliers(self, i: int, j: int) -> int:
        """RANSAC homography inliers between images ``i`` and ``j`` (0 if too few
        matches), the better of ``j`` as it is and mirrored.

        Each pair is computed once per verifier (a sweep asks again)."""
        key = (int(i), int(j))
        if key not in self._done:
            self._done[key] = self._compute(*key)
        return self._done[key]

    def _match(self, a, b) -> int:
        import cv2

        (pa, da), (pb, db) = a, b
        if da is None or db is None or len(da) < 5 or len(db) < 5:
            return 0
        matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
        good = [m[0] for m in matches if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < 5:
            return 0
        src = pa[[g.queryIdx for g in good]]
        dst = pb[[g.trainIdx for g in good]]
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.reprojection_px)
        return int(mask.sum()) if mask is not None else 0

    def _compute(self, i: int, j: int) -> int:
        fa, fb = self._features(i), self._features(j)
        self.pairs_checked += 1
        return max(self._match(fa[0], fb[0]), self._match(fa[0], fb[1]))

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        """``(m, 2)`` int64 pairs -> ``(m,)`` int64 inlier counts."""
        from tqdm.auto import tqdm

        bar = tqdm(ij, desc="verify (RootSIFT+RANSAC)", unit="pair", disable=not self.progress or len(ij) < 50)
        return np.array([self.inliers(i, j) for i, j in bar], dtype=np.int64)
