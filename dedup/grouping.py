"""Stage 6, group: candidate pairs, their evidence, the decision, the groups.

Precision first: two products merged into one is the expensive error for a
retailer, a missed duplicate the cheap one, and a doubtful pair goes to a
person. How a run decides (every number is a documented default of
:class:`GroupingParams`; ``benchmarks/run_all.py`` measures them per set):

1. Candidates: each image's ``k`` nearest neighbours in every backbone's ANN
   index and in the colour-fused index (:func:`fused_vectors`: pooled CNN
   features barely see colour while a product's own views share it, so the
   search itself must weigh colour), plus every pHash near-duplicate pair.
   Memory O(n x k): never an n x n matrix.
2. Evidence per pair (:func:`score_pairs`): ensemble cosine distance, colour
   distance, colour layout distances, contextual distance (Jegou et al., CVPR 2007), mutual ranks,
   pHash bits, RootSIFT + RANSAC inliers and the colour mismatch after
   alignment (:mod:`dedup.verify`).
3. Decision (:mod:`dedup.calibration`): a calibrated probability that the pair
   shows the same product. ``p >= min_confidence`` joins; ``review_confidence
   <= p < min_confidence`` is written to ``review.csv`` for a person.
4. Hash pass: byte-identical files (SHA-256) always join; pHash
   near-duplicates join when their colours agree too (pHash is computed on
   greyscale, so a recoloured copy has the same pHash).
5. A person's decisions (``--decisions``) override: a confirmed pair joins,
   a rejected pair is never in one group.
6. No chaining: joins are applied strongest first (Kruskal's order), and two
   groups merge by a classifier join only if the scored pairs between them
   average at least ``linkage_confidence`` (average linkage over the
   evidence at hand; the pairs between two photos' copies, byte copies and
   re-encodes, count once, at their highest confidence:
   :func:`content_labels`); no join of any kind but SHA-256 merges two groups
   between which a person rejected a pair. One bridging image cannot pull two products
   together, and no component is too big to check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from itertools import chain

import numpy as np
import pandas as pd

from .colour import colour_distance, layout_distances
from .index import WeightedVectors

#: Stage names recorded per joined image, strongest evidence first.
STAGES = ("sha256", "reviewed", "phash", "classifier")


def _param(default, help: str, lo=None, hi=None, kind=float):
    return field(default=default, metadata={"help": help, "range": (lo, hi), "type": kind})


@dataclass
class GroupingParams:
    """Settings of the grouping, validated once, each with its help text.

    Defaults chosen by ``benchmarks/run_all.py`` on the shared sets (see
    the README's precision/recall table); ``--min-confidence`` is the one knob.
    """

    min_confidence: float = _param(0.9, "calibrated probability of 'same product' that joins a pair", 0.0, 1.0)
    review_confidence: float = _param(
        0.5, "pairs from this probability up to --min-confidence go to review.csv", 0.0, 1.0
    )
    linkage_confidence: float = _param(
        0.5, "two groups merge only if the scored pairs between them average at least this probability", 0.0, 1.0
    )
    colour_weight: float = _param(
        0.75, "share of the colour histogram in the fused kNN search (0 = embedding only)", 0.0, 1.0
    )
    phash_colour_cutoff: float = _param(
        0.35, "largest colour distance of a pHash near-duplicate that joins in the hash pass", 0.0, 1.0
    )
    k_context: int = _param(10, "neighbours averaged for the contextual distance", 1, 1000, int)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "GroupingParams":
        """Check every setting against its range.

        Raises:
            ValueError: a value of the wrong type, NaN, or out of range (the
                message names the setting and the accepted range).
        """
        for f in fields(self):
            v, (lo, hi), kind = getattr(self, f.name), f.metadata["range"], f.metadata["type"]
            if kind is int and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise ValueError(f"{f.name} must be an integer in [{lo}, {hi}], got {v!r}")
            if (
                not isinstance(v, (int, float, np.integer, np.floating))
                or not np.isfinite(v)
                or (lo is not None and v < lo)
                or (hi is not None and v > hi)
            ):
                raise ValueError(f"{f.name} must lie in [{lo}, {hi}], got {v!r}")
        if self.review_confidence > self.min_confidence:
            raise ValueError(
                f"review_confidence ({self.review_confidence}) must not exceed min_confidence ({self.min_confidence})"
            )
        return self

    @classmethod
    def help(cls) -> dict[str, str]:
        """``{name: help text}`` for each setting (the CLI builds its options from it)."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


@dataclass
class Pairs:
    """Candidate pairs and their evidence.

    Attributes:
        ij: ``(m, 2)`` int64 index pairs, ``i < j``, unique.
        distance: ``(m,)`` float32 ensemble cosine distance in [0, 2].
        per_backbone: ``(m, b)`` float32 cosine distance for each backbone.
        colour: ``(m,)`` float32 Hellinger colour distance, [0, 1].
        fused: ``(m,)`` float32 cosine distance of the fused vectors, [0, 2].
        context: ``(m,)`` float32 ``fused / sqrt(r_i r_j)``.
        rank_ij, rank_ji: ``(m,)`` int64 rank of j in i's fused kNN list (and
            back), 0 = nearest, ``k`` when absent; copies of i (fused distance
            <= :data:`SAME_CONTENT_DISTANCE`, or a re-encode:
            :data:`REENCODE_PHASH_BITS`, :data:`REENCODE_COLOUR_DISTANCE`)
            are not counted.
        relative: ``(m,)`` float32 fused distance over the smaller of the two
            images' nearest-neighbour distances (to another content).
        phash_bits: ``(m,)`` int64 pHash Hamming distance, 0..64.
        inliers: ``(m,)`` int64 RootSIFT RANSAC inliers, ``-1`` until verified.
        mismatch: ``(m,)`` float32 share of the first image's foreground whose
            colour differs (Delta E*ab > 25) from the second image's aligned by
            the RANSAC homography, [0, 1]; ``-1`` when not aligned.
        layout_mean, layout_max: ``(m,)`` float32 mean and largest Hellinger
            distance of the colour layouts' bands
            (:func:`dedup.colour.layout_distances`), [0, 1].
    """

    ij: np.ndarray
    distance: np.ndarray
    per_backbone: np.ndarray
    colour: np.ndarray
    fused: np.ndarray
    context: np.ndarray
    rank_ij: np.ndarray
    rank_ji: np.ndarray
    relative: np.ndarray
    phash_bits: np.ndarray
    inliers: np.ndarray
    mismatch: np.ndarray = None  # type: ignore[assignment]
    layout_mean: np.ndarray = None  # type: ignore[assignment]
    layout_max: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.mismatch is None:
            self.mismatch = np.full(len(self.ij), -1.0, np.float32)
        for name in ("layout_mean", "layout_max"):  # no layouts: the colour distance stands in
            if getattr(self, name) is None:
                setattr(self, name, np.asarray(self.colour, np.float32).copy())

    def subset(self, mask: np.ndarray) -> "Pairs":
        """The pairs selected by a boolean ``(m,)`` mask."""
        return Pairs(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def rows(self, sl: slice) -> "Pairs":
        """The pairs in a slice of rows (views, no copy)."""
        return Pairs(**{f.name: getattr(self, f.name)[sl] for f in fields(self)})

    def to_frame(self) -> pd.DataFrame:
        """The pairs as a table, one row per pair: columns ``i, j``, one
        column per attribute (``per_backbone`` as ``per_backbone_0 ..
        per_backbone_{b-1}``), dtypes as the attributes'. The form in which
        the Spark engine holds them (:mod:`dedup.spark_grouping`);
        :meth:`from_frame` reads it back."""
        cols: dict[str, np.ndarray] = {"i": self.ij[:, 0], "j": self.ij[:, 1]}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "per_backbone":
                cols.update({f"per_backbone_{b}": value[:, b] for b in range(value.shape[1])})
            elif f.name != "ij":
                cols[f.name] = value
        return pd.DataFrame(cols)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Pairs":
        """:class:`Pairs` from a :meth:`to_frame` table (other columns
        ignored), its arrays writable copies.

        Raises:
            KeyError: a column of :meth:`to_frame` is missing.
        """
        per = sorted((c for c in df.columns if c.startswith("per_backbone_")), key=lambda c: int(c.rsplit("_", 1)[1]))
        kinds = {f.name: getattr(_EMPTY, f.name).dtype for f in fields(cls) if f.name not in ("ij", "per_backbone")}
        return cls(
            ij=np.stack([df["i"].to_numpy(np.int64), df["j"].to_numpy(np.int64)], axis=1).reshape(-1, 2),
            per_backbone=np.stack([df[c].to_numpy(np.float32) for c in per], axis=1).reshape(len(df), len(per)),
            # copies: a frame from Arrow (Spark's toPandas) may hand out read-only buffers
            **{name: np.array(df[name].to_numpy(dtype), copy=True) for name, dtype in kinds.items()},
        )


_F32, _I64 = np.zeros(0, np.float32), np.zeros(0, np.int64)
#: A table with no pairs (the dtypes of :meth:`Pairs.from_frame`).
_EMPTY = Pairs(
    ij=np.zeros((0, 2), np.int64),
    distance=_F32,
    per_backbone=np.zeros((0, 0), np.float32),
    colour=_F32,
    fused=_F32,
    context=_F32,
    rank_ij=_I64,
    rank_ji=_I64,
    relative=_F32,
    phash_bits=_I64,
    inliers=_I64,
)


def fused_vectors(embeddings: list[np.ndarray], colours: np.ndarray, colour_weight: float) -> np.ndarray:
    """Embeddings and colour histograms in one unit vector per image.

    ``[sqrt((1 - w) / B) e_1, ..., sqrt((1 - w) / B) e_B, sqrt(w) c]``: the
    dot product of two rows is ``(1 - w) mean_b cos_b + w BC``, ``BC`` the
    Bhattacharyya coefficient of the colour histograms, so an angular ANN
    index searches the fused similarity directly.

    Args:
        embeddings: per backbone ``(n, d_b)`` float32, L2-normalised.
        colours: ``(n, DIM)`` float32 colour descriptors (unit norm).
        colour_weight: ``w`` in [0, 1].

    Returns:
        ``(n, sum d_b + DIM)`` float32 with unit rows.
    """
    B = max(len(embeddings), 1)
    parts = [np.asarray(X, np.float32) * np.float32(np.sqrt((1 - colour_weight) / B)) for X in embeddings]
    parts.append(np.asarray(colours, np.float32) * np.float32(np.sqrt(colour_weight)))
    F = np.hstack(parts)
    return (F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fused_parts(embeddings: list[np.ndarray], colours: np.ndarray, colour_weight: float) -> WeightedVectors:
    """The rows of :func:`fused_vectors`, as weighted parts that are never
    stacked (for collections where the stacked matrix would not fit in
    memory: 8 GiB at 1M images with one 1280-d backbone).

    Args, as for :func:`fused_vectors`.

    Returns:
        :class:`dedup.index.WeightedVectors` with weights ``(1 - w) / B`` for
        each backbone and ``w`` for the colours.
    """
    B = max(len(embeddings), 1)
    return WeightedVectors([*embeddings, colours], [(1 - colour_weight) / B] * len(embeddings) + [float(colour_weight)])


def _rows_dot(F, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Inner products of rows ``a[t]`` and ``c[t]`` of a stacked matrix or a
    :class:`dedup.index.WeightedVectors`."""
    if isinstance(F, WeightedVectors):
        return F.pair_dot(a, c)
    return np.einsum("ij,ij->i", F[a], F[c])


def candidate_pairs(neighbour_ids: list[np.ndarray], extra: np.ndarray | None = None) -> np.ndarray:
    """Union of kNN pairs over indexes, plus extra pairs.

    Args:
        neighbour_ids: per index, ``(n, k)`` int64 neighbour ids (-1 padded).
        extra: optional ``(e, 2)`` int64 pairs (the pHash near-duplicates).

    Returns:
        ``(m, 2)`` int64 unique pairs with ``i < j``.
    """
    chunks = [] if extra is None or len(extra) == 0 else [np.sort(np.asarray(extra, np.int64), axis=1)]
    for ids in neighbour_ids:
        n, k = ids.shape
        rows = np.repeat(np.arange(n, dtype=np.int64), k)
        cols = ids.reshape(-1)
        keep = (cols >= 0) & (cols != rows)
        a, b = rows[keep], cols[keep]
        chunks.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(chunks), axis=0)


def _ranks(ij: np.ndarray, fused_ids: np.ndarray, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of j in i's list and of i in j's list (``k`` when absent).

    A neighbour's rank is the number of ``counted`` entries before it in the
    list (``counted``: ``(n, k)`` bool, the other contents; see
    :func:`score_pairs`), so 0 is the nearest other content and a copy of the
    image itself ranks 0."""
    n, k = fused_ids.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = fused_ids.reshape(-1)
    before = (np.cumsum(counted, axis=1) - counted).reshape(-1).astype(np.int64)
    keep = (cols >= 0) & (cols != rows)
    key = rows[keep] * n + cols[keep]
    order = np.argsort(key)
    key, pos = key[order], before[keep][order]

    def lookup(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        q = a * n + b
        at = np.minimum(np.searchsorted(key, q), max(len(key) - 1, 0))
        found = (key[at] == q) if len(key) else np.zeros(len(q), bool)
        return np.where(found, pos[at] if len(key) else 0, k).astype(np.int64)

    return lookup(ij[:, 0], ij[:, 1]), lookup(ij[:, 1], ij[:, 0])


#: Pairs scored at once; memory 2 x _PAIR_BLOCK x d float32 (70 MB at d = 2144).
_PAIR_BLOCK = 8192

#: Fused cosine distance at or under which a neighbour is a copy of the image
#: (a re-save, a high-quality re-encode; a byte-identical file too, where the
#: caller searched every file and not one per content as the run does
#: (:func:`dedup.hashing.unique_contents`)): copies are
#: left out of the image's neighbourhood (its radii and the ranks of its
#: other neighbours), or every other photo, even an edited copy of the same
#: product, would look many times farther than the image's nearest. Chosen
#: by ``benchmarks/copies.py`` (its table is in the README): a photo
#: re-encoded at JPEG quality 95 lies 0.0006-0.0049 from itself (quality 90:
#: median 0.0054), the closest edited copy (a seller's edit) 0.0048, two
#: products 0.023 or more. Chosen before re-encodes counted as copies
#: (:data:`REENCODE_COLOUR_DISTANCE`): on the re-upload set
#: edited-ukbench-x3 the copies found rose from 0.960 (1e-6: byte copies
#: only) to 0.993 at 0.003 and 1.000 at 0.005, inshop-women's recall 0.445 ->
#: 0.447 from 0.003 on, every other set the same, and 0.01 joins two
#: products on edited-inshop. With re-encodes counted, no set changes
#: between 1e-6 and 0.005: it stays for near copies pHash does not see.
#: Precision first: the cutoff stays below the edited copies measured.
SAME_CONTENT_DISTANCE: float = 0.003

#: A neighbour within this pHash Hamming distance (bits of 64) ...
REENCODE_PHASH_BITS: int = 2
#: ... and this Hellinger colour distance is a re-encode of the image (the
#: same photo saved again at another JPEG quality), a copy whatever its
#: fused distance: a photo that marketplaces re-encode each their own way
#: would otherwise fill its own neighbourhood with near-zero distances (as
#: byte copies did), against which its edited copies look many times
#: farther. Measured by ``benchmarks/copies.py`` (its tables are in the
#: README): re-uploads at JPEG quality 79-90 lie within 2 bits, 99 % within
#: colour distance 0.052 (fused distance up to 0.04, beyond
#: :data:`SAME_CONTENT_DISTANCE`); no two products of any labelled set lie
#: within 2 bits and colour distance 0.55. Some seller's edits do lie within
#: (a JPEG re-encode after a resize from 0.037, a watermark from 0.039, on
#: ukbench photos) and count as copies too, which changed no figure. The
#: hash pass's own cutoffs (4 bits, 0.35) also took in colour jitter and
#: JPEG edits of inshop photos (0.068 and more) and raised colour variants'
#: confidences on edited-inshop (pairs of two products at p >= 0.5: 15 ->
#: 40), so they were not kept.
REENCODE_COLOUR_DISTANCE: float = 0.05


def _reencoded(code_a: np.ndarray, code_b: np.ndarray, colour_a: np.ndarray, colour_b: np.ndarray) -> np.ndarray:
    """``(m,)`` bool: pairs within :data:`REENCODE_PHASH_BITS` and
    :data:`REENCODE_COLOUR_DISTANCE` (rows of pHash codes and colour descriptors;
    the colour distance only where the bits are near)."""
    x = np.bitwise_xor(np.asarray(code_a, np.uint64), np.asarray(code_b, np.uint64))
    bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    colour = np.full(len(bits), np.inf, np.float32)
    near = bits <= REENCODE_PHASH_BITS
    if near.any():
        colour[near] = colour_distance(colour_a[near], colour_b[near])
    return _within_reencode(bits, colour)


def _within_reencode(phash_bits: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``(m,)`` bool: pHash Hamming distances and colour distances of pairs
    within :data:`REENCODE_PHASH_BITS` and :data:`REENCODE_COLOUR_DISTANCE`
    (compared in float32, as the Spark engine's window functions compare)."""
    return (np.asarray(phash_bits) <= REENCODE_PHASH_BITS) & (
        np.asarray(colour, np.float32) <= np.float32(REENCODE_COLOUR_DISTANCE)
    )


#: Fused-space radius assumed for neighbours a small collection lacks: the
#: median mean distance to the 10 nearest on ``inshop-women``, the densest
#: shared set (ukbench-dev: 0.26, products-flipkart: 0.34). Conservative: in
#: a catalogue of five images, two look-alikes are not "much closer than the
#: rest" just because the rest are few and far.
CONTEXT_PRIOR_RADIUS: float = 0.14


def score_pairs(
    ij: np.ndarray,
    embeddings: list[np.ndarray],
    colours: np.ndarray,
    fused: np.ndarray | WeightedVectors,
    fused_ids: np.ndarray,
    phashes: np.ndarray,
    k_context: int = 10,
    layouts: np.ndarray | None = None,
    copies_space: np.ndarray | WeightedVectors | None = None,
) -> Pairs:
    """The evidence of every candidate pair (all but the geometric verification).

    Args:
        ij: ``(m, 2)`` int64 pairs, ``i < j``.
        embeddings: per backbone ``(n, d_b)`` float32, L2-normalised.
        colours: ``(n, DIM)`` float32 colour descriptors.
        fused: ``(n, D)`` float32 from :func:`fused_vectors`, or the same
            rows as :func:`fused_parts`.
        fused_ids: ``(n, k)`` int64 kNN ids in the fused space (nearest
            first; a row may start with the image itself).
        phashes: ``(n,)`` uint64 perceptual hashes.
        k_context: neighbours averaged for the context radius; where an
            image has fewer (a collection of <= k_context images), the
            missing ones count at :data:`CONTEXT_PRIOR_RADIUS`. Copies of the
            image itself (:data:`SAME_CONTENT_DISTANCE`; re-encodes,
            :data:`REENCODE_PHASH_BITS` and :data:`REENCODE_COLOUR_DISTANCE`)
            are not neighbours here.
        layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8 colour layouts, or
            ``None`` (a caller without them, e.g. synthetic data): the
            colour distance then stands in for both layout distances.
        copies_space: the rows in which copies are recognised, where
            ``fused`` is not :func:`fused_vectors`' space (an adapted model's
            projection, which may bring two photos of one product closer
            than copies): those unadapted rows (:func:`fused_parts` of the
            same embeddings and colours), the space
            :data:`SAME_CONTENT_DISTANCE` was chosen in. ``None``: ``fused``.

    Returns:
        :class:`Pairs` with ``inliers`` and ``mismatch`` set to -1.
    """
    m, n = len(ij), len(fused)
    a, c = ij[:, 0], ij[:, 1]
    codes = np.asarray(phashes, np.uint64)
    per = np.zeros((m, len(embeddings)), np.float32)
    fd = np.zeros(m, np.float32)
    scalar = {name: np.zeros(m, np.float32) for name in ("distance", "colour", "layout_mean", "layout_max")}
    bits = np.zeros(m, np.int64)
    for s in range(0, m, _PAIR_BLOCK):  # gathered rows: _PAIR_BLOCK x d floats at a time
        sl = slice(s, s + _PAIR_BLOCK)
        ev = pair_columns(
            [X[a[sl]] for X in embeddings],
            [X[c[sl]] for X in embeddings],
            colours[a[sl]],
            colours[c[sl]],
            None if layouts is None else layouts[a[sl]],
            None if layouts is None else layouts[c[sl]],
            codes[a[sl]],
            codes[c[sl]],
        )
        per[sl] = ev["per_backbone"]
        bits[sl] = ev["phash_bits"]
        for name, col in scalar.items():
            col[sl] = ev[name]
        fd[sl] = 1.0 - _rows_dot(fused, a[sl], c[sl])
    # neighbourhood radii in the fused space: mean distance to the k_context nearest, and to the nearest
    k = fused_ids.shape[1] if fused_ids.ndim == 2 else 0
    r = np.ones(n, np.float32)
    r1 = np.ones(n, np.float32)
    if n and k:
        others = np.where(fused_ids == np.arange(n)[:, None], -1, fused_ids)
        dd = np.full(others.shape, np.nan, np.float32)
        same = np.zeros(others.shape, bool)
        ok = others >= 0
        rows, cols = np.nonzero(ok)
        for s in range(0, len(rows), _PAIR_BLOCK):  # gathered in blocks, as above
            sl = slice(s, s + _PAIR_BLOCK)
            i, j = rows[sl], others[rows[sl], cols[sl]]
            dd[rows[sl], cols[sl]] = d = 1.0 - _rows_dot(fused, i, j)
            if copies_space is not None:
                d = 1.0 - _rows_dot(copies_space, i, j)
            same[rows[sl], cols[sl]] = (d <= SAME_CONTENT_DISTANCE) | _reencoded(
                codes[i], codes[j], colours[i], colours[j]
            )
        # the radii are measured over other contents: copies of the image are the image
        counted = ok & ~same
        dd = np.sort(np.where(counted, dd, np.inf), axis=1)
        near = dd[:, :k_context]
        finite = np.isfinite(near)
        cnt = finite.sum(axis=1)
        # fewer than k_context neighbours (a small collection): the missing ones count at the prior radius
        r = (np.where(finite, near, 0).sum(axis=1) + (k_context - cnt) * CONTEXT_PRIOR_RADIUS) / k_context
        r1 = np.where(np.isfinite(dd[:, 0]), dd[:, 0], 1.0)
    r = np.maximum(r, 1e-6).astype(np.float32)
    r1 = np.maximum(r1, 1e-6).astype(np.float32)
    context = fd / np.sqrt(r[a] * r[c]) if m else np.zeros(0, np.float32)
    relative = fd / np.minimum(r1[a], r1[c]) if m else np.zeros(0, np.float32)
    if m and k:
        rij, rji = _ranks(ij, fused_ids, counted)
    else:
        rij, rji = np.full(m, k, np.int64), np.full(m, k, np.int64)
    return Pairs(
        ij.astype(np.int64),
        scalar["distance"],
        per,
        scalar["colour"],
        fd,
        context.astype(np.float32),
        rij,
        rji,
        relative.astype(np.float32),
        bits,
        np.full(m, -1, np.int64),
        layout_mean=scalar["layout_mean"],
        layout_max=scalar["layout_max"],
    )


def pair_columns(
    emb_a: list[np.ndarray],
    emb_b: list[np.ndarray],
    colours_a: np.ndarray,
    colours_b: np.ndarray,
    layouts_a: np.ndarray | None,
    layouts_b: np.ndarray | None,
    codes_a: np.ndarray,
    codes_b: np.ndarray,
) -> dict[str, np.ndarray]:
    """The evidence of pairs whose two rows are at hand (row ``t`` of each
    ``_a`` array against row ``t`` of the ``_b`` array): every column of
    :class:`Pairs` that needs only the two images, not their neighbourhoods
    nor the fused space. Both engines score pairs with it
    (:func:`score_pairs`; :mod:`dedup.spark_evidence` in the Spark task
    that holds both rows).

    Args:
        emb_a, emb_b: per backbone ``(m, d_b)`` float32, L2-normalised.
        colours_a, colours_b: ``(m, dedup.colour.DIM)`` float32 colour descriptors.
        layouts_a, layouts_b: ``(m, dedup.colour.LAYOUT_DIM)`` uint8, or
            ``None``: the colour distance stands in for both layout distances.
        codes_a, codes_b: ``(m,)`` 64-bit pHashes (uint64, or int64 holding the same bits).

    Returns:
        ``per_backbone`` ``(m, B)`` float32 cosine distances; ``distance``
        (their mean, 0 without a backbone), ``colour`` (Hellinger),
        ``layout_mean``, ``layout_max`` ``(m,)`` float32; ``phash_bits``
        ``(m,)`` int64 Hamming distance.
    """
    m = len(codes_a)
    per = np.zeros((m, len(emb_a)), np.float32)
    for b, (A, B) in enumerate(zip(emb_a, emb_b)):
        per[:, b] = 1.0 - np.einsum("ij,ij->i", A, B)
    colour = colour_distance(colours_a, colours_b)
    if layouts_a is None or layouts_b is None:
        lay_mean, lay_max = colour.copy(), colour.copy()
    else:
        lay_mean, lay_max = layout_distances(layouts_a, layouts_b)
    x = np.ascontiguousarray(np.asarray(codes_a).view(np.uint64) ^ np.asarray(codes_b).view(np.uint64))
    return {
        "per_backbone": per,
        "distance": per.mean(axis=1).astype(np.float32) if len(emb_a) else np.zeros(m, np.float32),
        "colour": colour,
        "layout_mean": lay_mean,
        "layout_max": lay_max,
        "phash_bits": np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64),
    }


@dataclass
class Grouping:
    """The outcome of :func:`group`.

    Attributes:
        labels: ``(n,)`` int64 group id per image, 0..G-1, numbered by first member.
        stage: ``(n,)`` object, how the image joined its group (one of
            :data:`STAGES`, or ``"single"``).
        confidence: ``(n,)`` float64, the calibrated probability that the pair
            which joined the image shows the same product (1 for byte-identical
            files and a person's confirmation; NaN for singletons).
        distance: ``(n,)`` float32, the ensemble cosine distance of that pair
            (NaN for singletons and pairs that were not candidates).
        partner: ``(n,)`` int64, the other image of that pair (-1 for singletons).
        review: ``(r,)`` int64 indexes into the pairs: doubtful pairs left
            apart (``review_confidence <= p < min_confidence``, or refused by
            the linkage check), strongest first.
    """

    labels: np.ndarray
    stage: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    partner: np.ndarray
    review: np.ndarray


class _Clusters:
    """Union-find with member lists and a cross-pair check (small-to-large).

    The scored pairs are held as a CSR adjacency (NumPy arrays, both
    directions; int32 ids below 2**31 images and float32 probabilities, so
    2 x 8 bytes a pair), built without a Python loop over the pairs.
    """

    def __init__(self, n: int, ij: np.ndarray, p: np.ndarray, rejected: set, content: np.ndarray | None = None):
        self.parent = np.arange(n)
        self.content = np.arange(n) if content is None else np.asarray(content, np.int64)
        self.members: dict[int, list[int]] = {i: [i] for i in range(n)}
        ids = np.int32 if n < 2**31 else np.int64
        src = np.concatenate([ij[:, 0], ij[:, 1]]).astype(ids)
        order = np.argsort(src, kind="stable")
        self.start = np.searchsorted(src[order], np.arange(n + 1, dtype=ids))
        del src
        self.nbr = np.concatenate([ij[:, 1], ij[:, 0]]).astype(ids)[order]
        self.nbr_p = np.concatenate([p, p]).astype(np.float32)[order]
        self.rejected = rejected

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def cross(self, ra: int, rb: int) -> tuple[float, int, bool]:
        """(sum of p, count, any rejected) over the scored pairs between two
        clusters, the pairs between two contents (:func:`content_labels`)
        counted once, at their highest p."""
        small, other = (ra, rb) if len(self.members[ra]) <= len(self.members[rb]) else (rb, ra)
        best: dict[tuple[int, int], float] = {}
        veto = False
        content = self.content
        for i in self.members[small]:
            lo, hi = self.start[i], self.start[i + 1]
            ci = int(content[i])
            for j, pp in zip(self.nbr[lo:hi].tolist(), self.nbr_p[lo:hi].tolist()):
                if self.find(j) == other:
                    key = (ci, int(content[j]))
                    if pp > best.get(key, -1.0):
                        best[key] = pp
                    veto = veto or (min(i, j), max(i, j)) in self.rejected
        return sum(best.values()), len(best), veto  # summed in Python floats (float64)

    def union(self, ra: int, rb: int) -> None:
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra] += self.members.pop(rb)


#: An edge of the join order: (stage, i, j, probability, pair row or -1).
Edge = tuple[str, int, int, float, int]


class _PairRows:
    """``(i, j) -> row of pairs`` (``i < j``; -1 when not a scored pair), as a
    sorted key array: no dict of millions of tuples."""

    def __init__(self, pairs: Pairs, n: int):
        self.n = max(n, 1)
        keys = pairs.ij[:, 0].astype(np.int64) * self.n + pairs.ij[:, 1]
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def get(self, key: tuple[int, int], default: int = -1) -> int:
        q = int(key[0]) * self.n + int(key[1])
        at = int(np.searchsorted(self.keys, q))
        return int(self.order[at]) if at < len(self.keys) and self.keys[at] == q else default


def sha256_edges(hash_pairs: dict[str, np.ndarray], rows: _PairRows) -> list[Edge]:
    """Rule 1: byte-identical files always join, with probability 1 (no check applies)."""
    sha = np.asarray(hash_pairs.get("sha256", np.zeros((0, 2))), np.int64).reshape(-1, 2)
    return [("sha256", int(a), int(b), 1.0, rows.get((min(a, b), max(a, b)), -1)) for a, b in sha.tolist()]


def reviewed_edges(confirmed: list[tuple[int, int]], rows: _PairRows) -> list[Edge]:
    """Rule 2: a pair a person confirmed joins, with probability 1 (unless a
    rejected pair lies between the two groups)."""
    return [("reviewed", a, b, 1.0, rows.get((a, b), -1)) for a, b in confirmed]


def phash_edges(
    hash_pairs: dict[str, np.ndarray],
    rows: _PairRows,
    pairs: Pairs,
    confidence: np.ndarray,
    params: GroupingParams,
) -> list[Edge]:
    """Rule 3: a pHash near-duplicate joins when its colours agree too
    (colour distance <= ``phash_colour_cutoff``): pHash is computed on
    greyscale, so a recoloured copy, or a black and a navy dress in one
    pose, share it."""
    ph = np.sort(np.asarray(hash_pairs.get("phash", np.zeros((0, 2))), np.int64).reshape(-1, 2), axis=1)
    out = []
    for a, b in ph.tolist():
        r = rows.get((a, b), -1)
        if r >= 0 and pairs.colour[r] <= params.phash_colour_cutoff:
            out.append(("phash", a, b, float(confidence[r]), r))
    return out


def classifier_edges(pairs: Pairs, confidence: np.ndarray, params: GroupingParams) -> Iterator[Edge]:
    """Rule 4: a candidate pair with calibrated P(same) >= ``min_confidence``
    joins, strongest first (subject to the linkage check of :func:`group`).
    Yielded one at a time: at a million images millions of pairs qualify,
    and a list of their tuples would cost hundreds of MB."""
    join = np.nonzero(confidence >= params.min_confidence)[0]
    join = join[np.argsort(-confidence[join], kind="stable")]
    for r in join.tolist():
        yield ("classifier", int(pairs.ij[r, 0]), int(pairs.ij[r, 1]), float(confidence[r]), r)


def _split_decisions(decisions: pd.DataFrame | None) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
    """A person's decisions as (confirmed pairs, rejected pairs), each ``(i, j)`` with i < j."""
    confirmed: list[tuple[int, int]] = []
    rejected: set[tuple[int, int]] = set()
    if decisions is not None and len(decisions):
        for a, b, same in zip(decisions.i, decisions.j, decisions.same):
            key = (min(int(a), int(b)), max(int(a), int(b)))
            if same:
                confirmed.append(key)
            else:
                rejected.add(key)
    return confirmed, rejected


def _may_merge(cl: _Clusters, name: str, ra: int, rb: int, params: GroupingParams) -> bool:
    """Rules 5 and 6 for joining two different groups: never across a pair a
    person rejected (SHA-256 excepted), and a classifier join only when the
    scored pairs between the groups average >= ``linkage_confidence``."""
    if name == "sha256":
        return True
    total, count, veto = cl.cross(ra, rb)
    weak = name == "classifier" and count > 0 and total / count < params.linkage_confidence
    return not (veto or weak)


class _Record:
    """Per image: the strongest edge that joined it (stage, probability, partner, distance)."""

    def __init__(self, n: int):
        self.stage = np.full(n, "single", dtype=object)
        self.best = np.full(n, -np.inf)
        self.distance = np.full(n, np.nan, np.float32)
        self.partner = np.full(n, -1, np.int64)

    def note(self, edge: Edge, pairs: Pairs) -> None:
        name, a, b, p, r = edge
        for x, y in ((a, b), (b, a)):
            current = self.stage[x]
            stronger = current == "single" or STAGES.index(name) < STAGES.index(current)
            if stronger or (name == current and p > self.best[x]):
                self.stage[x], self.best[x], self.partner[x] = name, p, y
                self.distance[x] = pairs.distance[r] if r >= 0 else np.nan


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Group ids 0..G-1 in order of each group's first member (stable, readable)."""
    if not len(labels):
        return labels.astype(np.int64)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    remap = np.empty(len(order), np.int64)
    remap[order] = np.arange(len(order))
    return remap[inverse].astype(np.int64)


def content_labels(n: int, pairs: Pairs, hash_pairs: dict[str, np.ndarray]) -> np.ndarray:
    """Which images are copies of one photo: byte copies (the SHA-256 pairs)
    and re-encodes (scored pairs within :data:`REENCODE_PHASH_BITS` and
    :data:`REENCODE_COLOUR_DISTANCE`), as connected components.

    The linkage check (:func:`group`, rule 6) counts the pairs of one image
    with several copies of one photo once, at their highest confidence: they
    are one piece of evidence, and geometric verification, which the run
    spends on an image's nearest candidates, may have looked at one copy
    only (a photo that marketplaces re-encoded twelve times, beside its
    edited copy, left that copy alone: ``edited-ukbench-r13`` in
    ``benchmarks/run_all.py``).

    Args:
        n: number of images; pairs: the scored pairs (``phash_bits`` and
            ``colour`` are read); hash_pairs: ``{"sha256": (e, 2)}`` int64.

    Returns:
        ``(n,)`` int64 label per image (equal labels: copies of one photo).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    sha = np.asarray(hash_pairs.get("sha256", np.zeros((0, 2))), np.int64).reshape(-1, 2)
    near = _within_reencode(pairs.phash_bits, pairs.colour)
    edges = np.concatenate([sha, np.asarray(pairs.ij, np.int64)[near]])
    if n == 0 or len(edges) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def group(
    n: int,
    pairs: Pairs,
    confidence: np.ndarray,
    hash_pairs: dict[str, np.ndarray],
    params: GroupingParams | None = None,
    decisions: pd.DataFrame | None = None,
) -> Grouping:
    """Decide the groups: the rules (:func:`sha256_edges`, :func:`reviewed_edges`,
    :func:`phash_edges`, :func:`classifier_edges`) give edges in order of
    strength; each is applied if :func:`_may_merge` allows (see the module
    docstring).

    Args:
        n: number of images.
        pairs: scored candidate pairs (:func:`score_pairs`).
        confidence: ``(m,)`` float64 calibrated P(same product) per pair.
        hash_pairs: ``{"sha256": (e, 2), "phash": (e, 2)}`` int64 pairs.
        params: settings (:class:`GroupingParams`).
        decisions: optional DataFrame ``i, j, same`` (int, int, bool) of a
            person's decisions on pairs (indexes into the images).

    Returns:
        A :class:`Grouping`.
    """
    p = params or GroupingParams()
    conf = np.asarray(confidence, np.float64)
    rows = _PairRows(pairs, n)
    confirmed, rejected = _split_decisions(decisions)
    edges = chain(
        sha256_edges(hash_pairs, rows),
        reviewed_edges(confirmed, rows),
        phash_edges(hash_pairs, rows, pairs, conf, p),
        classifier_edges(pairs, conf, p),
    )
    cl = _Clusters(n, pairs.ij, conf, rejected, content_labels(n, pairs, hash_pairs))
    record = _Record(n)
    for edge in edges:
        name, a, b = edge[:3]
        if name != "sha256" and (min(a, b), max(a, b)) in rejected:
            continue
        ra, rb = cl.find(a), cl.find(b)
        if ra == rb and name == "classifier":
            continue  # already together: it adds no evidence of how the image joined
        if ra != rb:
            if not _may_merge(cl, name, ra, rb, p):
                continue  # left apart; a doubtful pair (p >= review_confidence) goes to review
            cl.union(ra, rb)
        record.note(edge, pairs)
    labels = np.array([cl.find(i) for i in range(n)], np.int64)
    review = _review_rows(labels, pairs, conf, p, {*rejected, *confirmed})
    confidence_out = np.where(record.stage == "single", np.nan, record.best).astype(np.float64)
    return Grouping(_renumber(labels), record.stage, confidence_out, record.distance, record.partner, review)


def _review_rows(
    labels: np.ndarray, pairs: Pairs, conf: np.ndarray, params: GroupingParams, decided: set
) -> np.ndarray:
    """Doubtful pairs left apart (``p >= review_confidence``, not yet decided
    by a person): rows into ``pairs``, strongest first."""
    apart = labels[pairs.ij[:, 0]] != labels[pairs.ij[:, 1]] if len(pairs.ij) else np.zeros(0, bool)
    doubt = np.nonzero(apart & (conf >= params.review_confidence))[0]
    review = np.array([r for r in doubt if tuple(pairs.ij[r]) not in decided], np.int64)
    return review[np.argsort(-conf[review], kind="stable")] if len(review) else review
