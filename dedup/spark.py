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

* :class:`SparkEngine`: the ``--engine spark`` run's distributed steps
  (hashing, decoding and embedding with ``mapInPandas``, a Parquet
  features table, and the two searches above), which
  :class:`dedup.pipeline.Deduplicator` calls in place of the local ones,
  and :meth:`SparkEngine.group`: the decisions as columns of the pair table
  and the split of each connected component as a group-apply
  (:mod:`dedup.spark_grouping`), and above ``exact_knn_max`` images
  :meth:`SparkEngine.pair_evidence`: the candidate pairs scored in the
  neighbour-search tasks that find them, the ranks and context radii by
  window functions (:mod:`dedup.spark_evidence`). Geometric verification
  (it reads the pixels of the pairs worth it) runs at the driver, with the
  local engine's code. Both engines give the same groups (tested);
  ``benchmarks/spark.py`` measures the two side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .discover import read_source
from .hashing import substrings
from .index import COARSE_DIM, _top_k, kmeans_lists

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from .calibration import PairModel
    from .grouping import Grouping, GroupingParams, Pairs

#: Rows per k-means list in :func:`neighbours` (each list is searched as one
#: dense matrix product in one task).
SPARK_LIST_SIZE = 1_024
#: Lists each vector is sent to: its nearest ``SPARK_LISTS_PER_ROW``.
SPARK_LISTS_PER_ROW = 3
#: Contents decoded and embedded per Spark job by :class:`SparkEngine`; each
#: job's results are committed to the features folder before the next
#: starts, so an interrupted cold run loses at most one chunk.
SPARK_CHUNK = 65_536
#: Most rows :func:`collect_pandas` brings to the driver in one transfer. A
#: scored pair row (:meth:`dedup.grouping.Pairs.to_frame`) is about 80 bytes
#: in Arrow, so one transfer stays well under Spark's default
#: ``spark.driver.maxResultSize`` of 1 GiB, which the candidate pairs of a
#: 1M-image run exceeded in one piece (``benchmarks/spark.py``).
COLLECT_ROWS = 2_000_000


def session(
    master: str = "local[2]", shuffle_partitions: int = 4, app_name: str = "dedup", driver_memory: str | None = None
) -> "SparkSession":
    """A Spark session for dedup's jobs (the running one if there is one).

    Args:
        master: the Spark master URL (``local[N]``, ``yarn``, ``k8s://...``,
            ``spark://...``).
        shuffle_partitions: ``spark.sql.shuffle.partitions``.
        driver_memory: ``spark.driver.memory`` (``"6g"``; in local mode the
            one JVM's heap), effective only when this call starts the JVM;
            ``None``: Spark's default (1g).

    Returns:
        A ``pyspark.sql.SparkSession`` with Arrow transfers on and the UI off.

    Raises:
        ImportError: PySpark is not installed (``pip install pyspark``).
    """
    import warnings

    from pyspark.sql import SparkSession

    # PySpark 4.x warns on every pandas conversion that it does not fully support pandas 3; the
    # conversions dedup uses are covered by tests/test_spark.py with pandas 3
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if driver_memory is not None:
        builder = builder.config("spark.driver.memory", driver_memory)
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


