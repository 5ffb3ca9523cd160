"""Stage 6 on Spark: the pair decisions as columns and the grouping as a group-apply.

The local engine decides and groups in one process (:func:`dedup.grouping.group`).
Here the same code runs over Spark DataFrames, so that the pair table (10^7
pairs and more) need not sit whole in one Python process:

1. :func:`pairs_frame`: the scored pairs (:class:`dedup.grouping.Pairs`) as a
   DataFrame, one row per pair, one column per piece of evidence.
2. :func:`decide`: the pair model's calibrated P(same product) as a
   ``confidence`` column and the decision as a ``decision`` column
   (``join`` at ``>= min_confidence``, ``review`` at ``>= review_confidence``,
   else ``apart``), computed by ``mapInPandas`` with the local engine's
   :meth:`dedup.calibration.PairModel.predict_pairs`.
3. :func:`group_pairs`: the connected components of every pair that may
   join (SHA-256 and pHash pairs, confirmed decisions, ``join`` decisions;
   :func:`dedup.spark.connected_components`), then the per-component split
   as a cogrouped ``applyInPandas`` that runs :func:`dedup.grouping.group`
   on the pairs and links of whole components (a bucket of them per task,
   :data:`BUCKETS_PER_CORE`). The split of a component depends
   only on what lies inside it (joins are tried strongest first and the
   linkage check averages the pairs between two parts of one component),
   and a component's images are numbered in the run's order, so the groups
   equal those of :func:`dedup.grouping.group` on the whole table (tested).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .calibration import PairModel
from .grouping import Grouping, GroupingParams, Pairs, _renumber, group

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

#: Tasks of the split per core of the session: components are independent,
#: so a task splits a bucket of them (chosen by a hash of the component id)
#: in one call of :func:`dedup.grouping.group`, instead of one Python call
#: per component (measured in ``benchmarks/spark.py``: at 100,000 rows the
#: per-component group-apply took 207 s, most of it per-call overhead).
BUCKETS_PER_CORE = 4
_SPLIT_SCHEMA = "id long, label long, stage string, confidence double, distance float, partner long"


def pairs_frame(spark: "SparkSession", pairs: Pairs, partitions: int | None = None) -> "DataFrame":
    """The scored pairs as a DataFrame: ``row`` (long, the pair's row in
    ``pairs``) and the columns of :meth:`dedup.grouping.Pairs.to_frame`.

    Args:
        spark: the session; pairs: ``m`` scored pairs.
        partitions: spread over this many partitions (default: Spark's
            default parallelism).
    """
    pdf = pairs.to_frame()
    pdf.insert(0, "row", np.arange(len(pdf), dtype=np.int64))
    df = spark.createDataFrame(pdf)
    return df.repartition(partitions or max(2, spark.sparkContext.defaultParallelism))


def _decided(model: PairModel, unverified: PairModel | None, params: GroupingParams):
    """mapInPandas: pair rows -> the same rows with ``confidence`` and ``decision``."""

    def run(batches):
        for pdf in batches:
            pairs = Pairs.from_frame(pdf)
            p = np.empty(len(pdf), np.float64)
            checked = np.ones(len(pdf), bool) if unverified is None else pairs.inliers >= 0
            p[checked] = model.predict_pairs(pairs.subset(checked))
            if unverified is not None:
                p[~checked] = unverified.predict_pairs(pairs.subset(~checked))
            out = pdf.assign(confidence=p)
            out["decision"] = np.where(
                p >= params.min_confidence, "join", np.where(p >= params.review_confidence, "review", "apart")
            )
            yield out

    return run


def decide(
    df: "DataFrame", model: PairModel, params: GroupingParams | None = None, unverified: PairModel | None = None
) -> "DataFrame":
    """The decision of every pair, as two new columns.

    Args:
        df: a :func:`pairs_frame` table.
        model: the pair model (:meth:`dedup.calibration.PairModel.load`).
        params: the thresholds (:class:`dedup.grouping.GroupingParams`).
        unverified: with screened verification, the model for the pairs
            left unverified (``inliers < 0``), as
            :meth:`dedup.pipeline.Deduplicator.confidence` applies it;
            ``None``: ``model`` for every pair.

    Returns:
        ``df`` with ``confidence`` (double, calibrated P(same product) in
        (0, 1)) and ``decision`` (string: ``join``, ``review`` or ``apart``).
    """
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    params = params or GroupingParams()
    schema = StructType(
        [*df.schema.fields, StructField("confidence", DoubleType()), StructField("decision", StringType())]
    )
    return df.mapInPandas(_decided(model, unverified, params), schema)


def _links(hash_pairs: dict, decisions: pd.DataFrame | None) -> pd.DataFrame:
    """The pairs that are not scored-pair decisions: ``kind, i, j, order``
    with ``i < j`` (``order``: the row's place, in which :func:`group` applies them)."""
    parts = []
    for kind in ("sha256", "phash"):
        ij = np.sort(np.asarray(hash_pairs.get(kind, np.zeros((0, 2))), np.int64).reshape(-1, 2), axis=1)
        parts.append(pd.DataFrame({"kind": kind, "i": ij[:, 0], "j": ij[:, 1]}))
    if decisions is not None and len(decisions):
        a, b = decisions["i"].to_numpy(np.int64), decisions["j"].to_numpy(np.int64)
        same = decisions["same"].to_numpy(bool)
        parts.append(
            pd.DataFrame(
                {"kind": np.where(same, "confirmed", "rejected"), "i": np.minimum(a, b), "j": np.maximum(a, b)}
            )
        )
    out = pd.concat(parts, ignore_index=True)
    out["order"] = np.arange(len(out), dtype=np.int64)
    return out


def _split(params: GroupingParams, columns: list[str]):
    """cogroup applyInPandas: the pairs and links of a bucket of whole
    components -> their images' labels (the smallest image id of each
    group), stage, confidence, distance and partner, by one call of
    :func:`dedup.grouping.group` (on a union of components it splits each
    as it would alone: no join or check crosses a component)."""

    def run(pairs_pdf: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
        if pairs_pdf.empty:  # a component joined by links alone
            pairs_pdf = pd.DataFrame({c: pd.Series([], dtype=np.float32) for c in columns})
        ends = [frame[c].to_numpy(np.int64) for frame in (pairs_pdf, links) for c in ("i", "j")]
        ids = np.unique(np.concatenate(ends))
        # images numbered and pairs and links ordered as in the run, so that ties break as on the whole table
        local = pairs_pdf.sort_values("row", kind="stable")[columns].copy()
        links = links.sort_values("order", kind="stable")
        local["i"], local["j"] = np.searchsorted(ids, local["i"]), np.searchsorted(ids, local["j"])
        pairs = Pairs.from_frame(local)
        links = links.assign(i=np.searchsorted(ids, links["i"]), j=np.searchsorted(ids, links["j"]))

        def of(kind: str) -> np.ndarray:
            sel = links[links["kind"] == kind]
            return np.stack([sel["i"].to_numpy(np.int64), sel["j"].to_numpy(np.int64)], axis=1).reshape(-1, 2)

        told = links[links["kind"].isin(["confirmed", "rejected"])]
        decisions = pd.DataFrame({"i": told["i"], "j": told["j"], "same": told["kind"] == "confirmed"})
        hashes = {"sha256": of("sha256"), "phash": of("phash")}
        g = group(len(ids), pairs, local["confidence"].to_numpy(np.float64), hashes, params, decisions)
        first = np.full(g.labels.max() + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, g.labels, ids)
        return pd.DataFrame(
            {
                "id": ids,
                "label": first[g.labels],
                "stage": g.stage.astype(str),
                "confidence": g.confidence,
                "distance": g.distance.astype(np.float32),
                "partner": np.where(g.partner >= 0, ids[np.maximum(g.partner, 0)], -1),
            }
        )

    return run


def group_pairs(
    decided: "DataFrame",
    n: int,
    hash_pairs: dict[str, np.ndarray],
    params: GroupingParams | None = None,
    decisions: pd.DataFrame | None = None,
) -> Grouping:
    """:func:`dedup.grouping.group` over a :func:`decide` table, per component.

    Args:
        decided: a :func:`decide` table (``row``, the pair columns,
            ``confidence``, ``decision``).
        n: number of images (ids ``0..n-1``).
        hash_pairs: ``{"sha256": (e, 2), "phash": (e, 2)}`` int64 pairs.
        params: settings (:class:`dedup.grouping.GroupingParams`).
        decisions: optional ``i, j, same`` table of a person's decisions.

    Returns:
        The :class:`dedup.grouping.Grouping` that :func:`dedup.grouping.group`
        gives on the same pairs (its ``review`` rows index ``decided``'s ``row``).
    """
    from pyspark.sql import functions as F

    from .spark import connected_components

    params = params or GroupingParams()
    spark = decided.sparkSession
    links_pdf = _links(hash_pairs, decisions)
    links = spark.createDataFrame(links_pdf, "kind string, i long, j long, order long")
    decided = decided.persist()
    phash = links.where(F.col("kind") == "phash").select("i", "j")
    # the edges that may join: a pHash pair joins only when its colours agree (rule 3 of dedup.grouping)
    close = decided.join(phash, ["i", "j"]).where(F.col("colour") <= params.phash_colour_cutoff).select("i", "j")
    edges = (
        decided.where(F.col("confidence") >= params.min_confidence)
        .select("i", "j")
        .union(close)
        .union(links.where(F.col("kind").isin("sha256", "confirmed")).select("i", "j"))
        .select(F.col("i").alias("a"), F.col("j").alias("b"))
    )
    comps = connected_components(edges).cache()
    ca = comps.select(F.col("id").alias("i"), F.col("component").alias("ca"))
    cb = comps.select(F.col("id").alias("j"), F.col("component").alias("cb"))

    def within(df: "DataFrame") -> "DataFrame":  # rows with both ends in one component, and its id
        both = df.join(ca, "i").join(cb, "j").where(F.col("ca") == F.col("cb"))
        return both.withColumnRenamed("ca", "component").drop("cb")

    inside = within(decided)
    links_in = within(links).select("component", "kind", "i", "j", "order")
    columns = [c for c in decided.columns if c not in ("row", "decision")]  # the pair columns and confidence
    # components are independent, so several share a task: one call of group() per bucket, not per component
    buckets = max(1, spark.sparkContext.defaultParallelism) * BUCKETS_PER_CORE
    bucket = (F.abs(F.xxhash64("component")) % buckets).alias("bucket")
    split = (
        inside.select(bucket, "row", *columns)
        .groupBy("bucket")
        .cogroup(links_in.select(bucket, "kind", "i", "j", "order").groupBy("bucket"))
        .applyInPandas(_split(params, ["row", *columns]), _SPLIT_SCHEMA)
    )
    got = pd.DataFrame(split.toPandas())
    comps.unpersist()
    labels = np.arange(n, dtype=np.int64)
    stage = np.full(n, "single", dtype=object)
    confidence = np.full(n, np.nan, np.float64)
    distance = np.full(n, np.nan, np.float32)
    partner = np.full(n, -1, np.int64)
    at = got["id"].to_numpy(np.int64)
    labels[at] = got["label"].to_numpy(np.int64)
    stage[at] = got["stage"].to_numpy(object)
    confidence[at] = got["confidence"].to_numpy(np.float64)
    distance[at] = got["distance"].to_numpy(np.float32)
    partner[at] = got["partner"].to_numpy(np.int64)
    review = _review(decided, labels, params, links_pdf)
    decided.unpersist()
    return Grouping(_renumber(labels), stage, confidence, distance, partner, review)


def _review(decided: "DataFrame", labels: np.ndarray, params: GroupingParams, links: pd.DataFrame) -> np.ndarray:
    """The doubtful pairs left apart and not decided by a person, as
    :func:`dedup.grouping.group` lists them: rows, strongest first."""
    from pyspark.sql import functions as F

    doubt = pd.DataFrame(
        decided.where(F.col("confidence") >= params.review_confidence).select("row", "i", "j", "confidence").toPandas()
    )
    told = links[links["kind"].isin(["confirmed", "rejected"])]
    decided_keys = set(zip(told["i"].tolist(), told["j"].tolist()))
    i, j = doubt["i"].to_numpy(np.int64), doubt["j"].to_numpy(np.int64)
    keep = (labels[i] != labels[j]) & np.array([(a, b) not in decided_keys for a, b in zip(i, j)], bool)
    doubt = doubt[keep].sort_values("row", kind="stable")
    rows, conf = doubt["row"].to_numpy(np.int64), doubt["confidence"].to_numpy(np.float64)
    return rows[np.argsort(-conf, kind="stable")]
