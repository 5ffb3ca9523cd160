"""Geometric verification of candidate pairs with local features.

After Philbin et al., "Object retrieval with large vocabularies and fast
spatial matching" (CVPR 2007): two photos of the same object share many local
features whose positions agree with one geometric transform. Here: ORB
keypoints and binary descriptors (Rublee et al., ICCV 2011; OpenCV), Lowe's
ratio test (0.8) on the two nearest Hamming matches, then a RANSAC
homography; the score is the number of inlier matches.

Different objects of one kind (two bookshelves, two bottles) rarely reach 15
inliers; the same object from another angle usually does (measured on
UKBench, see :class:`dedup.grouping.GroupingParams`). Absence of inliers is
*not* evidence of a different product (a garment's front and back share no
features), so grouping uses this only to confirm borderline pairs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

#: Longest side of the greyscale image keypoints are taken from, in pixels.
MAX_SIDE = 480


class GeometricVerifier:
    """Count RANSAC-consistent ORB matches for image pairs.

    Args:
        load: ``i -> PIL.Image`` for image index ``i`` (any mode).
        n_features: ORB keypoints per image.
        ratio: Lowe's ratio-test threshold.
        reprojection_px: RANSAC inlier threshold in pixels at ``MAX_SIDE``.

    Features are computed once per image and kept for the object's lifetime
    (about 32 KB per image); so is each pair's count.
    """

    def __init__(self, load: Callable[[int], Image.Image], n_features: int = 1000, ratio: float = 0.8,
                 reprojection_px: float = 6.0):
        self.load = load
        self.n_features = n_features
        self.ratio = ratio
        self.reprojection_px = reprojection_px
        self._feats: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self._done: dict[tuple[int, int], int] = {}
        self.pairs_checked = 0

    @property
    def method_id(self) -> str:
        """Identifies the settings, so that cached inlier counts are reused only for the same method."""
        return f"orb{self.n_features}-ratio{self.ratio}-ransac{self.reprojection_px}-side{MAX_SIDE}"

    def _features(self, i: int):
        if i not in self._feats:
            import cv2

            try:
                im = self.load(i).convert("L")
                s = MAX_SIDE / max(im.size)
                if s < 1:
                    im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
                orb = cv2.ORB_create(nfeatures=self.n_features)
                kp, des = orb.detectAndCompute(np.asarray(im), None)
                self._feats[i] = (np.float32([k.pt for k in kp]).reshape(-1, 2), des)
            except Exception:  # noqa: BLE001 - an unreadable image verifies nothing
                self._feats[i] = (np.zeros((0, 2), np.float32), None)
        return self._feats[i]

    def inliers(self, i: int, j: int) -> int:
        """RANSAC homography inliers between images ``i`` and ``j`` (0 if too few matches).

        Each pair is computed once per verifier (a cutoff sweep asks again)."""
        key = (int(i), int(j))
        if key not in self._done:
            self._done[key] = self._compute(*key)
        return self._done[key]

    def _compute(self, i: int, j: int) -> int:
        import cv2

        (pa, da), (pb, db) = self._features(i), self._features(j)
        self.pairs_checked += 1
        if da is None or db is None or len(da) < 8 or len(db) < 8:
            return 0
        matches = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
        good = [m[0] for m in matches if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < 8:
            return 0
        src = pa[[g.queryIdx for g in good]]
        dst = pb[[g.trainIdx for g in good]]
        _, mask = cv2.findHomography(src, dst, cv2.RANSAC, self.reprojection_px)
        return int(mask.sum()) if mask is not None else 0

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        """``(m, 2)`` int64 pairs -> ``(m,)`` int64 inlier counts."""
        return np.array([self.inliers(i, j) for i, j in ij], dtype=np.int64)
