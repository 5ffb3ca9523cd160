"""The Spark engine (dedup.spark) in local mode, against the local engine:
its building blocks (distributed kNN, the multi-index pHash join, connected
components) and whole runs (`--engine spark`) on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import bench_set, run_cli
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
def ukbench_embedded():
    """The 600 ukbench-dev photos embedded (EfficientNet-Lite0), with their
    colour descriptors, colour layouts and pHashes."""
    from dedup.pipeline import Deduplicator

    return Deduplicator(backbones="efficientnet-lite0", cache=False, progress=False).embed(bench_set("ukbench-dev"))


@pytest.fixture(scope="module")
def real_vectors(ukbench_embedded):
    """EfficientNet-Lite0 embeddings of the 600 ukbench-dev photos."""
    return ukbench_embedded.embeddings["efficientnet-lite0"]


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


def _two_backbones(e):
    """Real rows with two embedding spaces: EfficientNet-Lite0's, and a fixed
    random projection of it to 256-d (another space, so the per-backbone
    columns and lists are exercised)."""
    X = e.embeddings["efficientnet-lite0"]
    Y = X @ np.random.default_rng(7).standard_normal((X.shape[1], 256)).astype(np.float32)
    return [X, (Y / np.linalg.norm(Y, axis=1, keepdims=True)).astype(np.float32)]


_EVIDENCE_FIELDS = ("distance", "per_backbone", "colour", "fused", "context", "relative", "layout_mean", "layout_max")


def _assert_same_evidence(got, want):
    np.testing.assert_array_equal(got.ij, want.ij)
    for name in ("rank_ij", "rank_ji", "phash_bits", "inliers", "mismatch"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in _EVIDENCE_FIELDS:  # float32 sums in another order: the last bits may differ
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5, err_msg=name)


def test_distributed_pair_evidence_equals_score_pairs(spark, ukbench_embedded, monkeypatch):
    """On one k-means list (an exact search) the Spark engine's candidate
    pairs and every column of their evidence equal the local engine's
    candidate_pairs + score_pairs, on real rows with two backbones, pHash
    near-duplicates among the candidates (some in no kNN list: scored
    through the join) and, once, no colour layouts. The pairs come to the
    driver in slices of at most 700 rows (as a 1M-image run's do in slices
    of dedup.spark.COLLECT_ROWS), none lost or repeated."""
    import dedup.spark
    from dedup.grouping import GroupingParams, candidate_pairs, fused_vectors, score_pairs
    from dedup.index import exact_knn
    from dedup.spark import SparkEngine

    monkeypatch.setattr(dedup.spark, "COLLECT_ROWS", 700)

    e, params, K = ukbench_embedded, GroupingParams(), 11
    E, n = _two_backbones(e), len(e.colours)
    rng = np.random.default_rng(3)
    far = np.sort(rng.choice(n, (30, 2), replace=True), axis=1)
    phash = np.unique(np.concatenate([near_duplicate_pairs(e.codes, 10)[0], far[far[:, 0] < far[:, 1]]]), axis=0)
    fused = fused_vectors(E, e.colours, params.colour_weight)
    fused_ids = exact_knn(fused, fused, K)[0]
    lists = [exact_knn(X, X, K)[0] for X in E]
    ij = candidate_pairs(lists + [fused_ids], extra=phash)
    engine = SparkEngine()
    engine._spark = spark
    for layouts in (e.layouts, None):
        want = score_pairs(ij, E, e.colours, fused, fused_ids, e.codes, params.k_context, layouts)
        ids, got = engine.pair_evidence(E, e.colours, layouts, e.codes, phash, K, params.colour_weight)
        np.testing.assert_array_equal(ids, fused_ids)
        _assert_same_evidence(got, want)
    assert len(np.setdiff1d(phash[:, 0] * n + phash[:, 1], ij[:, 0] * n + ij[:, 1])) == 0


def test_distributed_pair_evidence_over_many_lists(spark, ukbench_embedded, monkeypatch):
    """With many small k-means lists (each row in 3 of them, pairs found by
    several lists), ten rows each there three times (as is, a byte copy and
    a near copy) and ten more once more as a re-encode (the same pHash and
    colours, farther than SAME_CONTENT_DISTANCE), the neighbourhood
    statistics by window functions (ranks, context radii, nearest
    distances, copies and re-encodes left out of all three) equal
    score_pairs' on the same lists, and the candidates keep >= 0.95 of the
    exact search's. Without the re-encode criterion (both engines), the
    re-encodes' originals measure their other pairs against them."""
    import dedup.grouping
    import dedup.spark_evidence
    from dedup.grouping import SAME_CONTENT_DISTANCE, GroupingParams, Pairs, candidate_pairs, fused_parts, score_pairs
    from dedup.index import exact_knn
    from dedup.spark_evidence import features_frame, list_arrays, pair_evidence

    e, params, K = ukbench_embedded, GroupingParams(), 11
    m = len(e.colours)
    rows = np.r_[np.arange(m), np.repeat(np.arange(0, 100, 10), 2), np.arange(5, 100, 10)]  # the copies last
    E, n = [X[rows] for X in _two_backbones(e)], len(rows)
    colours, layouts, codes = e.colours[rows], e.layouts[rows], e.codes[rows]
    # every second copy is a near copy (a high-quality re-encode): a little noise on its embeddings;
    # the last ten are re-encodes farther off (more noise)
    near, reenc = np.arange(m + 1, m + 20, 2), np.arange(m + 20, n)
    noise = np.random.default_rng(5)
    for X in E:
        for idx, scale in ((near, 0.1), (reenc, 1.0)):
            X[idx] += scale * noise.standard_normal((len(idx), X.shape[1]), dtype=np.float32) / np.sqrt(X.shape[1])
            X[idx] /= np.linalg.norm(X[idx], axis=1, keepdims=True)
    df = features_frame(spark, E, colours, layouts, codes).persist()
    fused = fused_parts(E, colours, params.colour_weight)
    runs = {}
    for criterion in (True, False):
        if not criterion:
            for module in (dedup.grouping, dedup.spark_evidence):
                monkeypatch.setattr(module, "REENCODE_COLOUR_DISTANCE", -1.0)
        scored, lists = pair_evidence(df, 2, params.colour_weight, K, params.k_context, list_size=60, lists_per_row=3)
        got = Pairs.from_frame(scored.toPandas().sort_values(["i", "j"]))
        fused_ids = list_arrays(lists, n, K)
        lists.unpersist()
        assert (fused_ids >= 0).all()
        want = score_pairs(got.ij, E, colours, fused, fused_ids, codes, params.k_context, layouts)
        _assert_same_evidence(got, want)
        copies = rows[got.ij[:, 0]] == rows[got.ij[:, 1]]
        reencoded = copies & np.isin(got.ij[:, 1], reenc)
        copies &= ~reencoded
        assert copies.sum() == 30 and (got.fused[copies] <= SAME_CONTENT_DISTANCE).all()
        assert (got.fused[copies] > 1e-4).sum() >= 10  # the near copies: not merely rounding
        assert (got.rank_ij[copies] == 0).all()
        assert reencoded.sum() == 10 and (got.fused[reencoded] > SAME_CONTENT_DISTANCE).all()
        assert (got.relative < 1e3).all()  # no pair is measured against a copy's zero distance
        runs[criterion] = got
    df.unpersist()
    # the re-encodes' originals: their other pairs are no longer measured against a re-encode
    a, b = runs[False], runs[True]
    np.testing.assert_array_equal(a.ij, b.ij)
    touched = np.isin(a.ij, np.arange(5, 100, 10)).any(axis=1) & (rows[a.ij[:, 0]] != rows[a.ij[:, 1]])
    assert (b.relative[touched] <= a.relative[touched] + 1e-6).all()
    assert (b.relative[touched] < a.relative[touched] - 1e-3).sum() >= 10
    F = fused.stack()
    exact = candidate_pairs([exact_knn(X, X, K)[0] for X in E] + [exact_knn(F, F, K)[0]])
    found = np.intersect1d(exact[:, 0] * n + exact[:, 1], got.ij[:, 0] * n + got.ij[:, 1])
    assert len(found) >= 0.95 * len(exact)


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


