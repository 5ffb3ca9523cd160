"""Stage 6's pair evidence as Spark jobs (``--engine spark``), computed where
both images of a pair already are.

The local engine scores candidate pairs in one process
(:func:`dedup.grouping.score_pairs`), gathering both rows of every pair from
the embedding and colour matrices. On Spark those rows live on executors,
and shipping both rows of each candidate pair through a join would move
every row's features about 16 times (twice per pair, 8 pairs a row; about
140 GB at a million images with one 1280-d backbone). Instead:

* **Evidence inside the neighbour search.** The k nearest of each row are
  found list by list (the k-means lists of :func:`dedup.spark.neighbours`),
  and the search task that finds a pair holds both rows: it computes that
  pair's evidence on the spot (per-backbone cosine distances, the colour
  and colour-layout distances, the fused distance, the pHash Hamming
  distance) with the local engine's own functions. One search per space:
  each backbone's embedding, and the colour-fused space.
* **Neighbourhood statistics with window functions.** Each row's list over
  all lists is ranked by a window (``row_number`` over the row, ordered by
  distance); the context radius (mean distance to the ``k_context``
  nearest) and the nearest-neighbour distance are aggregates over those
  ranks, and each pair's ranks in the two lists are joins on (row,
  neighbour): small columns, never the vectors.
* **The rest as columns**: the contextual and relative distances from the
  radii joined on both ends of a pair. The few pHash near-duplicate pairs
  that no list holds are scored through a join of the pair with both rows.

The result is the pair table of :meth:`dedup.grouping.Pairs.to_frame`
(geometric verification not yet done: ``inliers = -1``), which
:mod:`dedup.spark_grouping` turns into decisions and groups, and which equals
the local engine's :func:`~dedup.grouping.score_pairs` on the same neighbour
lists (tested, up to float32 rounding).

Rows are ``(id, e0 .. e{B-1}, colour, layout, code)``
(:func:`features_frame`): one ``array<float>`` column per backbone's
L2-normalised embedding, the colour descriptor (:mod:`dedup.colour`), the
colour layout as ``binary`` (``LAYOUT_DIM`` bytes, or null when unknown) and
the 64-bit pHash as a signed ``long``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .grouping import (
    CONTEXT_PRIOR_RADIUS,
    REENCODE_COLOUR_DISTANCE,
    REENCODE_PHASH_BITS,
    SAME_CONTENT_DISTANCE,
    pair_columns,
)
from .index import COARSE_DIM, WeightedVectors, _top_k
from .spark import SPARK_LIST_SIZE, SPARK_LISTS_PER_ROW, spread_to_lists

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

#: Rows of a k-means list searched (and their found pairs scored) at once in
#: :func:`neighbour_evidence`: memory ``SEARCH_BLOCK x list rows`` float32
#: similarities plus ``2 x SEARCH_BLOCK x k`` gathered rows (about 400 MB at
#: k = 11 and 2,144 floats a row). The first 1M-row run gathered a whole
#: list's pairs at once, and a large list ran a Python worker out of memory.
SEARCH_BLOCK = 1_024

#: Evidence columns of a scored pair, besides ``per_backbone_b`` (float32 each, ``phash_bits`` int64).
_EVIDENCE = ("colour", "fused", "layout_mean", "layout_max")


def features_frame(
    spark: "SparkSession",
    embeddings: list[np.ndarray],
    colours: np.ndarray,
    layouts: np.ndarray | None,
    codes: np.ndarray,
    partitions: int | None = None,
) -> "DataFrame":
    """The rows as a DataFrame ``(id, e0 .. e{B-1}, colour, layout, code)``.

    Args:
        embeddings: per backbone ``(n, d_b)`` float32, L2-normalised.
        colours: ``(n, dedup.colour.DIM)`` float32 colour descriptors.
        layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8, or ``None`` (the
            colour distance then stands in for the layout distances, as in
            :func:`dedup.grouping.score_pairs`).
        codes: ``(n,)`` uint64 pHashes.
        partitions: spread over this many partitions (default: Spark's
            default parallelism, at least 2).
    """
    n = len(colours)
    pdf = pd.DataFrame({"id": np.arange(n, dtype=np.int64)})
    fields = ["id long"]
    for b, X in enumerate(embeddings):
        pdf[f"e{b}"] = list(np.asarray(X, np.float32))
        fields.append(f"e{b} array<float>")
    pdf["colour"] = list(np.asarray(colours, np.float32))
    pdf["layout"] = [None] * n if layouts is None else [bytes(r) for r in np.asarray(layouts, np.uint8)]
    pdf["code"] = np.ascontiguousarray(codes, np.uint64).view(np.int64)
    fields += ["colour array<float>", "layout binary", "code long"]
    df = spark.createDataFrame(pdf, ", ".join(fields))
    return df.repartition(partitions or max(2, spark.sparkContext.defaultParallelism))


def _parts(pdf: pd.DataFrame, n_backbones: int) -> list[np.ndarray]:
    """The embeddings and the colour descriptors of a batch of rows, as float32 matrices."""
    cols = [f"e{b}" for b in range(n_backbones)] + ["colour"]
    return [np.stack(pdf[c].to_numpy()).astype(np.float32) for c in cols]


def _layouts(pdf: pd.DataFrame) -> np.ndarray | None:
    """The batch's colour layouts ``(m, LAYOUT_DIM)`` uint8, or ``None`` when any is missing."""
    raw = pdf["layout"].to_numpy()
    if any(x is None for x in raw):
        return None
    return np.stack([np.frombuffer(bytes(x), np.uint8) for x in raw])


