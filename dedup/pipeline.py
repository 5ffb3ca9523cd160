"""The whole run as one library call: :class:`Deduplicator`.

``Deduplicator(...).run(DIR)`` is a short sequence of stages, each a function
of its own module, usable alone:

1. discover (:func:`dedup.discover.discover`): image files by content;
2. digest (:func:`dedup.digest.digest_files`): SHA-256, cached by file identity;
3. decode + embed (:func:`dedup.embed.decode_and_embed`): pHash, colour,
   one embedding per backbone, cached by content;
4. hash pass (:func:`dedup.hashing.hash_pass`): byte-identical files and
   pHash near-duplicates;
5. index (:func:`dedup.index.annoy_indexes`): Annoy per backbone (for
   ``query``; built by the first query above ``exact_knn_max`` images), and
   search (:func:`dedup.index.neighbour_lists`): each content's nearest
   neighbours by every backbone and by the colour-fused vectors (in an
   adapted model's projection, :mod:`dedup.adapt`): exact, or by the
   clustered search above ``exact_knn_max``;
6. group (:mod:`dedup.grouping`, :mod:`dedup.verify`, :mod:`dedup.calibration`):
   candidate pairs, their evidence, the calibrated decision, the groups;
7. report (:mod:`dedup.report`), written by :func:`dedup.job.run_job` or the caller.

:meth:`Deduplicator.embed` runs stages 1-3 alone (what ``dedup fit`` learns
from). :func:`dedup.job.run_job` adds the guards, the output lock, views, the
gallery and moving duplicates; the CLI only parses arguments and calls it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .adapt import MAX_OUT_OF_DOMAIN, AdaptedModel
from .backbones import Backbone, select_backbones
from .cache import Cache
from .calibration import PairModel
from .colour import LAYOUT_DIM
from .decode import DEFAULT_MAX_PIXELS, load_image
from .digest import digest_files
from .discover import Skipped, discover, download_spool, is_url, printable
from .embed import decode_and_embed
from .grouping import (
    STAGES,
    Grouping,
    GroupingParams,
    Pairs,
    candidate_pairs,
    fused_parts,
    fused_vectors,
    group,
    score_pairs,
)
from .hashing import DEFAULT_PHASH_MAX_DISTANCE, content_pairs, hash_pass, unique_contents
from .index import (
    DEFAULT_N_TREES,
    EXACT_KNN_MAX,
    SEARCH_K_FACTOR,
    AnnIndex,
    WeightedVectors,
    annoy_indexes,
    neighbour_lists,
)
from .rerank import ranked_neighbours, with_copies
from .verify import GeometricVerifier

log = logging.getLogger(__name__)

#: Neighbours per image taken from each ANN index as candidates.
DEFAULT_K: int = 10
#: Where a run's distributed steps run (:class:`Deduplicator`'s ``engine``).
ENGINES = ("local", "spark")


@dataclass
class Result:
    """What a run found.

    Attributes:
        root: the folder that was run on.
        groups: DataFrame with one row per decoded image: ``path`` (relative
            to ``root``, POSIX separators), ``group`` (str id; a singleton has
            its own), ``group_size``, ``confidence`` (calibrated probability that the
            pair which joined it shows the same product, [0, 1]; empty for a
            singleton), ``stage`` (how it joined: sha256, reviewed, phash,
            classifier, single), ``distance`` (ensemble cosine
            distance of the pair that joined it, [0, 2]), ``matched`` (that
            pair's other path), ``width``, ``height`` (pixels), ``note``.
        skipped: DataFrame ``path, reason`` for every file not used.
        embeddings: backbone name -> ``(n, d)`` float32 L2-normalised, rows
            in ``groups`` order.
        indexes: backbone name -> :class:`AnnIndex` over those rows.
        colours: ``(n, dedup.colour.DIM)`` float32 colour descriptors.
        pairs: the scored candidate pairs (:class:`dedup.grouping.Pairs`).
        confidence: ``(m,)`` float64 calibrated P(same product) of each pair.
        review: the doubtful pairs left apart (``review.csv``, see
            :func:`review_table`).
        codes: ``(n,)`` uint64 pHashes; fused_ids: ``(n, k+1)`` int64 kNN ids
            in the colour-fused space.
        layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8 colour layouts.
        meta: settings, backbones with weights provenance, counts, seconds
            per stage (written to run.json).
        verifier: the geometric verifier used (or ``None``).
        files: the real path of each row of ``groups`` (``groups.path`` is
            made printable: a name that is not valid UTF-8 is backslash-escaped
            there, so act on files through this list); a URL stays a ``str``.
    """

    root: Path
    groups: pd.DataFrame
    skipped: pd.DataFrame
    embeddings: dict[str, np.ndarray]
    indexes: dict[str, AnnIndex]
    colours: np.ndarray
    pairs: Pairs
    hash_pairs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    verifier: GeometricVerifier | None = None
    files: list = field(default_factory=list)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    review: pd.DataFrame = field(default_factory=pd.DataFrame)
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    fused_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    layouts: np.ndarray = field(default_factory=lambda: np.zeros((0, LAYOUT_DIM), np.uint8))

    def neighbours(self, k: int | None = None, with_confidence: bool = False):
        """``(n, k)`` int64: each image's neighbours, the most probable same
        product first (:func:`dedup.rerank.ranked_neighbours`: scored
        candidate pairs by calibrated confidence, then the rest of its fused
        kNN list); ``-1`` pads. ``k`` defaults to the fused kNN lists' length.
        With ``with_confidence``, also the ``(n, k)`` float32 confidences
        (NaN where no pair was scored). An image's byte copies come first
        (confidence 1; :func:`dedup.rerank.with_copies`), then its content's
        neighbours."""
        p = self.pairs
        ids, conf = ranked_neighbours(p.ij, self.confidence, p.rank_ij, p.rank_ji, self.fused_ids, k, True)
        if "sha256" in self.groups.columns and len(self.groups) == len(ids):
            ids, conf = with_copies(ids, conf, *unique_contents(list(self.groups["sha256"])))
        return (ids, conf) if with_confidence else ids

    def ensemble_embeddings(self) -> np.ndarray:
        """``(n, sum d_b)`` float32: the backbones' embeddings side by side, each
        scaled by ``1/sqrt(B)``, so that a dot product is the mean over
        backbones of the cosine similarity (rows have unit norm)."""
        mats = list(self.embeddings.values())
        if not mats:
            return np.zeros((len(self.groups), 0), np.float32)
        return (np.hstack(mats) / np.sqrt(len(mats))).astype(np.float32)


@dataclass
class Embeddings:
    """Stages 1-3 of a run (:meth:`Deduplicator.embed`): the decoded images.

    Attributes:
        paths: each image's path relative to the root, printable (as in
            ``groups.csv``); files: its real path; digests: its SHA-256.
        facts: per image :class:`dedup.embed.Facts` (pHash, size, colour, note).
        embeddings: backbone name -> ``(n, d)`` float32 L2-normalised.
        colours: ``(n, dedup.colour.DIM)`` float32; codes: ``(n,)`` uint64 pHashes.
        layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8 colour layouts.
        skipped: DataFrame ``path, reason`` of every file not used.
        found: files discovered; from_cache, embedded: images whose
            embeddings came from the cache or were computed;
        inference_seconds: seconds spent in the networks.
    """

    paths: list[str]
    files: list  # Path, or a URL as str
    digests: list[str]
    facts: list
    embeddings: dict[str, np.ndarray]
    colours: np.ndarray
    codes: np.ndarray
    skipped: pd.DataFrame
    layouts: np.ndarray
    found: int = 0
    from_cache: int = 0
    embedded: int = 0
    inference_seconds: float = 0.0


def _discover(root: Path, files: list | None) -> tuple[list, list[Skipped]]:
    """Stage 1: the image files under ``root``, or among ``files`` (absolute or
    relative to ``root``; a missing one is skipped as "file not found"; a URL,
    a ``str``, is kept as it is: one that is not an image is skipped when
    decoded)."""
    if files is None:
        return discover(root)
    paths: list = []
    skipped: list[Skipped] = []
    for f in files:
        if is_url(f):
            paths.append(f)
            continue
        p = Path(f) if Path(f).is_absolute() else root / f
        found, sk = discover(p) if p.exists() else ([], [Skipped(p, "file not found")])
        paths += found
        skipped += sk
    return paths, skipped


@dataclass
class Scored:
    """The candidate pairs of a run with their evidence (:meth:`Deduplicator.score`).

    Attributes:
        indexes: backbone name -> :class:`AnnIndex`.
        fused_ids: ``(n, k+1)`` int64 kNN ids in the fused space (adapted
            when a model is used).
        pairs: :class:`dedup.grouping.Pairs`, inliers filled in when verified.
        verifier: the geometric verifier, or ``None`` when disabled.
        p_unverified: ``(m,)`` float64 P(same product) of every pair from the
            shipped model for unverified evidence, when verification was
            screened (:meth:`Deduplicator.screens`); else ``None``.
    """

    indexes: dict[str, AnnIndex]
    fused_ids: np.ndarray
    pairs: Pairs
    verifier: GeometricVerifier | None
    p_unverified: np.ndarray | None = None


def _rel(path: Path | str, root: Path) -> str:
    if is_url(path):
        return str(path)
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _shown(path: Path | str, root: Path) -> str:
    """``path`` relative to ``root``, printable (what groups.csv and skipped.csv show)."""
    return printable(_rel(path, root))


@contextmanager
def _timed(timings: dict, name: str):
    """Add the seconds spent in the ``with`` block to ``timings[name]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t