def _random_pairs(rng, n: int, m: int):
    """``m`` random scored pairs among ``n`` images, with confidences that
    join about a third of them, and random pHash, SHA-256 and decided pairs."""
    import pandas as pd

    from dedup.grouping import Pairs

    ij = np.unique(np.sort(rng.integers(0, n, (m, 2)), axis=1), axis=0)
    ij = ij[ij[:, 0] < ij[:, 1]]
    m = len(ij)
    f32 = lambda: rng.random(m, dtype=np.float32)  # noqa: E731
    ints = lambda: rng.integers(0, 10, m)  # noqa: E731
    pairs = Pairs(ij, f32(), f32()[:, None], f32() * 0.3, f32(), f32(), ints(), ints(), f32(), ints(), ints())
    conf = np.round(rng.beta(0.6, 0.6, m), 2)  # rounded: many ties, which must break as on the whole table
    sha = ij[rng.choice(m, 3, replace=False)][:, ::-1]  # listed either way round
    phash = np.concatenate([ij[rng.choice(m, 25, replace=False)], rng.integers(0, n, (5, 2))])
    told = ij[rng.choice(m, 40, replace=False)]
    decisions = pd.DataFrame({"i": told[:, 1], "j": told[:, 0], "same": rng.random(40) < 0.3})
    return pairs, conf, {"sha256": sha, "phash": phash}, decisions