def _scored(
    parts_a: list[np.ndarray],
    parts_b: list[np.ndarray],
    layouts_a: np.ndarray | None,
    layouts_b: np.ndarray | None,
    codes_a: np.ndarray,
    codes_b: np.ndarray,
    fused_weights: list[float],
) -> dict[str, np.ndarray]:
    """The evidence columns of pairs whose two rows are at hand: the local
    engine's :func:`dedup.grouping.pair_columns` (``parts``: the embeddings,
    then the colour descriptors), plus ``fused``, the cosine distance in
    the fused space (as :meth:`dedup.index.WeightedVectors.pair_dot`)."""
    ev = pair_columns(parts_a[:-1], parts_b[:-1], parts_a[-1], parts_b[-1], layouts_a, layouts_b, codes_a, codes_b)
    out = {f"per_backbone_{b}": ev["per_backbone"][:, b] for b in range(len(parts_a) - 1)}
    out.update({k: v for k, v in ev.items() if k != "per_backbone"})
    fused = np.zeros(len(codes_a), np.float32)
    for A, B, w in zip(parts_a, parts_b, fused_weights):
        fused += np.float32(w) * np.einsum("ij,ij->i", A, B)
    fused *= WeightedVectors(parts_a, fused_weights).inv_norm * WeightedVectors(parts_b, fused_weights).inv_norm
    out["fused"] = (1.0 - fused).astype(np.float32)
    return out


def _evidence_schema(n_backbones: int, lead: str) -> str:
    cols = [f"per_backbone_{b} float" for b in range(n_backbones)]
    cols += ["distance float", *(f"{c} float" for c in _EVIDENCE), "phash_bits long"]
    return ", ".join([lead, *cols])


