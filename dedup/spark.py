"""Spark building blocks: the run's scaling steps as Spark jobs (PySpark).

Each function takes and returns Spark DataFrames, so that it runs wherever
the data lives (``local[*]``, YARN, Kubernetes, Databricks); only small
things (a training sample, k-means centres, a small edge list) go through
the driver. Importing :mod:`dedup` never imports PySpark: this module does,
on first use (``pip install pyspark`` and a Java runtime, 17 or newer).

* :func:`neighbours`: every row's ``k`` nearest by cosine distance. k-means
  lists are trained on a sample at the driver (scikit-learn ``KMeans`` after
  a PCA, as the local clustered search does) and broadcast; each
  vector is sent to its ``lists_per_row`` nearest lists, and each list is
  searched exactly by matrix products in a group-apply: the
  cluster-then-pairwise scheme of SemDeDup (Abbas et al., 2023), with the
  multiple assignment of Jegou et al. (TPAMI 2011) for recall at list
  borders. Spark ML's ``approxSimilarityJoin`` is a threshold join, not a
  k-nearest search, so it is not used.
* :func:`phash_pairs`: every pair of pHashes within a Hamming distance, by
  multi-index hashing (Norouzi et al., CVPR 2012) as a self-join on hash
  substrings, each candidate checked on the whole code.
* :func:`connected_components`: the components of a pair graph: collected
  to the driver and solved by SciPy up to ``collect_max`` edges, and by
  min-label propagation in DataFrame joins beyond.

Not here yet (issue #15): the ``--engine spark`` run itself (listing,
decoding and embedding with ``mapInPandas``, a Parquet features table,
the grouping's pair decisions as columns) and ``benchmarks/spark.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .hashing import substrings
from .index import COARSE_DIM, _top_k, kmeans_lists

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

#: Rows per k-means list in :func:`neighbours` (each list is searched as one
#: dense matrix product in one task).
SPARK_LIST_SIZE = 1_024
#: Lists each vector is sent to: its nearest ``SPARK_LISTS_PER_ROW``.
SPARK_LISTS_PER_ROW = 3


def session(master: str = "local[2]", shuffle_partitions: int = 4, app_name: str = "dedup") -> "SparkSession":
    """A Spark session for dedup's jobs (the running one if there is one).

    Args:
        master: the Spark master URL (``local[N]``, ``yarn``, ``k8s://...``,
            ``spark://...``).
        shuffle_partitions: ``spark.sql.shuffle.partitions``.

    Returns:
        A ``pyspark.sql.SparkSession`` with Arrow transfers on and the UI off.

    Raises:
        ImportError: PySpark is not installed (``pip install pyspark``).
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    return builder.getOrCreate()


def vectors_frame(spark: "SparkSession", X: np.ndarray, ids: np.ndarray | None = None) -> "DataFrame":
    """A DataFrame ``(id: long, vec: array<float>)`` of the rows of ``X``.

    Args:
        X: ``(n, d)`` float32 rows; ids: ``(n,)`` int64 row ids (default ``arange(n)``).
    """
    X = np.asarray(X, np.float32)
    ids = np.arange(len(X), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    pdf = pd.DataFrame({"id": ids, "vec": list(X)})
    return spark.createDataFrame(pdf, "id long, vec array<float>")


def _plan(df: "DataFrame", n: int, list_size: int, coarse_dim: int, sample_max: int, seed: int):
    """PCA and k-means lists trained at the driver on a sample of ``df``."""
    from sklearn.decomposition import PCA

    n_lists = max(1, n // max(1, list_size))
    want = min(n, max(32 * n_lists, 2_000), sample_max)
    rows = pd.DataFrame(df.sample(fraction=min(1.0, 1.2 * want / max(n, 1)), seed=seed).limit(want).toPandas())
    S = np.stack(rows["vec"].to_numpy()).astype(np.float32)
    dim = max(1, min(coarse_dim, S.shape[1], len(S)))
    pca = PCA(dim, svd_solver="randomized", random_state=seed).fit(S)
    comp, mean = pca.components_.astype(np.float32), pca.mean_.astype(np.float32)
    return comp, mean, kmeans_lists((S - mean) @ comp.T, min(n_lists, len(S)), seed)


def neighbours(
    df: "DataFrame",
    k: int,
    list_size: int = SPARK_LIST_SIZE,
    lists_per_row: int = SPARK_LISTS_PER_ROW,
    coarse_dim: int = COARSE_DIM,
    sample_max: int = 50_000,
    seed: int = 0,
) -> "DataFrame":
    """Every row's ``k`` nearest rows by cosine distance, distributed.

    Each row is sent to its ``lists_per_row`` nearest k-means lists (trained
    on at most ``sample_max`` rows at the driver, after a PCA to
    ``coarse_dim`` dimensions); each list's members are compared with each
    other exactly, and each row keeps the best ``k`` over its lists. A row's
    true neighbour is missed only when the two share none of their lists.
    With one list (``n < 2 * list_size``) the search is exact.

    Args:
        df: ``(id: long, vec: array<float>)`` with L2-normalised vectors.
        k: neighbours per row (the row itself normally first).

    Returns:
        DataFrame ``(id: long, nbrs: array<long>, dists: array<float>)``:
        neighbour ids and cosine distances (``1 - dot``), nearest first, at
        most ``k`` each.

    Source: SemDeDup (Abbas et al., 2023) for the per-cluster exact step;
    multiple assignment as in Jegou et al., TPAMI 2011.
    """
    from pyspark.sql import functions as F

    n = df.count()
    comp, mean, centres = _plan(df, n, list_size, coarse_dim, sample_max, seed)
    spark = df.sparkSession
    b_comp, b_mean, b_cent = (spark.sparkContext.broadcast(a) for a in (comp, mean, centres))
    r = int(max(1, min(lists_per_row, len(centres))))

    def assign(batches):
        C = b_cent.value
        c2 = (C**2).sum(axis=1)
        for pdf in batches:
            if pdf.empty:
                continue
            V = np.stack(pdf["vec"].to_numpy()).astype(np.float32)
            Y = (V - b_mean.value) @ b_comp.value.T
            d = c2[None, :] - 2 * Y @ C.T
            near = np.argpartition(d, r - 1, axis=1)[:, :r] if r < len(C) else np.tile(np.arange(len(C)), (len(V), 1))
            yield pd.DataFrame(
                {
                    "list": near.ravel().astype(np.int64),
                    "id": np.repeat(pdf["id"].to_numpy(), near.shape[1]),
                    "vec": np.repeat(pdf["vec"].to_numpy(), near.shape[1]),
                }
            )

    def search(pdf: pd.DataFrame) -> pd.DataFrame:
        V = np.stack(pdf["vec"].to_numpy()).astype(np.float32)
        ids = pdf["id"].to_numpy()
        cols, dist = _top_k(V @ V.T, min(k, len(V)))
        return pd.DataFrame({"id": ids, "nbrs": list(ids[cols]), "dists": list(dist.astype(np.float32))})

    out_schema = "id long, nbrs array<long>, dists array<float>"
    spread = df.mapInPandas(assign, "list long, id long, vec array<float>")
    per_list = spread.groupBy("list").applyInPandas(search, out_schema)
    if r == 1 or len(centres) == 1:
        return per_list
    from pyspark.sql import Window

    flat = per_list.select("id", F.explode(F.arrays_zip("nbrs", "dists")).alias("z")).select(
        "id", F.col("z.nbrs").alias("nbr"), F.col("z.dists").alias("dist")
    )
    best = flat.dropDuplicates(["id", "nbr"]).withColumn(
        "rank", F.row_number().over(Window.partitionBy("id").orderBy("dist", "nbr"))
    )
    ranked = (
        best.where(F.col("rank") <= k)
        .groupBy("id")
        .agg(F.sort_array(F.collect_list(F.struct("dist", "nbr"))).alias("z"))
    )
    return ranked.select("id", F.col("z.nbr").alias("nbrs"), F.col("z.dist").alias("dists"))


def neighbour_arrays(nbrs: "DataFrame", n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Collect :func:`neighbours`' result into ``(n, k)`` int64 ids (-1 padded)
    and float32 distances (inf padded), as :func:`dedup.index.clustered_knn`
    returns them (row ids must be ``0..n-1``)."""
    ids = np.full((n, k), -1, np.int64)
    dists = np.full((n, k), np.inf, np.float32)
    for row in nbrs.toLocalIterator():
        m = min(k, len(row["nbrs"]))
        ids[row["id"], :m] = row["nbrs"][:m]
        dists[row["id"], :m] = row["dists"][:m]
    return ids, dists


def phash_pairs(df: "DataFrame", max_distance: int) -> "DataFrame":
    """Every pair of 64-bit pHashes within ``max_distance`` bits, exactly.

    Multi-index hashing as a join: each code is cut into ``max_distance + 1``
    disjoint substrings; two codes within ``max_distance`` bits agree
    exactly on at least one of them (pigeonhole; Norouzi, Punjani and Fleet,
    CVPR 2012), so a self-join on ``(substring index, substring value)``
    finds every such pair, and the whole codes are then compared.

    Args:
        df: ``(id: long, code: long)``; ``code`` holds the 64 bits as a
            signed long (``numpy.uint64`` viewed as ``int64``).
        max_distance: largest Hamming distance accepted (0..63).

    Returns:
        DataFrame ``(a: long, b: long, distance: int)`` with ``a < b``, one
        row per pair.

    Raises:
        ValueError: ``max_distance`` outside 0..63.
    """
    from pyspark.sql import functions as F

    if not 0 <= max_distance <= 63:
        raise ValueError(f"phash_pairs: max_distance must be in 0..63, got {max_distance}")
    subs = [
        F.struct(
            F.lit(s).alias("part"),
            F.shiftrightunsigned(F.col("code"), shift).bitwiseAND(F.lit((1 << w) - 1 if w < 64 else -1)).alias("key"),
        )
        for s, (shift, w) in enumerate(substrings(max_distance + 1))
    ]
    keyed = df.select("id", "code", F.explode(F.array(*subs)).alias("sub")).select(
        "id", "code", F.col("sub.part").alias("part"), F.col("sub.key").alias("key")
    )
    x, y = keyed.alias("x"), keyed.alias("y")
    joined = x.join(
        y, (F.col("x.part") == F.col("y.part")) & (F.col("x.key") == F.col("y.key")) & (F.col("x.id") < F.col("y.id"))
    )
    dist = F.bit_count(F.col("x.code").bitwiseXOR(F.col("y.code")))
    return (
        joined.select(F.col("x.id").alias("a"), F.col("y.id").alias("b"), dist.cast("int").alias("distance"))
        .where(F.col("distance") <= max_distance)
        .dropDuplicates(["a", "b"])
    )


def connected_components(
    edges: "DataFrame", vertices: "DataFrame | None" = None, collect_max: int = 5_000_000, max_rounds: int = 200
) -> "DataFrame":
    """The connected component of every vertex of an undirected graph.

    Up to ``collect_max`` edges the edge list is collected to the driver and
    solved by SciPy (``scipy.sparse.csgraph.connected_components``); beyond,
    by min-label propagation in DataFrame joins: every vertex takes the
    smallest label among itself and its neighbours until none changes
    (rounds <= the graph's diameter + 1).

    Args:
        edges: ``(a: long, b: long)``.
        vertices: ``(id: long)``, for isolated vertices too (default: the
            vertices that appear in ``edges``).
        collect_max: the most edges solved at the driver.
        max_rounds: a bound on propagation rounds.

    Returns:
        DataFrame ``(id: long, component: long)``: the component is the
        smallest vertex id in it.

    Raises:
        RuntimeError: propagation did not settle in ``max_rounds`` rounds.
    """
    from pyspark.sql import functions as F

    spark = edges.sparkSession
    ends = edges.select(F.col("a").alias("id")).union(edges.select(F.col("b").alias("id")))
    if vertices is not None:
        ends = ends.union(vertices.select("id"))
    ids_df = ends.distinct()
    if edges.count() <= collect_max:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components as scipy_cc

        ids = np.sort(np.asarray([r["id"] for r in ids_df.collect()], np.int64))
        e = pd.DataFrame(edges.toPandas())
        a = np.searchsorted(ids, e["a"].to_numpy(np.int64))
        b = np.searchsorted(ids, e["b"].to_numpy(np.int64))
        g = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(ids), len(ids)))
        _, lab = scipy_cc(g, directed=False)
        first = np.full(lab.max() + 1 if len(lab) else 0, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, lab, ids)
        return spark.createDataFrame(pd.DataFrame({"id": ids, "component": first[lab]}), "id long, component long")
    both = edges.select("a", "b").union(edges.select(F.col("b").alias("a"), F.col("a").alias("b"))).cache()
    labels = ids_df.select("id", F.col("id").alias("component")).localCheckpoint()
    for _ in range(max_rounds):
        offered = both.join(labels, both.a == labels.id).select(
            F.col("b").alias("id"), F.col("component").alias("offer")
        )
        new = (
            labels.join(offered.groupBy("id").agg(F.min("offer").alias("offer")), "id", "left")
            .select("id", F.least("component", F.coalesce("offer", "component")).alias("component"))
            .localCheckpoint()
        )
        changed = (
            new.join(labels.withColumnRenamed("component", "old"), "id").where("component != old").limit(1).count()
        )
        labels = new
        if changed == 0:
            both.unpersist()
            return labels
    both.unpersist()
    raise RuntimeError(f"connected_components: labels still changing after {max_rounds} rounds")