def test_distributed_grouping_equals_the_local_grouping(spark):
    """The decisions as columns and the per-component group-apply give
    :func:`dedup.grouping.group`'s grouping field for field (labels, stage,
    confidence, distance, partner, review rows), on random pair tables with
    ties, pHash and SHA-256 pairs, and a person's confirmed and rejected
    pairs; and the decision column is the thresholds applied to the
    pair model's probability."""
    from dedup.calibration import PairModel
    from dedup.grouping import GroupingParams, group
    from dedup.spark_grouping import decide, group_pairs, pairs_frame

    params = GroupingParams()
    for seed in range(3):
        rng = np.random.default_rng(seed)
        n = 300
        pairs, conf, hashes, decisions = _random_pairs(rng, n, 900)
        want = group(n, pairs, conf, hashes, params, decisions)
        assert 10 < len(np.unique(want.labels)) < n - 10 and len(want.review) > 0  # a table with some of everything
        frame = pairs_frame(spark, pairs).toPandas().sort_values("row").assign(confidence=conf)
        got = group_pairs(spark.createDataFrame(frame), n, hashes, params, decisions)
        for name in ("labels", "stage", "partner", "review"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        np.testing.assert_array_equal(got.distance, want.distance)

    # nothing may join: every image alone, the doubtful pairs listed for review
    frame = pairs_frame(spark, pairs).toPandas().sort_values("row").assign(confidence=conf * 0.85)
    got, want = group_pairs(spark.createDataFrame(frame), n, {}, params), group(n, pairs, conf * 0.85, {}, params)
    assert (got.stage == "single").all() and len(np.unique(got.labels)) == n
    np.testing.assert_array_equal(got.review, want.review)

    model = PairModel.load(verified=False)
    decided = decide(pairs_frame(spark, pairs), model, params).toPandas().sort_values("row")
    p = model.predict_pairs(pairs)
    np.testing.assert_allclose(decided["confidence"].to_numpy(), p, rtol=1e-12)  # batched: last bit may differ
    expect = np.where(p >= params.min_confidence, "join", np.where(p >= params.review_confidence, "review", "apart"))
    np.testing.assert_array_equal(decided["decision"].to_numpy(), expect)


@pytest.mark.slow
def test_spark_engine_gives_the_local_groups_on_ukbench_dev(spark, tmp_path):
    """The same settings on both engines: the same groups, image for image.
    The Spark runs decode and embed on their executors (100 photos, then the
    other 500: a run embeds only what its Parquet features table lacks; the
    geometric verification results, cached by content, are reused); a
    further Spark run embeds nothing."""
    import shutil

    import pandas as pd

    from dedup.pipeline import Deduplicator
    from dedup.spark import SparkEngine

    # with byte copies: both engines search and score one file per content
    root = tmp_path / "ukbench-dev"
    shutil.copytree(bench_set("ukbench-dev"), root)
    images = root / "images"
    for k, name in enumerate(sorted(p.name for p in images.glob("*.jpg"))[:12:4]):
        for c in range(k + 1):
            shutil.copyfile(images / name, images / f"zz-copy{c}-{name}")
    cache = tmp_path / "cache.sqlite"
    local = Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False).run(root)
    assert len(local.groups) == 606
    engine = SparkEngine(features=str(tmp_path / "features"))
    # exact_knn_max=0: the neighbour lists and the pair evidence too come from Spark jobs, not the driver
    dd = Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False, engine=engine, exact_knn_max=0)
    part = dd.run(root, files=list(local.groups.path[:100]))
    assert part.meta["counts"]["embedded"] == 100
    first = dd.run(root)  # embeds only what the features folder lacks
    assert first.meta["engine"]["name"] == "spark"
    # the copies' contents are among the first 100 photos: their features come from the features table
    assert first.meta["counts"]["embedded"] == 500 and first.meta["counts"]["from_cache"] == 106
    E_local, E_spark = local.embeddings["efficientnet-lite0"], first.embeddings["efficientnet-lite0"]
    assert np.abs(E_local - E_spark).max() < 1e-4  # the same network on the same pixels
    second = dd.run(root)
    assert second.meta["counts"]["embedded"] == 0 and second.meta["counts"]["from_cache"] == 606
    for got in (first, second):
        pd.testing.assert_frame_equal(
            got.groups.drop(columns=["confidence", "distance"]), local.groups.drop(columns=["confidence", "distance"])
        )
        np.testing.assert_allclose(got.groups.confidence, local.groups.confidence, atol=2e-3)


