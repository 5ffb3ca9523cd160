"""Geometric verification on real photos: mirrored features without a second
detection, and which pairs verification is spent on."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_set, labels_of
from PIL import Image

from dedup.verify import MAX_SIDE, GeometricVerifier, mirror_features, two_nearest, worth_verifying


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


def test_sift_on_a_smaller_image_keeps_positions_at_full_size_and_has_its_own_method_id():
    """``sift_scale`` (measured and refused by ``benchmarks/sift_scale.py``)
    detects on a smaller image but reports keypoints where they lie at full
    size, so that RANSAC's pixel tolerance means the same; its inlier counts
    are cached under another method id."""
    lab = labels_of("ukbench-dev").drop_duplicates("group").sort_values("path")
    photo = Image.open(bench_set("ukbench-dev") / lab.path.iloc[0]).convert("RGB")
    w, h = photo.size
    crop = photo.crop((w // 10, h // 10, w, h))  # the top-left tenth cut away: (x, y) -> (x - w/10, y - h/10)
    full, half = GeometricVerifier(lambda i: [photo, crop][i]), GeometricVerifier(lambda i: [photo, crop][i])
    half.sift_scale = 0.5
    assert full.method_id != half.method_id and "siftscale0.5" in half.method_id
    (pa, _), _ = half._compute(0)[0]
    assert len(pa) >= 20 and pa[:, 0].max() > 0.75 * w and pa[:, 1].max() > 0.75 * h  # spread over the full size
    n_full, n_half = full(np.array([[0, 1]]))[0, 0], half(np.array([[0, 1]]))[0, 0]
    assert n_half >= 20 and n_half < n_full, (n_half, n_full)
    # the homography found at half scale maps the photo onto the crop at full-size coordinates
    _, H, mirrored, _ = half._best_orientation(half._ratio_matches(half._feats[0][0], half._feats[1][0]), None)
    assert not mirrored
    x, y, z = H @ np.array([w / 2, h / 2, 1.0])
    assert abs(x / z - (w / 2 - w // 10)) < 3 and abs(y / z - (h / 2 - h // 10)) < 3


def test_two_nearest_finds_what_opencvs_brute_force_matcher_finds():
    """The GEMM search gives each descriptor the nearest and second-nearest
    rows that ``BFMatcher.knnMatch(k=2)`` gives, at the same distances, on
    RootSIFT of real photos (a view of the same object and another object)."""
    import cv2

    lab = labels_of("ukbench-dev").sort_values("path")
    paths = [bench_set("ukbench-dev") / p for p in lab.path.iloc[[0, 1, 8]]]
    sift = cv2.SIFT_create(nfeatures=500)
    des = []
    for p in paths:
        d = sift.detectAndCompute(_grey(p), None)[1]
        des.append(np.sqrt(d / d.sum(axis=1, keepdims=True)).astype(np.float32))
    for b in (des[1], des[2]):
        dist, nearest = two_nearest(des[0], b)
        want = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des[0], b, k=2)
        want_d = np.array([[m.distance, n.distance] for m, n in want])
        assert dist.shape == (len(des[0]), 2) and nearest.dtype == np.int64
        assert np.abs(dist - want_d).max() < 1e-4
        assert (dist[:, 0] <= dist[:, 1]).all()
        # the same neighbour, unless two rows of b are equally near
        tie = np.abs(want_d[:, 0] - want_d[:, 1]) < 1e-4
        assert (nearest == [m.trainIdx for m, _ in want])[~tie].all()
    with pytest.raises(ValueError):
        two_nearest(des[0], des[1][:1])


def test_ransac_skipped_only_where_it_cannot_change_the_count():
    """The verifier runs RANSAC on one orientation only when the other cannot
    win; its counts and colour mismatches equal running RANSAC on both
    orientations, on real photos: same object, mirrored copies, other objects,
    an inshop product's views and its colour variants."""
    rows = []
    for name in ("ukbench-dev", "inshop-women"):
        lab = labels_of(name).sort_values("path").iloc[:24]
        rows += [bench_set(name) / p for p in lab.path]
    photos = [Image.open(p).convert("RGB") for p in rows]
    photos += [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in photos[:6]]
    n = len(photos)
    rng = np.random.default_rng(0)
    ij = np.array([(i, i + 1) for i in range(n - 1)] + [(i, 48 + i) for i in range(6)])
    ij = np.concatenate([ij, rng.integers(0, n, (200, 2))])
    ij = ij[ij[:, 0] != ij[:, 1]]
    v = GeometricVerifier(lambda i: photos[i], threads=1)
    found = v(ij)
    full = []
    for i, j in ij:
        fa, fb = v._features(int(i)), v._features(int(j))
        (n0, h0), (n1, h1) = (v._ransac(v._ratio_matches(fa[0], fb[k])) for k in (0, 1))
        n, h, mirrored = (n0, h0, False) if n0 >= n1 else (n1, h1, True)
        mismatch = v._mismatch(int(i), int(j), h, mirrored) if n >= 12 and h is not None else -1.0
        full.append((n, mismatch))
    assert np.array_equal(found, np.array(full, np.float64))
    assert (found[:, 0] >= 50).sum() >= 6 and (found[:, 0] < 15).sum() >= 10  # copies and non-matches both seen


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


def test_worth_verifying_skips_pairs_already_clearly_the_same_product():
    ij = np.array([[0, 1], [0, 2], [1, 2], [3, 4]])
    distance = np.array([0.05, 0.08, 0.3, 0.1])
    p = np.array([0.995, 0.6, 0.99, 0.989])
    # every pair is near or likely enough for the lower screen; the upper one drops p >= 0.99
    assert worth_verifying(ij, distance, p, 0.05, 3, 0.2, max_confidence=2.0).all()
    assert worth_verifying(ij, distance, p, 0.05, 3, 0.2, max_confidence=0.99).tolist() == [False, True, False, True]
    # the upper screen wins over the nearest and distance rules, and is on by default
    assert worth_verifying(ij, distance, p).tolist() == [False, True, False, True]