def _plan(df: "DataFrame", n: int, list_size: int, coarse_dim: int, sample_max: int, seed: int, stacked):
    """PCA and k-means lists trained at the driver on a sample of ``df``'s rows (``stacked(pdf)``: their vectors)."""
    from sklearn.decomposition import PCA

    n_lists = max(1, n // max(1, list_size))
    want = min(n, max(32 * n_lists, 2_000), sample_max)
    rows = pd.DataFrame(df.sample(fraction=min(1.0, 1.2 * want / max(n, 1)), seed=seed).limit(want).toPandas())
    S = stacked(rows)
    dim = max(1, min(coarse_dim, S.shape[1], len(S)))
    pca = PCA(dim, svd_solver="randomized", random_state=seed).fit(S)
    comp, mean = pca.components_.astype(np.float32), pca.mean_.astype(np.float32)
    return comp, mean, kmeans_lists((S - mean) @ comp.T, min(n_lists, len(S)), seed)


def _vec(pdf: pd.DataFrame) -> np.ndarray:
    """The ``vec`` column of a batch as an ``(m, d)`` float32 matrix."""
    return np.stack(pdf["vec"].to_numpy()).astype(np.float32)


def spread_to_lists(
    df: "DataFrame",
    stacked,
    list_size: int = SPARK_LIST_SIZE,
    lists_per_row: int = SPARK_LISTS_PER_ROW,
    coarse_dim: int = COARSE_DIM,
    sample_max: int = 50_000,
    seed: int = 0,
) -> "DataFrame":
    """Each row of ``df``, copied to each of its ``lists_per_row`` nearest
    k-means lists: ``df``'s columns plus ``list`` (long). The lists are
    trained at the driver on at most ``sample_max`` rows, after a PCA to
    ``coarse_dim`` dimensions, and broadcast; ``stacked(pdf)`` gives a
    batch's ``(m, d)`` float32 unit vectors. The search step of
    :func:`neighbours` and :func:`dedup.spark_evidence.neighbour_evidence`.
    """
    n = df.count()
    comp, mean, centres = _plan(df, n, list_size, coarse_dim, sample_max, seed, stacked)
    spark = df.sparkSession
    b_comp, b_mean, b_cent = (spark.sparkContext.broadcast(a) for a in (comp, mean, centres))
    r = int(max(1, min(lists_per_row, len(centres))))

    def assign(batches):
        C = b_cent.value
        c2 = (C**2).sum(axis=1)
        for pdf in batches:
            if pdf.empty:
                continue
            Y = (stacked(pdf) - b_mean.value) @ b_comp.value.T
            d = c2[None, :] - 2 * Y @ C.T
            near = np.argpartition(d, r - 1, axis=1)[:, :r] if r < len(C) else np.tile(np.arange(len(C)), (len(pdf), 1))
            out = pdf.iloc[np.repeat(np.arange(len(pdf)), near.shape[1])].reset_index(drop=True)
            out.insert(0, "list", near.ravel().astype(np.int64))
            yield out

    return df.mapInPandas(
        assign, ", ".join(["list long", *(f"{f.name} {f.dataType.simpleString()}" for f in df.schema.fields)])
    )


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
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spread = spread_to_lists(df, _vec, list_size, lists_per_row, coarse_dim, sample_max, seed)

    def search(pdf: pd.DataFrame) -> pd.DataFrame:
        V = _vec(pdf)
        ids = pdf["id"].to_numpy()
        cols, dist = _top_k(V @ V.T, min(k, len(V)))
        return pd.DataFrame({"id": ids, "nbrs": list(ids[cols]), "dists": list(dist.astype(np.float32))})

    out_schema = "id long, nbrs array<long>, dists array<float>"
    per_list = spread.groupBy("list").applyInPandas(search, out_schema)
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


def collect_pandas(df: "DataFrame", key: str, max_rows: int | None = None) -> pd.DataFrame:
    """A DataFrame to the driver as one pandas frame, in transfers of at most
    about ``max_rows`` rows, so that no single collect passes the cluster's
    ``spark.driver.maxResultSize``, whatever it is set to.

    The frame is persisted and counted once, then collected in
    ``ceil(rows / max_rows)`` slices by ``pmod(key, slices)`` (Arrow
    ``toPandas`` each), then unpersisted.

    Args:
        df: any DataFrame; key: an integer column spreading its rows
            (a pair table's ``i``).
        max_rows: rows per transfer, >= 1 (``None``: :data:`COLLECT_ROWS`).

    Returns:
        The rows in no particular order, the columns and dtypes of ``toPandas``.

    Raises:
        ValueError: ``max_rows < 1``.
    """
    from pyspark.sql import functions as F

    max_rows = COLLECT_ROWS if max_rows is None else max_rows
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    df = df.persist()
    try:
        slices = max(1, -(-df.count() // max_rows))
        if slices == 1:
            return pd.DataFrame(df.toPandas())
        parts = [pd.DataFrame(df.where(F.pmod(F.col(key), F.lit(slices)) == s).toPandas()) for s in range(slices)]
        return pd.concat(parts, ignore_index=True)
    finally:
        df.unpersist()


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


# ----------------------------------------------------------------------
# The --engine spark run: listing, hashing and embedding as Spark jobs,
# a Parquet features table, and the neighbour and pHash searches above.

#: Sub-folders of a Spark engine's features folder: per content, its facts
#: (pHash, size, colour descriptor and layout, or why it cannot be decoded), and per
#: content and backbone weights, its embedding.
FACTS_TABLE, VECTORS_TABLE = "facts", "vectors"

_FACTS_SCHEMA = (
    "sha256 string, decoder string, reason string, phash long, width int, height int, note string, colour array<float>"
)
_COMPUTED_SCHEMA = _FACTS_SCHEMA + ", vecs array<array<float>>, seconds double"

#: Backbones loaded in this Python worker, by cache id: Spark reuses its
#: Python workers between tasks, so a model loads once per worker.
_LOADED: dict = {}


def _digest_batches(batches):
    """mapInPandas: ``(row, path)`` -> ``(row, sha256, reason)``."""
    import hashlib

    for pdf in batches:
        sha, why = [], []
        for p in pdf["path"]:
            try:
                sha.append(hashlib.sha256(read_source(p)).hexdigest())
                why.append(None)
            except OSError as exc:
                sha.append(None)
                why.append(exc.strerror or str(exc))
        yield pd.DataFrame({"row": pdf["row"].to_numpy(), "sha256": sha, "reason": why})


def _loaded(nets: list) -> list:
    """This worker's loaded copy of each backbone (loaded on first use)."""
    out = []
    for net in nets:
        key = (type(net).__name__, net.cache_id)
        if key not in _LOADED:
            net.load()
            _LOADED[key] = net
        out.append(_LOADED[key])
    return out


def _feature_batches(nets: list, decoder: str, max_pixels: int | None, batch_size: int):
    """mapInPandas factory: ``(sha256, path)`` rows -> facts and embeddings
    (:data:`_COMPUTED_SCHEMA`), by the local engine's own per-file code
    (:func:`dedup.embed.decode_task`, reading through
    :func:`dedup.discover.read_source`),
    ``batch_size`` images per inference."""
    import time

    from .embed import CHANGED_WHILE_READ, decode_task

    def run(batches):
        models = _loaded(nets) if nets else []
        for pdf in batches:
            for a in range(0, len(pdf), batch_size):
                part = pdf.iloc[a : a + batch_size]
                rows, inputs = [], [[] for _ in models]
                for sha, path in zip(part["sha256"], part["path"]):
                    row = {"sha256": sha, "decoder": decoder, "reason": None, "phash": None, "width": None}
                    row.update(height=None, note=None, colour=None, vecs=None, seconds=0.0)
                    need = [True] * len(models)
                    digest, reason, facts, prepared = decode_task(path, models, need, max_pixels)
                    if digest is not None and digest != sha:
                        reason = CHANGED_WHILE_READ
                    if reason is not None:
                        row["reason"] = reason
                    else:
                        row.update(
                            phash=int(np.uint64(facts.phash).view(np.int64)),
                            width=facts.width,
                            height=facts.height,
                            note=facts.note,
                            colour=facts.stored(),
                        )
                        for b, x in enumerate(prepared):
                            inputs[b].append(x)
                    rows.append(row)
                ok = [r for r in rows if r["reason"] is None]
                t0 = time.perf_counter()
                embs = [m.embed(np.stack(x)) for m, x in zip(models, inputs)] if ok else []
                seconds = time.perf_counter() - t0
                for t, r in enumerate(ok):
                    r["vecs"] = [e[t] for e in embs]
                    r["seconds"] = seconds / len(ok)
                yield pd.DataFrame(rows)

    return run


class SparkEngine:
    """The ``--engine spark`` run's distributed steps (``run`` calls them;
    geometric verification and the report are the local engine's code on
    the driver).

    * :meth:`digests`: SHA-256 of every file (``mapInPandas``);
    * :meth:`decode_and_embed`: pHash, colour descriptor and embeddings of
      every content not yet in the features folder (``mapInPandas``, each
      Python worker loading the models once), appended to the folder's
      Parquet tables; then everything read back to the driver;
    * :meth:`pair_evidence`: the candidate pairs and their evidence
      (:mod:`dedup.spark_evidence`; the run calls it above its
      ``exact_knn_max`` rows only; below, the driver's exact search and
      scoring are much faster than Spark jobs: ``benchmarks/spark.py``);
    * :meth:`neighbours`: :func:`neighbours` (the run calls it above
      ``exact_knn_max`` rows when an adapted model (``dedup fit``) projects
      the fused space, which :meth:`pair_evidence` does not search; the
      evidence is then scored at the driver);
    * :meth:`phash_pairs`: :func:`phash_pairs`;
    * :meth:`group`: the decisions and the groups
      (:mod:`dedup.spark_grouping`).

    Args:
        master: the Spark master URL (``local[*]``, ``yarn``, ``k8s://...``),
            used when no session is running.
        features: the features folder (Parquet tables :data:`FACTS_TABLE`
            keyed by ``(sha256, decoder)`` and :data:`VECTORS_TABLE` keyed by
            ``(sha256, backbone, weights)``: a re-run embeds only new
            contents); ``None``: nothing kept between runs. It may be any
            path Spark writes to (``s3a://...``, ``dbfs:/...``).
        shuffle_partitions: ``spark.sql.shuffle.partitions``.
        partitions: the files are spread over this many tasks (default:
            Spark's default parallelism, at least 2).
    """

    name = "spark"

    def __init__(
        self,
        master: str = "local[*]",
        features: str | None = None,
        shuffle_partitions: int = 8,
        partitions: int | None = None,
    ):
        self.master = master
        self.features = None if features is None else str(features)
        self.shuffle_partitions = shuffle_partitions
        self.partitions = partitions
        self._spark: "SparkSession | None" = None

    @property
    def spark(self) -> "SparkSession":
        """The Spark session (started on first use; a running one is reused)."""
        if self._spark is None:
            self._spark = session(self.master, self.shuffle_partitions)
            self._spark.sparkContext.setLogLevel("ERROR")
        return self._spark

    def _parallelism(self) -> int:
        return self.partitions or max(2, self.spark.sparkContext.defaultParallelism)

    def describe(self) -> dict:
        """run.json's ``engine`` entry."""
        sc = self.spark.sparkContext
        return {
            "name": "spark",
            "master": sc.master,
            "spark_version": sc.version,
            "features": self.features,
            "partitions": self._parallelism(),
        }

    def digests(self, paths: list) -> list:
        """SHA-256 hex digest of each file, in order; an ``OSError`` (its
        message the reason, as :func:`dedup.digest.digest_files` gives) where
        a file cannot be read."""
        if not paths:
            return []
        pdf = pd.DataFrame({"row": np.arange(len(paths), dtype=np.int64), "path": [str(p) for p in paths]})
        df = self.spark.createDataFrame(pdf, "row long, path string").repartition(self._parallelism())
        got = pd.DataFrame(df.mapInPandas(_digest_batches, "row long, sha256 string, reason string").toPandas())
        got = got.set_index("row").reindex(np.arange(len(paths)))
        return [s if isinstance(s, str) else OSError(r or "unreadable") for s, r in zip(got["sha256"], got["reason"])]

    def _table(self, name: str) -> str:
        assert self.features is not None
        return f"{self.features.rstrip('/')}/{name}"

    def _read(self, name: str) -> "DataFrame | None":
        """A stored features table, or ``None`` when there is none yet."""
        if self.features is None:
            return None
        from pyspark.errors import AnalysisException

        try:
            return self.spark.read.parquet(self._table(name))
        except AnalysisException:  # no table yet (PATH_NOT_FOUND)
            return None

    def decode_and_embed(
        self,
        paths: list,
        digests: list[str],
        nets: list,
        *,
        batch_size: int = 32,
        max_pixels: int | None = None,
    ):
        """:func:`dedup.embed.decode_and_embed` on Spark: the same
        :class:`dedup.embed.Embedded`, computing only what the features
        folder lacks and appending it there, :data:`SPARK_CHUNK` contents
        per job (each committed by Spark's Parquet writer before the next).

        Args:
            paths: the files (local paths or fsspec URLs); digests: their SHA-256.
            nets: the backbones (checked; each worker loads its own copy).
            batch_size: images per inference batch; max_pixels: the
                decompression-bomb guard in pixels.
        """
        from .embed import decoder_id

        fill = _Fill(len(paths), digests, nets)
        out = fill.out
        if not paths:
            return out
        decoder = decoder_id(max_pixels)
        rows_of = fill.rows_of
        first = pd.DataFrame({"sha256": list(rows_of), "path": [str(paths[r[0]]) for r in rows_of.values()]})
        self._read_stored(fill, first, decoder)
        todo = [k for k, d in enumerate(first["sha256"]) if out.missing(rows_of[d][0])]
        out.from_cache = len(paths) - sum(len(rows_of[first["sha256"][k]]) for k in todo) - len(out.failed)
        for a in range(0, len(todo), SPARK_CHUNK):  # one job and one commit per chunk: an interrupted run resumes
            self._compute(first.iloc[todo[a : a + SPARK_CHUNK]], nets, decoder, max_pixels, batch_size, fill)
        return out

    def _read_stored(self, fill: "_Fill", first: pd.DataFrame, decoder: str) -> None:
        """Fill what the features folder already holds for the ``first`` rows' contents."""
        from pyspark.sql import functions as F

        facts, vecs = self._read(FACTS_TABLE), self._read(VECTORS_TABLE)
        if facts is None and vecs is None:
            return
        wanted = self.spark.createDataFrame(first[["sha256"]], "sha256 string")
        if facts is not None:
            known = facts.where(F.col("decoder") == decoder).join(wanted, "sha256").dropDuplicates(["sha256"])
            for pdf in _chunks(known):
                fill.facts(pdf)
        if vecs is not None:
            keys = F.concat_ws(" ", "backbone", "weights")
            known = vecs.where(keys.isin(list(fill.col_of))).join(wanted, "sha256")
            known = known.dropDuplicates(["sha256", "backbone", "weights"])
            for pdf in _chunks(known.select("sha256", keys.alias("key"), "vec")):
                for sha, key, v in zip(pdf["sha256"], pdf["key"], pdf["vec"]):
                    fill.vector(sha, fill.col_of[key], v)

    def _compute(self, first: pd.DataFrame, nets, decoder: str, max_pixels, batch_size: int, fill: "_Fill") -> None:
        """Decode and embed the ``first`` ``(sha256, path)`` rows on the
        executors; store the results (features folder) and fill ``fill.out``."""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from .embed import CHANGED_WHILE_READ

        todo = self.spark.createDataFrame(first.reset_index(drop=True), "sha256 string, path string")
        todo = todo.repartition(min(len(first), self._parallelism()))
        computed = todo.mapInPandas(_feature_batches(nets, decoder, max_pixels, batch_size), _COMPUTED_SCHEMA)
        computed = computed.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            if self.features is not None:
                # a file's content that cannot be decoded is remembered; a file that could not be read is not
                why = F.coalesce(F.col("reason"), F.lit(""))
                keep = computed.where((why != CHANGED_WHILE_READ) & ~why.startswith("unreadable: "))
                keep.select(*[c.split()[0] for c in _FACTS_SCHEMA.split(", ")]).write.mode("append").parquet(
                    self._table(FACTS_TABLE)
                )
                vecs = keep.where(F.col("vecs").isNotNull()).select("sha256", F.posexplode("vecs").alias("b", "vec"))
                names = F.array(*[F.lit(net.name) for net in nets])
                weights = F.array(*[F.lit(net.cache_id) for net in nets])
                vecs.select(
                    "sha256", names[F.col("b")].alias("backbone"), weights[F.col("b")].alias("weights"), "vec"
                ).write.mode("append").parquet(self._table(VECTORS_TABLE))
            for pdf in _chunks(computed):
                fill.facts(pdf)
                fill.out.inference_seconds += float(pdf["seconds"].sum())
                for sha, vs in zip(pdf["sha256"], pdf["vecs"]):
                    if vs is not None:
                        for b, v in enumerate(vs):
                            fill.vector(sha, b, v)
                        fill.out.embedded += len(fill.rows_of[sha])
        finally:
            computed.unpersist()

    def neighbours(self, X, k: int) -> np.ndarray:
        """``(n, k)`` int64 ids of each row's ``k`` nearest by cosine distance
        (-1 padded), by :func:`neighbours`; ``X`` ``(n, d)`` float32
        L2-normalised rows or a :class:`dedup.index.WeightedVectors`."""
        from .index import WeightedVectors

        X = X.stack() if isinstance(X, WeightedVectors) else np.asarray(X, np.float32)
        if len(X) == 0:
            return np.zeros((0, k), np.int64)
        df = vectors_frame(self.spark, X).repartition(self._parallelism())
        return neighbour_arrays(neighbours(df, k), len(X), k)[0]

    def pair_evidence(
        self,
        embeddings: list[np.ndarray],
        colours: np.ndarray,
        layouts: np.ndarray | None,
        codes: np.ndarray,
        phash_pairs: np.ndarray | None,
        k: int,
        colour_weight: float,
        k_context: int = 10,
    ) -> "tuple[np.ndarray, Pairs]":
        """The candidate pairs and their evidence as Spark jobs
        (:func:`dedup.spark_evidence.pair_evidence`: each pair scored in the
        neighbour-search task that finds it, the radii and ranks by window
        functions), in place of the local :func:`dedup.grouping.candidate_pairs`
        and :func:`~dedup.grouping.score_pairs`.

        Args:
            embeddings: per backbone ``(n, d_b)`` float32, L2-normalised.
            colours: ``(n, DIM)`` float32; layouts: ``(n, LAYOUT_DIM)`` uint8
                or ``None``; codes: ``(n,)`` uint64 pHashes.
            phash_pairs: ``(e, 2)`` int64 pHash near-duplicates, also candidates.
            k: list length (the row itself first); colour_weight, k_context:
                the grouping's settings.

        Returns:
            ``(fused_ids, pairs)``: ``(n, k)`` int64 fused-space lists (-1
            padded) and the :class:`dedup.grouping.Pairs` (``i < j``, sorted;
            not yet verified).
        """
        from .grouping import Pairs
        from .spark_evidence import features_frame, list_arrays, pair_evidence

        n = len(colours)
        df = features_frame(self.spark, embeddings, colours, layouts, codes, self._parallelism()).persist()
        extra = None
        if phash_pairs is not None and len(phash_pairs):
            pdf = pd.DataFrame(np.sort(np.asarray(phash_pairs, np.int64), axis=1), columns=["a", "b"])
            extra = self.spark.createDataFrame(pdf, "a long, b long")
        scored, lists = pair_evidence(df, len(embeddings), colour_weight, k, k_context, extra)
        try:
            got = collect_pandas(scored, "i").sort_values(["i", "j"], kind="stable").reset_index(drop=True)
            fused_ids = list_arrays(lists, n, k)
        finally:
            lists.unpersist()
            df.unpersist()
        return fused_ids, Pairs.from_frame(got)

    def group(
        self,
        n: int,
        pairs: "Pairs",
        hash_pairs: dict,
        model: "PairModel",
        params: "GroupingParams | None" = None,
        decisions: pd.DataFrame | None = None,
        unverified: "PairModel | None" = None,
    ) -> "tuple[Grouping, np.ndarray]":
        """The decisions and the grouping of :func:`dedup.grouping.group` as
        Spark jobs (:mod:`dedup.spark_grouping`: the decision as columns of
        the pair table, the split per connected component as a group-apply).

        Args:
            n: images; pairs: the scored :class:`dedup.grouping.Pairs`;
            hash_pairs: ``{"sha256": (e, 2), "phash": (e, 2)}`` int64 pairs.
            model, unverified: the pair models of
                :func:`dedup.spark_grouping.decide`; params: the settings.
            decisions: a person's decisions (``i, j, same``) or ``None``.

        Returns:
            ``(grouping, confidence)``: the :class:`dedup.grouping.Grouping`
            and the ``(m,)`` float64 P(same product) of every pair.
        """
        from .spark_grouping import decide, group_pairs, pairs_frame

        decided = decide(pairs_frame(self.spark, pairs, self._parallelism()), model, params, unverified).persist()
        confidence = np.full(len(pairs.ij), np.nan, np.float64)
        got = collect_pandas(decided.select("row", "confidence"), "row")
        confidence[got["row"].to_numpy(np.int64)] = got["confidence"].to_numpy(np.float64)
        grouping = group_pairs(decided, n, hash_pairs, params, decisions)
        decided.unpersist()
        return grouping, confidence

    def phash_pairs(self, codes: np.ndarray, max_distance: int) -> np.ndarray:
        """``(e, 2)`` int64 pairs ``i < j`` of pHashes within ``max_distance``
        bits, sorted, by :func:`phash_pairs` (as
        :func:`dedup.hashing.near_duplicate_pairs` returns them)."""
        codes = np.ascontiguousarray(codes, np.uint64)
        if len(codes) < 2:
            return np.zeros((0, 2), np.int64)
        pdf = pd.DataFrame({"id": np.arange(len(codes), dtype=np.int64), "code": codes.view(np.int64)})
        df = self.spark.createDataFrame(pdf, "id long, code long").repartition(self._parallelism())
        got = pd.DataFrame(phash_pairs(df, max_distance).select("a", "b").toPandas())
        pairs = got.to_numpy(np.int64).reshape(-1, 2)
        return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


class _Fill:
    """An :class:`dedup.embed.Embedded` for ``n`` items, filled from rows
    read back from Spark, each content's results copied to every item with
    that content."""

    def __init__(self, n: int, digests: list[str], nets: list):
        from .embed import Embedded

        self.out = Embedded.empty(n, nets)
        self.rows_of: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            self.rows_of.setdefault(d, []).append(i)
        self.col_of = {f"{net.name} {net.cache_id}": b for b, net in enumerate(nets)}

    def facts(self, pdf: pd.DataFrame) -> None:
        """Record facts rows (:data:`_FACTS_SCHEMA`'s columns) or their skip reasons."""
        from .embed import Facts

        for r in pdf.itertuples(index=False):
            for i in self.rows_of[r.sha256]:
                if isinstance(r.reason, str):
                    self.out.failed[i] = r.reason
                elif r.colour is not None:
                    ph = int(np.int64(r.phash).view(np.uint64))
                    facts = Facts.from_stored(ph, int(r.width), int(r.height), r.colour, r.note or "")
                    if facts is not None:  # else stored by another descriptor version
                        self.out.set_facts(i, facts)

    def vector(self, sha: str, b: int, v) -> None:
        """Record backbone ``b``'s embedding of content ``sha``."""
        for i in self.rows_of[sha]:
            self.out.vectors[b][i] = v
            self.out.have[b][i] = True


def _chunks(df: "DataFrame", rows: int = 8_192):
    """A DataFrame to the driver as pandas frames of at most ``rows`` rows
    (through ``toLocalIterator``: driver memory bounded by one partition)."""
    buf: list = []
    cols = df.columns
    for row in df.toLocalIterator():
        buf.append(tuple(row))
        if len(buf) >= rows:
            yield pd.DataFrame(buf, columns=cols)
            buf = []
    if buf:
        yield pd.DataFrame(buf, columns=cols)