@pytest.mark.slow
def test_spark_engine_runs_from_a_manifest_with_the_cli(flipkart_run, http_images, tmp_path):
    """`run --manifest FILE --engine spark` on products-flipkart listed in a
    CSV (absolute paths, HTTP URLs that the executors and the driver read
    through fsspec, and a relative row that is no image): the CLI's local
    run's groups, groups.parquet beside groups.csv, the bad row skipped."""
    from urllib.parse import quote

    import pandas as pd

    images = sorted((bench_set("products-flipkart") / "images").iterdir())
    listed = tmp_path / "listing"
    listed.mkdir()
    (listed / "notes.txt").write_text("not an image")
    base = http_images[0]
    rows = [str(p) if k % 2 else f"{base}/{quote(p.name)}" for k, p in enumerate(images)] + ["notes.txt"]
    pd.DataFrame({"image": rows, "sku": range(len(rows))}).to_csv(listed / "manifest.csv", index=False)
    out = tmp_path / "out"
    proc = run_cli(
        "run", "--manifest", str(listed / "manifest.csv"), "--image-col", "image", "--engine", "spark",
        "--master", "local[2]", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = pd.read_csv(flipkart_run[1] / "groups.csv")
    got = pd.read_csv(out / "groups.csv")
    assert sorted(Path(p).name for p in got.path) == sorted(Path(p).name for p in local.path)
    assert got.path.str.startswith("http://").sum() == 10
    by_name = {Path(p).name: g for p, g in zip(got.path, got.group)}
    local_by_name = {Path(p).name: g for p, g in zip(local.path, local.group)}
    pairs = lambda m: {(a, b) for a in m for b in m if a < b and m[a] == m[b]}  # noqa: E731
    assert pairs(by_name) == pairs(local_by_name) and len(pairs(by_name)) > 0
    cols = ["path", "group", "group_size", "stage", "sha256"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "groups.parquet")[cols], got[cols], check_dtype=False)
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped.path.str.endswith("notes.txt").any()
    assert (out / "features" / "vectors").is_dir()