def neighbour_evidence(
    df: "DataFrame",
    n_backbones: int,
    search_weights: list[float],
    fused_weights: list[float],
    k: int,
    list_size: int = SPARK_LIST_SIZE,
    lists_per_row: int = SPARK_LISTS_PER_ROW,
    coarse_dim: int = COARSE_DIM,
    sample_max: int = 50_000,
    seed: int = 0,
) -> "DataFrame":
    """Every row's ``k`` nearest in one space, each with its pair's evidence.

    The space's rows are ``[sqrt(s_p) X_p] / norm`` over the parts (the
    backbones' embeddings, then the colour descriptors) with
    ``search_weights`` ``s``: one backbone's embedding is ``s`` = one-hot,
    the fused space is ``s`` = ``fused_weights``. The search is
    :func:`dedup.spark.neighbours`' (PCA + k-means lists trained on a sample
    at the driver, each row sent to its nearest lists, exact search per
    list), and each list's task computes the evidence of the pairs it found
    (:func:`dedup.grouping.pair_columns`); each row then keeps its best ``k`` over its
    lists, ranked by a window.

    Args:
        df: :func:`features_frame`'s rows.
        n_backbones: ``B``, the embedding columns ``e0 .. e{B-1}``.
        search_weights, fused_weights: ``B + 1`` non-negative weights each.
        k: neighbours per row (the row itself normally first).
        list_size, lists_per_row, coarse_dim, sample_max, seed: as in
            :func:`dedup.spark.neighbours`.

    Returns:
        DataFrame ``(id, nbr, pos, dist, <evidence>)``, at most ``k`` rows an
        id: ``pos`` (int, 0 = nearest; the row itself included) and ``dist``
        (float, the cosine distance in the searched space), then the columns
        of :func:`_scored`.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    B = n_backbones

    def stacked(pdf: pd.DataFrame) -> np.ndarray:
        return WeightedVectors(_parts(pdf, B), search_weights).stack()

    spread = spread_to_lists(df, stacked, list_size, lists_per_row, coarse_dim, sample_max, seed)

    def search(pdf: pd.DataFrame) -> pd.DataFrame:
        parts, lay = _parts(pdf, B), _layouts(pdf)
        ids, codes = pdf["id"].to_numpy(np.int64), pdf["code"].to_numpy(np.int64)
        V = WeightedVectors(parts, search_weights).stack()
        out = []
        # in blocks of rows: a large list never holds its whole similarity
        # matrix, nor every found pair's two rows, at once
        for s in range(0, len(V), SEARCH_BLOCK):
            cols, dist = _top_k(V[s : s + SEARCH_BLOCK] @ V.T, min(k, len(V)))
            a = np.repeat(np.arange(s, s + len(cols)), cols.shape[1])
            c = cols.reshape(-1)
            ev = _scored(
                [X[a] for X in parts],
                [X[c] for X in parts],
                None if lay is None else lay[a],
                None if lay is None else lay[c],
                codes[a],
                codes[c],
                fused_weights,
            )
            out.append(pd.DataFrame({"id": ids[a], "nbr": ids[c], "dist": dist.reshape(-1).astype(np.float32), **ev}))
        return pd.concat(out, ignore_index=True)

    found = spread.groupBy("list").applyInPandas(search, _evidence_schema(B, "id long, nbr long, dist float"))
    order = Window.partitionBy("id").orderBy("dist", "nbr")
    return found.dropDuplicates(["id", "nbr"]).withColumn("pos", F.row_number().over(order) - 1).where(F.col("pos") < k)


def _joined_evidence(pairs: "DataFrame", df: "DataFrame", n_backbones: int, fused_weights: list[float]) -> "DataFrame":
    """Evidence of pairs ``(a, b)`` through a join with both rows (for the few
    pairs no neighbour list holds: pHash near-duplicates)."""
    from pyspark.sql import functions as F

    keep = [c for c in df.columns if c != "id"]
    x = df.select(F.col("id").alias("a"), *(F.col(c).alias(f"x_{c}") for c in keep))
    y = df.select(F.col("id").alias("b"), *(F.col(c).alias(f"y_{c}") for c in keep))
    both = pairs.join(x, "a").join(y, "b")
    B = n_backbones

    def score(batches):
        for pdf in batches:
            if pdf.empty:
                continue
            side = {s: pdf[[f"{s}_{c}" for c in keep]].rename(columns=lambda c: c[2:]).assign(id=0) for s in ("x", "y")}
            ev = _scored(
                _parts(side["x"], B),
                _parts(side["y"], B),
                _layouts(side["x"]),
                _layouts(side["y"]),
                side["x"]["code"].to_numpy(np.int64),
                side["y"]["code"].to_numpy(np.int64),
                fused_weights,
            )
            yield pd.DataFrame({"a": pdf["a"].to_numpy(np.int64), "b": pdf["b"].to_numpy(np.int64), **ev})

    return both.mapInPandas(score, _evidence_schema(B, "a long, b long"))


def neighbourhood(fused_lists: "DataFrame", k_context: int) -> tuple["DataFrame", "DataFrame"]:
    """Neighbourhood statistics of the fused lists, by window functions.

    Args:
        fused_lists: :func:`neighbour_evidence`'s rows in the fused space.
        k_context: neighbours averaged for the context radius.

    Returns:
        ``(ranks, radii)``: ``ranks`` ``(id, nbr, rank)`` with the rank of
        ``nbr`` in ``id``'s list, 0 = nearest other content (neither the row
        itself nor its copies, at fused distance <=
        :data:`dedup.grouping.SAME_CONTENT_DISTANCE` or re-encodes
        (:data:`dedup.grouping.REENCODE_PHASH_BITS`,
        :data:`~dedup.grouping.REENCODE_COLOUR_DISTANCE`), are counted: as
        :func:`dedup.grouping.score_pairs` ranks); ``radii`` ``(id, r, r1)``:
        the mean distance to the ``k_context`` nearest other contents (a
        missing one counts at :data:`dedup.grouping.CONTEXT_PRIOR_RADIUS`)
        and the nearest one's distance (1 when there is none), each at least 1e-6.
        Rows without any other neighbour have no radii row (the caller
        takes the defaults).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_pos = Window.partitionBy("id").orderBy("pos")
    # copies of the row itself are not counted (as score_pairs: SAME_CONTENT_DISTANCE, and re-encodes)
    reencoded = (F.col("phash_bits") <= F.lit(REENCODE_PHASH_BITS)) & (
        F.col("colour") <= F.lit(float(np.float32(REENCODE_COLOUR_DISTANCE)))  # compared as float32, as NumPy does
    )
    counted = ((F.col("fused") > F.lit(SAME_CONTENT_DISTANCE)) & ~reencoded).cast("int")
    others = fused_lists.where(F.col("nbr") != F.col("id")).withColumn("counted", counted)
    before = F.sum("counted").over(by_pos.rowsBetween(Window.unboundedPreceding, -1))
    ranks = others.select("id", "nbr", F.coalesce(before, F.lit(0)).cast("long").alias("rank"))
    # the pair's fused distance (computed as score_pairs computes it), not the search's own
    near = others.where(F.col("counted") == 1)
    near = near.withColumn("near", F.row_number().over(Window.partitionBy("id").orderBy("fused", "nbr")))
    radii = (
        near.groupBy("id")
        .agg(
            F.sum(F.when(F.col("near") <= k_context, F.col("fused").cast("double"))).alias("s"),
            F.sum(F.when(F.col("near") <= k_context, 1).otherwise(0)).alias("cnt"),
            F.min("fused").alias("r1"),
        )
        .select(
            "id",
            F.greatest(
                ((F.col("s") + (F.lit(k_context) - F.col("cnt")) * F.lit(CONTEXT_PRIOR_RADIUS)) / F.lit(k_context)),
                F.lit(1e-6),
            )
            .cast("float")
            .alias("r"),
            F.greatest(F.col("r1"), F.lit(1e-6)).cast("float").alias("r1"),
        )
    )
    return ranks, radii


