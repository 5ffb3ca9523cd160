"""Geometric verification on real photos: mirrored features without a second
detection, and which pairs verification is spent on."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_set, labels_of
from PIL import Image

from dedup.verify import MAX_SIDE, GeometricVerifier, mirror_features, worth_verifying


def _grey(path, side=MAX_SIDE) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L")
        s = side / max(im.size)
        return np.asarray(im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BILINEAR))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def test_mirrored_features_match_sift_computed_on_the_flipped_photo():
    """The permuted descriptors of a photo's keypoints are those SIFT computes
    on the flipped photo at the reflected keypoints; unpermuted ones are not."""
    import cv2

    for name in ("ukbench-dev", "inshop-women"):
        path = bench_set(name) / labels_of(name).sort_values("path").path.iloc[3]
        a = _grey(path)
        sift = cv2.SIFT_create(nfeatures=500)
        kp, des = sift.detectAndCompute(a, None)
        w = a.shape[1]
        pts = np.array([k.pt for k in kp], np.float32)
        m_pts, m_des = mirror_features(pts, des, w)
        reflected = [
            cv2.KeyPoint(float(x), float(y), k.size, (180.0 - k.angle) % 360, k.response, k.octave)
            for (x, y), k in zip(m_pts, kp)
        ]
        kept, truth = sift.compute(np.ascontiguousarray(a[:, ::-1]), reflected)
        assert len(kept) == len(kp)
        assert np.allclose(m_pts[:, 0], w - 1 - pts[:, 0]) and np.allclose(m_pts[:, 1], pts[:, 1])
        assert _cosines(m_des, truth).mean() > 0.97
        assert _cosines(des, truth).mean() < 0.8


def test_a_mirrored_copy_verifies_and_another_product_does_not(tmp_path):
    lab = labels_of("ukbench-dev").drop_duplicates("group").sort_values("path")
    photos = [Image.open(bench_set("ukbench-dev") / p).convert("RGB") for p in lab.path.iloc[:2]]
    images = [photos[0], photos[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT), photos[1]]
    v = GeometricVerifier(lambda i: images[i])
    found = v(np.array([[0, 1], [0, 2], [1, 0]]))
    assert found[0, 0] >= 50 and found[2, 0] >= 50, found  # mirrored copy, either way round
    assert 0 <= found[0, 1] < 0.1  # aligned, and the colours agree
    assert found[1, 0] < 15, found


def test_worth_verifying_keeps_likely_pairs_each_images_nearest_and_near_pairs():
    ij = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [5, 6], [5, 7]])
    distance = np.array([0.5, 0.1, 0.2, 0.3, 0.6, 0.7])
    p = np.array([0.9, 0.01, 0.01, 0.01, 0.01, 0.01])
    keep = worth_verifying(ij, distance, p, min_confidence=0.05, nearest=1, max_distance=-1)
    # (0, 1) likely; (0, 2) image 0's nearest; (5, 6) image 5's nearest; (0, 3) is
    # image 3's nearest (its only pair); so is (0, 4) for image 4 and (5, 7) for 7
    assert keep.tolist() == [True, True, True, True, True, True]
    # a pair (3, 4) nearer than both of theirs: (0, 3) and (0, 4) are nobody's nearest
    keep = worth_verifying(np.r_[ij, [[3, 4]]], np.r_[distance, 0.05], np.r_[p, 0.01], 0.05, 1, -1)
    assert keep.tolist() == [True, True, False, False, True, True, True]
    keep = worth_verifying(np.r_[ij, [[3, 4]]], np.r_[distance, 0.05], np.r_[p, 0.01], 0.05, 1, 0.2)
    assert keep.tolist() == [True, True, True, False, True, True, True]  # (0, 3) at 0.2: near enough
    assert worth_verifying(ij, distance, p, 0.05, 0, -1).tolist() == [True] + [False] * 5
    assert worth_verifying(ij, distance, p, 0.0, 0, -1).all()
    with pytest.raises(ValueError, match="6 pairs, 5 distances"):
        worth_verifying(ij, distance[:5], p)