class _Rows:
    """Selects one row per content (:func:`dedup.hashing.unique_contents`)
    from per-image arrays; without copies, the arrays themselves."""

    def __init__(self, rows: np.ndarray, active: bool):
        self.rows, self.active = rows, active

    def __call__(self, X):
        if X is None or not self.active:
            return X
        return X.take(self.rows) if isinstance(X, WeightedVectors) else X[self.rows]

    def each(self, mats: list) -> list:
        return [self(X) for X in mats]


class _ImageAt:
    """Picklable ``i -> PIL image`` of the run's files, decoded for verification."""

    def __init__(self, files: list[Path], side: int, max_pixels: int | None):
        self.files, self.side, self.max_pixels = files, side, max_pixels

    def __call__(self, i: int):
        return load_image(self.files[i], target_size=self.side, max_pixels=self.max_pixels).image


def groups_table(rel: list[str], grouping: Grouping, facts: list, digests: list[str]) -> pd.DataFrame:
    """``groups.csv``: one row per image (see :class:`Result`)."""
    n = len(rel)
    labels = grouping.labels
    width = max(4, len(str(int(labels.max()) + 1))) if n else 4
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1) if n else np.zeros(0, np.int64)
    return pd.DataFrame(
        {
            "path": rel,
            "group": [f"g{int(g):0{width}d}" for g in labels],
            "group_size": sizes[labels] if n else np.zeros(0, np.int64),
            "confidence": np.round(grouping.confidence, 4),
            "stage": grouping.stage,
            "distance": np.round(grouping.distance.astype(np.float64), 4),
            "matched": [rel[j] if j >= 0 else "" for j in grouping.partner],
            "width": [f.width for f in facts],
            "height": [f.height for f in facts],
            "note": [f.note for f in facts],
            "sha256": digests,
        }
    )