def pair_evidence(
    df: "DataFrame",
    n_backbones: int,
    colour_weight: float,
    k: int,
    k_context: int = 10,
    phash_pairs: "DataFrame | None" = None,
    **search,
) -> tuple["DataFrame", "DataFrame"]:
    """The candidate pairs and their evidence, as the local engine's
    :func:`dedup.grouping.candidate_pairs` and :func:`~dedup.grouping.score_pairs`
    give them, all in Spark.

    Candidates: every pair in a row's ``k``-list of any backbone's embedding
    or of the colour-fused space (:func:`neighbour_evidence`), plus the pHash
    near-duplicates (scored through a join when no list holds them).

    Args:
        df: :func:`features_frame`'s rows (ids ``0..n-1``).
        n_backbones: ``B``; colour_weight: the fused space's colour share.
        k: list length (the run's ``n_neighbours + 1``: the row itself first).
        k_context: neighbours averaged for the context radius.
        phash_pairs: ``(a, b)`` longs with ``a < b``, or ``None``.
        search: passed to :func:`neighbour_evidence` (``list_size``,
            ``lists_per_row``, ...).

    Returns:
        ``(pairs, fused_lists)``: the columns of
        :meth:`dedup.grouping.Pairs.to_frame` (``inliers`` and ``mismatch``
        -1: not verified), one row per pair ``i < j``; and the fused space's
        lists (:func:`neighbour_evidence`'s rows), persisted: the caller
        unpersists them when done.
    """
    from pyspark.sql import functions as F

    B = n_backbones
    fused_weights = [(1 - colour_weight) / max(B, 1)] * B + [float(colour_weight)]
    spaces = [[1.0 if p == b else 0.0 for p in range(B + 1)] for b in range(B)] + [fused_weights]
    lists = [neighbour_evidence(df, B, s, fused_weights, k, **search) for s in spaces]
    fused_lists = lists[-1].persist()
    ev_cols = [f"per_backbone_{b}" for b in range(B)] + ["distance", *_EVIDENCE, "phash_bits"]
    found = None
    for lst in [*lists[:-1], fused_lists]:
        p = lst.where(F.col("nbr") != F.col("id")).select(
            F.least("id", "nbr").alias("a"), F.greatest("id", "nbr").alias("b"), *ev_cols
        )
        found = p if found is None else found.unionByName(p)
    assert found is not None
    if phash_pairs is not None:
        extra = phash_pairs.select("a", "b").join(found.select("a", "b"), ["a", "b"], "left_anti").distinct()
        found = found.unionByName(_joined_evidence(extra, df, B, fused_weights).select("a", "b", *ev_cols))
    pairs = found.dropDuplicates(["a", "b"])
    ranks, radii = neighbourhood(fused_lists, k_context)
    rank_ij = ranks.select(F.col("id").alias("a"), F.col("nbr").alias("b"), F.col("rank").alias("rank_ij"))
    rank_ji = ranks.select(F.col("id").alias("b"), F.col("nbr").alias("a"), F.col("rank").alias("rank_ji"))
    ra = radii.select(F.col("id").alias("a"), F.col("r").alias("r_a"), F.col("r1").alias("r1_a"))
    rb = radii.select(F.col("id").alias("b"), F.col("r").alias("r_b"), F.col("r1").alias("r1_b"))
    prior = F.lit(max(CONTEXT_PRIOR_RADIUS, 1e-6))
    r_a, r_b = F.coalesce("r_a", prior), F.coalesce("r_b", prior)
    r1_a, r1_b = F.coalesce("r1_a", F.lit(1.0)), F.coalesce("r1_b", F.lit(1.0))
    scored = (
        pairs.join(rank_ij, ["a", "b"], "left")
        .join(rank_ji, ["a", "b"], "left")
        .join(ra, "a", "left")
        .join(rb, "b", "left")
        .select(
            F.col("a").alias("i"),
            F.col("b").alias("j"),
            "distance",
            *(f"per_backbone_{b}" for b in range(B)),
            "colour",
            "fused",
            (F.col("fused") / F.sqrt(r_a.cast("float") * r_b.cast("float"))).cast("float").alias("context"),
            F.coalesce("rank_ij", F.lit(k)).cast("long").alias("rank_ij"),
            F.coalesce("rank_ji", F.lit(k)).cast("long").alias("rank_ji"),
            (F.col("fused") / F.least(r1_a, r1_b).cast("float")).cast("float").alias("relative"),
            "phash_bits",
            F.lit(-1).cast("long").alias("inliers"),
            F.lit(-1.0).cast("float").alias("mismatch"),
            "layout_mean",
            "layout_max",
        )
    )
    return scored, fused_lists


def list_arrays(lists: "DataFrame", n: int, k: int) -> np.ndarray:
    """Collect ``(id, nbr, pos)`` lists into ``(n, k)`` int64 ids, nearest first (-1 padded)."""
    ids = np.full((n, k), -1, np.int64)
    got = pd.DataFrame(lists.select("id", "nbr", "pos").toPandas())
    ids[got["id"].to_numpy(np.int64), got["pos"].to_numpy(np.int64)] = got["nbr"].to_numpy(np.int64)
    return ids
