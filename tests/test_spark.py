"""The Spark building blocks (dedup.spark) in local mode, against their local counterparts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_set
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_cc

from dedup.hashing import near_duplicate_pairs, phash_files
from dedup.index import exact_knn, recall_at_k


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for every test: 2 cores, 4 shuffle partitions, UI off."""
    from dedup.spark import session

    s = session("local[2]", shuffle_partitions=4)
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def real_vectors():
    """EfficientNet-Lite0 embeddings of the 600 ukbench-dev photos."""
    from dedup.pipeline import Deduplicator

    e = Deduplicator(backbones="efficientnet-lite0", cache=False, progress=False).embed(bench_set("ukbench-dev"))
    return e.embeddings["efficientnet-lite0"]


def test_distributed_neighbours_keep_recall_against_exact_search(spark, real_vectors):
    """20,000 vectors made from real embeddings (noisy mixtures of two
    photos' embeddings, a continuum with no easy clusters): recall@10 of the
    distributed search against exact search >= 0.99."""
    from dedup.spark import neighbour_arrays, neighbours, vectors_frame

    rng = np.random.default_rng(0)
    n, X0 = 20_000, real_vectors
    a, b = rng.integers(0, len(X0), n), rng.integers(0, len(X0), n)
    t = rng.random((n, 1), dtype=np.float32) ** 3  # mostly near one photo, some between two
    X = (1 - t) * X0[a] + t * X0[b] + 0.01 * rng.standard_normal((n, X0.shape[1]), dtype=np.float32)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    ids, d = neighbour_arrays(neighbours(vectors_frame(spark, X), 11), n, 11)
    exact_ids, exact_d = exact_knn(X, X, 11)
    assert (ids >= 0).all()
    assert recall_at_k(ids[:, 1:], exact_ids[:, 1:]) >= 0.99
    assert (np.diff(d, axis=1) >= -1e-6).all()  # nearest first
    cosine = 1 - np.einsum("id,id->i", X, X[ids[:, 1]])
    np.testing.assert_allclose(d[:, 1], cosine, atol=1e-4)  # distances are the rows' cosine distances


def test_distributed_neighbours_on_one_list_are_exact(spark, real_vectors):
    from dedup.spark import neighbour_arrays, neighbours, vectors_frame

    X = real_vectors
    ids, d = neighbour_arrays(neighbours(vectors_frame(spark, X), 6), len(X), 6)
    exact_ids, exact_d = exact_knn(X, X, 6)
    np.testing.assert_allclose(d, exact_d, atol=1e-5)
    assert recall_at_k(ids, exact_ids) >= 0.999


@pytest.mark.parametrize("max_distance", [0, 4, 10])
def test_multi_index_phash_join_finds_every_pair_brute_force_does(spark, max_distance):
    """pHashes of real photos plus copies of them with 0-12 random bits
    flipped: the join's pairs and distances equal the local exact search's."""
    from dedup.spark import phash_pairs

    paths = (
        sorted(bench_set("products-flipkart").rglob("*.jp*g"))[:60]
        + sorted(bench_set("ukbench-dev").rglob("*.jp*g"))[:140]
    )
    codes, _ = phash_files(paths)
    rng = np.random.default_rng(max_distance)
    copies = codes[rng.integers(0, len(codes), 300)].copy()
    for r, flips in enumerate(rng.integers(0, 13, len(copies))):
        for bit in rng.choice(64, flips, replace=False):
            copies[r] ^= np.uint64(1) << np.uint64(bit)
    allc = np.concatenate([codes, copies]).astype(np.uint64)
    df = spark.createDataFrame([(i, int(c)) for i, c in enumerate(allc.view(np.int64))], "id long, code long")
    got = phash_pairs(df, max_distance).toPandas().sort_values(["a", "b"])
    want, dist = near_duplicate_pairs(allc, max_distance)
    assert len(want) > 0 and dist.max() == max_distance  # pairs up to the limit exist
    np.testing.assert_array_equal(got[["a", "b"]].to_numpy(), want)
    np.testing.assert_array_equal(got["distance"].to_numpy(), dist)
    with pytest.raises(ValueError):
        phash_pairs(df, 64)


@pytest.mark.parametrize("collect_max", [5_000_000, 0], ids=["driver", "propagation"])
def test_connected_components_match_scipy_on_random_graphs(spark, collect_max):
    from dedup.spark import connected_components

    for seed in range(3):
        rng = np.random.default_rng(seed)
        n, m = 400, int(rng.integers(150, 450))
        a, b = rng.integers(0, n, m), rng.integers(0, n, m)
        edges = spark.createDataFrame([(int(x), int(y)) for x, y in zip(a, b)], "a long, b long")
        vertices = spark.range(n).select("id")
        got = connected_components(edges, vertices, collect_max=collect_max).toPandas().sort_values("id")
        _, lab = scipy_cc(coo_matrix((np.ones(m), (a, b)), shape=(n, n)), directed=False)
        smallest = {c: np.flatnonzero(lab == c).min() for c in np.unique(lab)}
        assert got["id"].tolist() == list(range(n))
        assert got["component"].tolist() == [smallest[c] for c in lab]