def _model_info(model: PairModel, path, nets: list[Backbone]) -> dict:
    """run.json's description of the pair model, with a warning when it was
    fitted with other backbones than this run's."""
    fitted = model.info.get("fitted_with", [])
    ok = sorted(fitted) == sorted(net.name for net in nets)
    if not ok:
        log.warning(
            "the pair model was fitted with %s; confidences for %s are not calibrated "
            "(refit with benchmarks/calibrate.py)",
            fitted,
            [net.name for net in nets],
        )
    return {
        "source": str(path or "shipped"),
        "kind": "logistic regression" + (f" + {len(model.trees.feature)} boosted trees" if model.trees else ""),
        "fitted_on": model.info.get("fitted_on"),
        "fitted_with": fitted,
        "calibrated_for_these_backbones": ok,
    }


def group_counts(groups: pd.DataFrame) -> dict:
    """Counts of a groups table for run.json and the summary.

    Returns:
        ``{"groups_of_2_or_more", "images_in_groups", "singletons",
        "joined_by_stage": {stage: images}}`` (ints).
    """
    multi = groups.group_size > 1
    stages = {s: 0 for s in STAGES}
    stages.update({str(k): int(v) for k, v in groups.stage.value_counts().items() if k != "single"})
    return {
        "groups_of_2_or_more": int(groups.loc[multi, "group"].nunique()),
        "images_in_groups": int(multi.sum()),
        "singletons": int((~multi).sum()),
        "joined_by_stage": stages,
    }


class _CachedVerify:
    """Geometric verification that reuses results stored in the cache, keyed
    by the ordered pair of contents: RootSIFT matching is not symmetric (the
    ratio test runs from the first image's descriptors) and the colour
    mismatch is measured on the first image's foreground, so ``(a, b)`` and
    ``(b, a)`` are two results. A run with the cache decides exactly as a run
    without it, even where a folder holds one pair of contents in both
    orders (a photo under two names beside its edited copy)."""

    def __init__(self, verifier, cache: Cache, digests: list[str]):
        self.verifier, self.cache, self.digests = verifier, cache, digests

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        """``(m, 2)`` float64 ``(inliers, mismatch)`` of the pairs ``(i, j)``,
        each verified from ``i`` to ``j`` (results stored under the unordered
        pair, by earlier versions, are under another method name: not read)."""
        keys = [(self.digests[i], self.digests[j]) for i, j in ij]
        method = self.verifier.method_id + "-ordered"
        got = self.cache.get_verified(keys, method)
        out = np.array([got.get(k, (-1, -1.0)) for k in keys], dtype=np.float64).reshape(-1, 2)
        miss = out[:, 0] < 0
        for s in range(0, int(miss.sum()), 2000):  # stored as it goes: an interrupted run resumes
            rows = np.nonzero(miss)[0][s : s + 2000]
            out[rows] = self.verifier(ij[rows])
            self.cache.put_verified({keys[r]: (int(out[r, 0]), float(out[r, 1])) for r in rows}, method)
        return out


