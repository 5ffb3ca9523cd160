"""The searches that must scale, against brute force on real photos: the
exact Hamming search of the hash pass (multi-index hashing) and the batched,
threaded ANN queries."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_set

from dedup.backbones import EfficientNetLite0
from dedup.decode import load_image
from dedup.hashing import MIH_MAX_DISTANCE, _all_pairs_within, near_duplicate_pairs, phash_files
from dedup.index import AnnIndex, exact_knn, recall_at_k


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    """pHashes of the 600 ukbench-dev photos, plus 2,400 codes a few bits from
    them (re-encodes and edits differ from their original by a few bits)."""
    paths = sorted((bench_set("ukbench-dev") / "images").iterdir())
    real, failed = phash_files(paths)
    assert not any(failed)
    rng = np.random.default_rng(7)
    src = real[rng.integers(0, len(real), 2400)]
    flips = np.zeros(len(src), np.uint64)
    for _ in range(6):
        bit = rng.integers(0, 64, len(src)).astype(np.uint64)
        flips ^= np.where(rng.random(len(src)) < 0.5, np.uint64(1) << bit, np.uint64(0))
    return np.concatenate([real, src ^ flips])


@pytest.mark.parametrize("max_distance", list(range(0, MIH_MAX_DISTANCE + 3)))
def test_multi_index_hashing_finds_exactly_the_pairs_of_an_all_pairs_search(codes, max_distance):
    pairs, dist = near_duplicate_pairs(codes, max_distance)
    want, want_dist = _all_pairs_within(codes, max_distance, 512)
    assert len(want) > 0
    np.testing.assert_array_equal(pairs, want)
    np.testing.assert_array_equal(dist, want_dist)
    assert (pairs[:, 0] < pairs[:, 1]).all() and (dist <= max_distance).all()


def test_empty_and_single_inputs():
    for n in (0, 1):
        pairs, dist = near_duplicate_pairs(np.zeros(n, np.uint64), 4)
        assert pairs.shape == (0, 2) and dist.shape == (0,)


def test_threaded_ann_queries_equal_one_thread_and_keep_recall_against_exact_search():
    net = EfficientNetLite0()
    paths = sorted((bench_set("ukbench-dev") / "images").iterdir())[:300]
    X = net.embed(np.stack([net.prepare(load_image(p, target_size=224).image) for p in paths]))
    one = AnnIndex(n_jobs=1).build(X).query(X, 10)
    many = AnnIndex(n_jobs=-1).build(X).query(X, 10)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
    exact_ids, _ = exact_knn(X, X, 10)
    assert recall_at_k(many[0], exact_ids) >= 0.99


def test_verification_with_bounded_feature_memory_gives_the_same_counts():
    from itertools import combinations

    from dedup.verify import MAX_SIDE, GeometricVerifier

    paths = [bench_set("ukbench-dev") / "images" / f"ukbench{i:05d}.jpg" for i in (0, 1, 2, 3, 4, 5)]

    def load(i):
        return load_image(paths[i], target_size=MAX_SIDE).image

    ij = np.array(list(combinations(range(len(paths)), 2)), np.int64)[::-1]
    small, large = GeometricVerifier(load, max_images=2), GeometricVerifier(load, max_images=100)
    got, want = small(ij), large(ij)
    np.testing.assert_array_equal(got, want)
    assert len(small._feats) <= 2 and len(large._feats) == len(paths)
    assert tuple(ij[-1]) == (0, 1) and want[-1, 0] >= 12  # photos 0 and 1 show one object: aligned