class Deduplicator:
    """Group the images of a folder that show the same product.

    Settings follow scikit-learn's habit: the constructor stores them and
    does no work; :meth:`run` does the work.

    Args:
        backbones: ``"auto"`` (the card's VGG16+ResNet50+InceptionV3 when their
            ImageNet weights are on disk, else ``efficientnet-lite0``), a
            comma-separated string or list of names, or Backbone objects.
        grouping: the grouping settings (:class:`dedup.grouping.GroupingParams`,
            validated there; ``None`` for the defaults).
        verify: count RootSIFT + RANSAC inliers and the colour mismatch after
            alignment for the candidate pairs (the pair model's strongest
            evidence of an edited copy and against a recoloured look-alike;
            without it copies are found less often). With the shipped pair
            model, only the pairs :func:`dedup.verify.worth_verifying` picks
            are verified; the others keep the confidence of the shipped
            model for unverified evidence (below the review threshold).
        verify_all: verify every candidate pair (as any other pair model
            needs, and as ``benchmarks/calibrate.py`` does to fit one).
        model_path: a pair-model JSON (``None``: the adapted model's refitted
            one when ``model`` has one, else the one shipped in the package).
        model: a folder written by ``dedup fit`` (or a loaded
            :class:`dedup.adapt.AdaptedModel`): the fused kNN search runs in
            its learned projection, with its colour weight and its pair model;
            ``backbones="auto"`` then means the model's backbones. A model is
            not used on a collection outside its domain (see
            :meth:`dedup.adapt.AdaptedModel.out_of_domain_share`; ``run.json``
            says so) unless ``force_model``.
        force_model: apply ``model`` even to a collection it finds foreign.
        decisions: a reviewer's decisions CSV (``path_a, path_b, decision``);
            stored in the cache, so later runs keep them.
        n_neighbours: neighbours per image taken from each ANN index as
            candidate pairs (the CLI's ``--neighbours``; not the k of k-means).
        phash_max_distance: Hamming distance (bits of 64) of the pHash pass.
        batch_size: images per inference batch.
        workers: decoding threads, overlapped with inference (Pillow releases
            the GIL while decoding and resizing, so threads scale).
        processes: when > 0, decode in that many spawn-started worker
            processes instead of threads (for decoders that hold the GIL;
            costs about a second of start-up per process).
        cache: path of the SQLite cache, ``None`` for ``OUT/cache.sqlite`` when
            run through the CLI (no cache in the library unless given), or
            ``False`` to disable.
        weights_dir: extra folder searched for weights files.
        allow_download: let Keras download weights of named backbones.
        n_trees, search_k_factor: Annoy settings (see :mod:`dedup.index`).
        exact_knn_max: up to this many images the neighbour lists are exact
            and the run builds the Annoy indexes for ``query``; above, the
            clustered search finds them (the distributed one with the Spark
            engine), the fused vectors are never stacked,
            and the first ``query`` builds the Annoy index
            (:func:`dedup.index.annoy_indexes`).
        max_pixels: decompression-bomb guard in pixels.
        progress: show tqdm progress bars.
        runtime: the backbones' inference runtime (one of
            :data:`dedup.backbones.runtime.RUNTIMES`; ``auto``: the fastest
            installed, measured per backbone by ``benchmarks/speed.py``).
        engine: ``"local"`` (this process: threads, the SQLite cache) or
            ``"spark"`` (hashing, decoding, embedding, the neighbour lists,
            the pHash search, the decisions and the grouping as Spark jobs,
            :class:`dedup.spark.SparkEngine`; the pair evidence runs on the
            driver; the groups are the local engine's), or a
            :class:`dedup.spark.SparkEngine`.
        spark_master: the Spark master URL for ``engine="spark"``.
        features: the Spark engine's features folder (Parquet tables of
            facts and embeddings by content, reused by later runs; replaces
            the SQLite cache's embeddings there, while the SQLite ``cache``
            still keeps verification results and decisions); ``None``: none.
    """

    def __init__(
        self,
        backbones="auto",
        grouping: GroupingParams | None = None,
        verify: bool = True,
        verify_all: bool = False,
        n_neighbours: int = DEFAULT_K,
        model_path: str | os.PathLike | None = None,
        model=None,
        force_model: bool = False,
        decisions: str | os.PathLike | None = None,
        phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE,
        batch_size: int = 32,
        workers: int = 2,
        processes: int = 0,
        cache=None,
        weights_dir: str | None = None,
        allow_download: bool = False,
        n_trees: int = DEFAULT_N_TREES,
        search_k_factor: int = SEARCH_K_FACTOR,
        exact_knn_max: int = EXACT_KNN_MAX,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        progress: bool = True,
        runtime: str = "auto",
        engine="local",
        spark_master: str = "local[*]",
        features: str | os.PathLike | None = None,
    ):
        self.backbones = backbones
        self.grouping = grouping
        self.verify = verify
        self.verify_all = verify_all
        self.model_path = model_path
        self.model = model
        self.force_model = force_model
        self.decisions = decisions
        self.n_neighbours = n_neighbours
        self.phash_max_distance = phash_max_distance
        self.batch_size = batch_size
        self.workers = workers
        self.processes = processes
        self.cache = cache
        self.weights_dir = weights_dir
        self.allow_download = allow_download
        self.n_trees = n_trees
        self.search_k_factor = search_k_factor
        self.exact_knn_max = exact_knn_max
        self.max_pixels = max_pixels
        self.progress = progress
        self.runtime = runtime
        self.engine = engine
        self.spark_master = spark_master
        self.features = features
        self._engine = None

    def settings(self) -> dict:
        """The constructor's settings as a JSON-able dict."""
        out = {}
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            if key == "backbones" and not isinstance(value, str):
                value = [b.name if isinstance(b, Backbone) else str(b) for b in value]
            if key == "model" and isinstance(value, AdaptedModel):
                value = "(an AdaptedModel object)"
            if key == "engine" and not isinstance(value, str):
                value = getattr(value, "name", str(value))
            if isinstance(value, GroupingParams):
                value = dataclasses.asdict(value)
            out[key] = str(value) if isinstance(value, Path) else value
        if out.get("grouping") is None:
            out["grouping"] = dataclasses.asdict(GroupingParams())
        return out

    def validate(self) -> "Deduplicator":
        """Check every setting (as scikit-learn checks parameters at fit time).

        Raises:
            ValueError: one line naming the setting and its accepted range.
        """
        self.grouping_params()
        from .backbones.runtime import RUNTIMES

        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if isinstance(self.engine, str) and self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        ints = {
            "n_neighbours": (self.n_neighbours, 1),
            "batch_size": (self.batch_size, 1),
            "workers": (self.workers, 1),
            "processes": (self.processes, 0),
            "n_trees": (self.n_trees, 1),
            "search_k_factor": (self.search_k_factor, 1),
            "exact_knn_max": (self.exact_knn_max, 0),
        }
        for name, (value, lo) in ints.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        d = self.phash_max_distance
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= 16:
            raise ValueError(f"phash_max_distance must be an integer in [0, 16] bits of 64, got {d!r}")
        if self.max_pixels is not None and (not isinstance(self.max_pixels, (int, np.integer)) or self.max_pixels < 1):
            raise ValueError(f"max_pixels must be None or an integer >= 1, got {self.max_pixels!r}")
        return self

    def check(self) -> tuple[list[Backbone], str]:
        """Resolve the backbones and their weights (no image work).

        Raises:
            WeightsError: a named backbone's weights are missing or wrong.
            ValueError: bad settings.
        """
        self.validate()
        model = self.adapted_model()
        self.pair_model()
        if self.decisions is not None:
            read_decisions(self.decisions)
        spec = self.backbones
        if model is not None and isinstance(spec, str) and spec.strip().lower() == "auto":
            spec = [b["name"] for b in model.backbones]
        nets, note = select_backbones(spec, self.weights_dir, self.allow_download, self.runtime)
        if model is not None:
            model.check_backbones(nets)
            if spec is not self.backbones:
                note = "the adapted model's backbones: " + ", ".join(n.name for n in nets)
        return nets, note

    # ------------------------------------------------------------------
    def run(
        self,
        root: str | os.PathLike,
        files: list[str | os.PathLike] | None = None,
        backbones: tuple[list[Backbone], str] | None = None,
    ) -> Result:
        """Run every stage on the images under ``root``.

        Args:
            root: the catalogue folder; paths in the result are relative to it.
            files: restrict the run to these files (absolute or relative to
                ``root``, or URLs as ``str``, read through fsspec:
                :func:`dedup.discover.read_source`) instead of walking
                ``root``; used by ``bench`` and by manifests.
            backbones: the output of :meth:`check`, when already called.

        Returns:
            A :class:`Result`.

        Raises:
            FileNotFoundError / NotADirectoryError: ``root`` is not a folder.
            WeightsError: weights missing, before any image work.
        """
        t_all = time.perf_counter()
        timings: dict[str, float] = {}
        nets, backbone_note = backbones or self.check()
        root = Path(root)

        with _timed(timings, "discover"):
            paths, skipped = _discover(root, files)

        cache = self.open_cache()
        try:  # a URL is downloaded once, then read by every stage from the spool
            with download_spool() if any(is_url(p) for p in paths) else contextlib.nullcontext():
                inputs = self._embed(root, paths, skipped, nets, cache, timings)
                result = self._run(root, inputs, nets, cache, timings)
        finally:
            if cache is not None:
                cache.close()
        result.meta.update(
            {
                "dedup_version": __version__,
                "root": printable(root.resolve()),
                "settings": self.settings(),
                "backbones": [b.describe() for b in nets],
                "backbone_selection": backbone_note,
                "cache": None
                if cache is None
                else {
                    "path": str(cache.path),
                    "rebuilt_from_corrupt": str(cache.rebuilt_from) if cache.rebuilt_from else None,
                },
                "seconds": {
                    **{k: round(v, 3) for k, v in timings.items()},
                    "total": round(time.perf_counter() - t_all, 3),
                },
            }
        )
        return result

    # ------------------------------------------------------------------
    def embed(
        self,
        root: str | os.PathLike,
        files: list[str | os.PathLike] | None = None,
        backbones: tuple[list[Backbone], str] | None = None,
    ) -> "Embeddings":
        """Stages 1-3 only (discover, digest, decode + embed, cached as in
        :meth:`run`): what ``dedup fit`` learns from.

        Args, Raises: as for :meth:`run`.

        Returns:
            :class:`Embeddings`.
        """
        nets, _ = backbones or self.check()
        root = Path(root)
        paths, skipped = _discover(root, files)
        cache = self.open_cache()
        try:
            return self._embed(root, paths, skipped, nets, cache, {})
        finally:
            if cache is not None:
                cache.close()

    def open_cache(self) -> Cache | None:
        """The SQLite cache named by ``cache``, opened (the caller closes it);
        ``None`` when disabled.

        Raises:
            dedup.cache.CacheError: the path cannot be used.
            dedup.lock.BusyError: another run holds this cache.
        """
        return None if self.cache in (None, False) else Cache(self.cache)

    def spark_engine(self):
        """The :class:`dedup.spark.SparkEngine` this object runs on, or
        ``None`` for the local engine (made on first use; needs PySpark)."""
        if isinstance(self.engine, str):
            if self.engine == "local":
                return None
            if self._engine is None:
                from .spark import SparkEngine

                features = None if self.features is None else str(self.features)
                self._engine = SparkEngine(self.spark_master, features=features)
            return self._engine
        return self.engine

    def _embed(
        self,
        root: Path,
        paths: list[Path],
        skipped: list[Skipped],
        nets: list[Backbone],
        cache: Cache | None,
        timings: dict,
    ) -> "Embeddings":
        """Stages 2 and 3 on discovered files."""
        skipped_rows = [(_shown(s.path, root), s.reason) for s in skipped]
        engine = self.spark_engine()
        with _timed(timings, "sha256"):
            if engine is None:
                digests = digest_files(paths, cache, self.workers, self.progress)
            else:
                digests = engine.digests(paths)
        items = [(p, d) for p, d in zip(paths, digests) if isinstance(d, str)]
        skipped_rows += [
            (_shown(p, root), f"unreadable: {getattr(d, 'strerror', None) or d}")
            for p, d in zip(paths, digests)
            if not isinstance(d, str)
        ]
        with _timed(timings, "decode_embed"):
            if engine is None:
                got = decode_and_embed(
                    [p for p, _ in items],
                    [d for _, d in items],
                    nets,
                    cache,
                    batch_size=self.batch_size,
                    workers=self.workers,
                    processes=self.processes,
                    max_pixels=self.max_pixels,
                    progress=self.progress,
                )
            else:
                got = engine.decode_and_embed(
                    [p for p, _ in items],
                    [d for _, d in items],
                    nets,
                    batch_size=self.batch_size,
                    max_pixels=self.max_pixels,
                )
        timings["inference_only"] = got.inference_seconds
        skipped_rows += [(_shown(items[i][0], root), reason) for i, reason in got.failed.items()]
        ok = [i for i in range(len(items)) if i not in got.failed]
        facts = [f for i in ok if (f := got.facts[i]) is not None]
        assert len(facts) == len(ok) and all(h[ok].all() for h in got.have), "every image not failed is complete"
        files = [items[i][0] for i in ok]
        return Embeddings(
            paths=[_shown(f, root) for f in files],
            files=files,
            digests=[items[i][1] for i in ok],
            facts=facts,
            embeddings={
                net.name: got.vectors[b] if len(ok) == len(items) else got.vectors[b][ok] for b, net in enumerate(nets)
            },
            colours=got.colours if len(ok) == len(items) else got.colours[ok],
            codes=np.array([f.phash for f in facts], dtype=np.uint64),
            skipped=pd.DataFrame(skipped_rows, columns=["path", "reason"]).sort_values("path", ignore_index=True),
            layouts=got.layouts if len(ok) == len(items) else got.layouts[ok],
            found=len(paths),
            from_cache=got.from_cache,
            embedded=got.embedded,
            inference_seconds=got.inference_seconds,
        )

    def _run(
        self, root: Path, inputs: "Embeddings", nets: list[Backbone], cache: Cache | None, timings: dict
    ) -> Result:
        """Stages 4-6 on the embedded images; each is a function of its own module."""
        files, dig, rel, facts = inputs.files, inputs.digests, inputs.paths, inputs.facts
        emb, colours, codes = inputs.embeddings, inputs.colours, inputs.codes

        engine = self.spark_engine()
        with _timed(timings, "hash_pass"):
            exact = hash_pass(dig, codes, self.phash_max_distance, None if engine is None else engine.phash_pairs)
        params = self.grouping_params()
        adapted, adapted_info, fused = self._applicable_model(list(emb.values()), colours)
        scored = self.score(
            emb, colours, codes, files, dig, cache, exact["phash"], timings, adapted, fused, inputs.layouts
        )
        indexes, fused_ids, pairs, verifier = scored.indexes, scored.fused_ids, scored.pairs, scored.verifier
        with _timed(timings, "group"):
            model = self.pair_model(adapted)
            decisions = self._decisions(rel, dig, cache)
            if engine is None:
                confidence = self.confidence(pairs, adapted, scored.p_unverified)
                grouping = group(len(files), pairs, confidence, exact, params, decisions)
            else:  # the same decisions and groups, as DataFrame columns and a group-apply
                unverified = PairModel.load(verified=False) if self.screens(adapted) else None
                grouping, confidence = engine.group(len(files), pairs, exact, model, params, decisions, unverified)

        df = groups_table(rel, grouping, facts, dig)
        review = review_table(grouping.review, pairs, confidence, rel)
        counts = {
            "found": inputs.found,
            "images": len(files),
            "skipped": len(inputs.skipped),
            "from_cache": inputs.from_cache,
            "embedded": inputs.embedded,
            **group_counts(df),
            "candidate_pairs": int(len(pairs.ij)),
            "pairs_to_review": int(len(review)),
            "decisions_applied": int(len(decisions)),
            "pairs_verified_geometrically": verifier.pairs_checked if verifier is not None else 0,
        }
        meta = {
            "counts": counts,
            "pair_model": _model_info(model, self._pair_model_source(adapted), nets),
            "adapted_model": adapted_info,
            "engine": {"name": "local"} if engine is None else engine.describe(),
            "images_per_second_inference": (
                round(inputs.embedded / inputs.inference_seconds, 2) if inputs.inference_seconds > 0 else None
            ),
        }
        return Result(
            root,
            df,
            inputs.skipped,
            emb,
            indexes,
            colours,
            pairs,
            exact,
            meta,
            verifier,
            files,
            confidence=confidence,
            review=review,
            codes=codes,
            fused_ids=fused_ids,
            layouts=inputs.layouts,
        )

    def score(
        self,
        emb: dict[str, np.ndarray],
        colours: np.ndarray,
        codes: np.ndarray,
        files: list[Path],
        digests: list[str],
        cache: Cache | None,
        phash_pairs: np.ndarray | None = None,
        timings: dict | None = None,
        adapted: AdaptedModel | None = None,
        fused: np.ndarray | WeightedVectors | None = None,
        layouts: np.ndarray | None = None,
    ) -> "Scored":
        """Stages 5 and the evidence of stage 6: the ANN indexes, the candidate
        pairs and their evidence (geometric verification included, cached
        by content), before any decision. The lists and the pairs are found
        over one row per content (:func:`dedup.hashing.unique_contents`: the
        first of each set of byte-identical files, which the hash pass
        joins), so that a photo uploaded many times cannot fill the lists
        with its own copies; a copy gets its first row's list. On the Spark engine above
        ``exact_knn_max`` images (and without an adapted model), the lists
        and the evidence are Spark jobs
        (:meth:`dedup.spark.SparkEngine.pair_evidence`); verification stays
        at the driver.

        Args:
            emb: backbone name -> ``(n, d)`` float32 L2-normalised embeddings.
            colours: ``(n, dedup.colour.DIM)`` float32; codes: ``(n,)`` uint64 pHashes.
            files, digests: each row's file and SHA-256 (for verification).
            cache: where verification results are kept, or ``None``.
            phash_pairs: ``(e, 2)`` int64 pHash near-duplicate pairs, also candidates.
            timings: seconds per stage are added to it (``index``, ``group``).
            adapted: search the fused space in this model's projection.
            fused: the fused space when already computed
                (:meth:`fused_space` of the same inputs); else computed here.
            layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8 colour layouts
                (``None``: the colour distance stands in, see :func:`score_pairs`).

        Returns:
            A :class:`Scored`.
        """
        timings = {} if timings is None else timings
        params = self.grouping_params()
        engine = self.spark_engine()
        search = None if engine is None else engine.neighbours
        embeddings = list(emb.values())
        # the search and the evidence run over one row per content: byte copies
        # (joined by the hash pass) would otherwise fill each other's lists
        rows, content = unique_contents(digests)
        take = _Rows(rows, len(rows) < len(digests))
        emb_u, colours_u = take.each(embeddings), take(colours)  # copied only when there are copies
        phash_u = content_pairs(phash_pairs, content)
        if engine is not None and adapted is None and len(rows) > self.exact_knn_max:
            # lists and evidence as Spark jobs, each pair scored where the search found it
            with _timed(timings, "index"):
                ids, pairs = engine.pair_evidence(
                    emb_u,
                    colours_u,
                    take(layouts),
                    take(codes),
                    phash_u,
                    self.n_neighbours + 1,
                    params.colour_weight,
                    params.k_context,
                )
            indexes: dict[str, AnnIndex] = {}
        else:
            with _timed(timings, "index"):
                indexes = annoy_indexes(emb, self.n_trees, self.search_k_factor, self.exact_knn_max)
                fused_u = self.fused_space(emb_u, colours_u, adapted) if fused is None else take(fused)
                lists = neighbour_lists(
                    {**dict(zip(emb, emb_u)), "fused": fused_u},
                    self.n_neighbours,
                    self.exact_knn_max,
                    self.progress,
                    search,
                )
                ids = lists[-1]
            with _timed(timings, "group"):
                ij = candidate_pairs(lists, extra=phash_u)
                # copies are recognised in the unadapted fused space, where SAME_CONTENT_DISTANCE was chosen
                raw = None if adapted is None else fused_parts(emb_u, colours_u, params.colour_weight)
                pairs = score_pairs(
                    ij, emb_u, colours_u, fused_u, ids, take(codes), params.k_context, take(layouts), copies_space=raw
                )
        # back to rows: each content's pairs between first rows; a copy has its first row's list
        pairs = dataclasses.replace(pairs, ij=rows[pairs.ij])
        fused_ids = np.where(ids >= 0, rows[np.maximum(ids, 0)], -1)[content]
        with _timed(timings, "group"):
            verifier, p_unverified = self._verify(pairs, files, digests, cache, screen=self.screens(adapted))
        return Scored(indexes, fused_ids, pairs, verifier, p_unverified)

    def screens(self, adapted: AdaptedModel | None = None) -> bool:
        """Whether verification is spent only on the pairs worth it
        (:func:`dedup.verify.worth_verifying`): with verification on, the
        shipped pair model, and not ``verify_all``."""
        return bool(self.verify) and not self.verify_all and self._pair_model_source(adapted) is None

    def _verify(
        self, pairs: Pairs, files: list[Path], digests: list[str], cache: Cache | None, screen: bool = False
    ) -> tuple[GeometricVerifier | None, np.ndarray | None]:
        """Fill ``pairs.inliers`` and ``pairs.mismatch`` by geometric verification
        (cached by content) of every pair, or with ``screen`` of the pairs
        worth it (the others keep ``inliers == -1``); returns the verifier
        (``None`` when disabled) and, with ``screen``, the unverified model's
        P(same product) of every pair that chose them."""
        if not self.verify:
            return None, None
        from .verify import MAX_SIDE, GeometricVerifier, worth_verifying

        max_pixels = self.max_pixels
        verifier = GeometricVerifier(_ImageAt(files, MAX_SIDE, max_pixels))
        verifier.progress = self.progress
        verify = verifier if cache is None else _CachedVerify(verifier, cache, digests)
        rows = np.arange(len(pairs.ij))
        p = None
        if screen:
            p = PairModel.load(verified=False).predict_pairs(pairs)  # inliers still -1: unverified evidence
            rows = np.nonzero(worth_verifying(pairs.ij, pairs.distance, p))[0]
        if len(rows):
            found = verify(pairs.ij[rows])
            pairs.inliers[rows] = found[:, 0].astype(np.int64)
            pairs.mismatch[rows] = found[:, 1].astype(np.float32)
        return verifier, p

    def confidence(
        self, pairs: Pairs, adapted: AdaptedModel | None = None, p_unverified: np.ndarray | None = None
    ) -> np.ndarray:
        """``(m,)`` float64 calibrated P(same product) of every scored pair:
        :meth:`pair_model`'s, except that a pair left unverified by the
        screening (:meth:`screens`) gets the shipped model for unverified
        evidence, which was calibrated on that evidence (``p_unverified``,
        :attr:`Scored.p_unverified`, when the screen computed it already)."""
        model = self.pair_model(adapted)
        if not self.screens(adapted):
            return model.predict_pairs(pairs)
        unchecked = np.asarray(pairs.inliers) < 0
        out = np.empty(len(pairs.ij), np.float64)
        out[~unchecked] = model.predict_pairs(pairs.subset(~unchecked))
        if p_unverified is not None:
            out[unchecked] = np.asarray(p_unverified, np.float64)[unchecked]
        else:
            out[unchecked] = PairModel.load(verified=False).predict_pairs(pairs.subset(unchecked))
        return out

    def grouping_params(self, **overrides) -> GroupingParams:
        """This object's grouping settings, some overridden (validated).

        Raises:
            ValueError: a setting out of its range.
        """
        base = self.grouping if self.grouping is not None else GroupingParams()
        return dataclasses.replace(base, **overrides)

    def pair_model(self, adapted: AdaptedModel | None = None) -> PairModel:
        """The pair model: ``model_path`` when given, else the refitted one of
        ``adapted`` (the adapted model in use) when it has one, else the one
        shipped in the package for this run's evidence (with or without
        geometric verification, :meth:`dedup.calibration.PairModel.load`)."""
        refitted = self._refitted_pair_model(adapted)
        return refitted if refitted is not None else PairModel.load(self.model_path, verified=bool(self.verify))

    def _refitted_pair_model(self, adapted: AdaptedModel | None) -> PairModel | None:
        """``adapted``'s refitted pair model when :meth:`pair_model` takes it, else ``None``."""
        return adapted.pair_model if self.model_path is None and adapted is not None else None

    def _pair_model_source(self, adapted: AdaptedModel | None) -> str | None:
        """Where :meth:`pair_model` took the model from (``None``: shipped)."""
        if self._refitted_pair_model(adapted) is not None:
            return f"the adapted model {self._model_name()}"
        if self.model_path is None:
            return None if self.verify else "shipped, for runs without geometric verification"
        return str(self.model_path)

    def _model_name(self) -> str:
        return "(given as an object)" if isinstance(self.model, AdaptedModel) else str(self.model)

    def adapted_model(self) -> AdaptedModel | None:
        """The adapted model (``model``), loaded once; ``None`` without one.

        Raises:
            ModelError: the folder is not a usable model.
        """
        if self.model is None or isinstance(self.model, AdaptedModel):
            return self.model
        cached = getattr(self, "_loaded_model", None)
        if cached is None or cached[0] != self.model:
            cached = (self.model, AdaptedModel.load(self.model))
            self._loaded_model = cached
        return cached[1]

    def fused_space(
        self,
        embeddings: list[np.ndarray],
        colours: np.ndarray,
        adapted: AdaptedModel | None = None,
        base: np.ndarray | None = None,
    ) -> np.ndarray | WeightedVectors:
        """The vectors of the fused kNN search: :func:`dedup.grouping.fused_vectors`,
        then ``adapted``'s projection when given (``base``: those fused
        vectors, with ``adapted``'s colour weight, when already computed).
        Above ``exact_knn_max`` images and without a model,
        the same rows as unstacked parts (:func:`dedup.grouping.fused_parts`),
        so that memory stays O(n x d).

        Returns:
            ``(n, D)`` float32 with unit rows (``D`` = the projection's ``dim``
            with a model, else ``sum d_b + colour.DIM``), or those rows as a
            :class:`dedup.index.WeightedVectors`.
        """
        if adapted is None:
            w = self.grouping_params().colour_weight
            if len(colours) > self.exact_knn_max:
                return fused_parts(embeddings, colours, w)
            return fused_vectors(embeddings, colours, w)
        if base is None:
            base = fused_vectors(embeddings, colours, adapted.colour_weight)
        return adapted.projection.transform(base)

    def _applicable_model(
        self, embeddings: list[np.ndarray], colours: np.ndarray
    ) -> tuple[AdaptedModel | None, dict | None, np.ndarray | WeightedVectors | None]:
        """The adapted model to use on this collection (``None`` without one,
        or when it finds the collection foreign and ``force_model`` is off),
        run.json's record of it, and the fused space in its projection when
        it is used (``None`` otherwise), computed once for both."""
        model = self.adapted_model()
        if model is None:
            return None, None, None
        base = fused_vectors(embeddings, colours, model.colour_weight)
        share = model.out_of_domain_share(base)
        applied = self.force_model or share <= MAX_OUT_OF_DOMAIN
        if not applied:
            log.warning(
                "the adapted model %s is not used: %.0f%% of these images lie outside the photos it was "
                "fitted on (over %.0f%%), where it measured worse than no model (README, dedup fit); "
                "--force-model applies it anyway",
                self._model_name(),
                100 * share,
                100 * MAX_OUT_OF_DOMAIN,
            )
        info = {**model.describe(self._model_name()), "applied": bool(applied), "out_of_domain_share": round(share, 4)}
        if not applied:
            return None, info, None
        return model, info, self.fused_space(embeddings, colours, model, base)

    def _decisions(self, rel: list[str], digests: list[str], cache: Cache | None) -> pd.DataFrame:
        """A person's decisions as ``i, j, same`` rows: the ``decisions`` file
        (stored in the cache, keyed by content, so later runs keep them) and
        those the cache remembers from earlier runs."""
        by_digest: dict[tuple[str, str], bool] = {}
        if self.decisions is not None:
            new = read_decisions(self.decisions)
            where = {p: d for p, d in zip(rel, digests)}
            unknown = [p for p in pd.concat([new.path_a, new.path_b]) if p not in where]
            if unknown:
                log.warning(
                    "%d decision paths are not among the images of this run (first: %s); ignored",
                    len(unknown),
                    unknown[0],
                )
            for a, b, same in zip(new.path_a, new.path_b, new.same):
                if a in where and b in where and where[a] != where[b]:
                    da, db = sorted((where[a], where[b]))
                    by_digest[(da, db)] = bool(same)
            if cache is not None:
                cache.put_decisions(by_digest)
        if cache is not None:
            by_digest = {**cache.get_decisions(), **by_digest}
        # each content's first row: the pairs are scored between first rows
        # (:meth:`score`), and the copies join those through the SHA-256 pairs
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            first.setdefault(d, i)
        out = [(first[da], first[db], same) for (da, db), same in by_digest.items() if da in first and db in first]
        return pd.DataFrame(out, columns=["i", "j", "same"])

    def regroup(self, result: "Result", **overrides) -> Grouping:
        """Group a finished run's scored pairs again, some settings overridden
        (cheap: nothing is re-embedded or re-verified). Used by ``bench``'s
        confidence sweep.

        Args:
            result: a :class:`Result` of :meth:`run`.
            overrides: any :class:`GroupingParams` field except ``colour_weight``
                and ``k_context`` (they change the candidates).
        """
        return group(
            len(result.groups), result.pairs, result.confidence, result.hash_pairs, self.grouping_params(**overrides)
        )


def read_decisions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a reviewer's decisions CSV (as the gallery downloads it).

    Columns ``path_a, path_b, decision``; ``decision`` is ``same`` or
    ``different`` (also accepted: yes/no, true/false, 1/0).

    Returns:
        DataFrame ``path_a, path_b, same`` (bool).

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing columns or an unknown decision word.
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"path_a", "path_b", "decision"} <= set(df.columns):
        raise ValueError(f"{path}: a decisions file needs columns path_a,path_b,decision (has {list(df.columns)})")
    words = {
        "same": True,
        "yes": True,
        "true": True,
        "1": True,
        "different": False,
        "no": False,
        "false": False,
        "0": False,
    }
    dec = df.decision.str.strip().str.lower()
    bad = df[~dec.isin(list(words))]
    if len(bad):
        raise ValueError(
            f"{path}: decision must be 'same' or 'different' (row {bad.index[0] + 2}: {bad.decision.iloc[0]!r})"
        )
    return pd.DataFrame({"path_a": df.path_a, "path_b": df.path_b, "same": dec.map(words).astype(bool)})


def review_table(rows: np.ndarray, pairs: Pairs, confidence: np.ndarray, rel: list[str]) -> pd.DataFrame:
    """``review.csv``: doubtful pairs left apart, with the evidence that decided.

    Returns:
        DataFrame ``path_a, path_b, confidence, distance, colour_distance,
        layout_mean, layout_max, context, rank, inliers,
        aligned_colour_mismatch, phash_bits``, strongest first
        (``layout_*``: mean and largest Hellinger distance of the colour
        layouts' bands, [0, 1]; ``inliers`` -1: not verified).
    """
    rows = np.asarray(rows, np.int64)
    ij = pairs.ij[rows]
    return pd.DataFrame(
        {
            "path_a": [rel[i] for i in ij[:, 0]],
            "path_b": [rel[j] for j in ij[:, 1]],
            "confidence": np.round(confidence[rows], 4),
            "distance": np.round(pairs.distance[rows], 4),
            "colour_distance": np.round(pairs.colour[rows], 4),
            "layout_mean": np.round(pairs.layout_mean[rows], 4),
            "layout_max": np.round(pairs.layout_max[rows], 4),
            "context": np.round(pairs.context[rows], 4),
            "rank": np.minimum(pairs.rank_ij[rows], pairs.rank_ji[rows]),
            "inliers": pairs.inliers[rows],
            "aligned_colour_mismatch": np.round(pairs.mismatch[rows], 4),
            "phash_bits": pairs.phash_bits[rows],
        }
    )
