"""The whole run as one library call: :class:`Deduplicator`.

``Deduplicator(...).run(DIR)`` wires the stages (discover, decode, exact
pass, embed, index, group) and returns a :class:`Result`; the CLI only
parses arguments, calls this and :func:`dedup.report.write_report`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import __version__
from .backbones import Backbone, select_backbones
from .cache import EmbeddingCache
from .colour import DIM as COLOUR_DIM
from .colour import colour_descriptor
from .decode import DEFAULT_MAX_PIXELS, DecodeError, load_image
from .discover import Skipped, discover
from .calibration import PairModel, pair_features
from .grouping import (STAGES, Grouping, GroupingParams, Pairs, candidate_pairs, fused_vectors, group,
                       score_pairs)
from .hashing import DEFAULT_PHASH_MAX_DISTANCE, exact_groups, near_duplicate_pairs, phash, sha256_file
from .index import DEFAULT_N_TREES, SEARCH_K_FACTOR, AnnIndex

log = logging.getLogger(__name__)

#: Neighbours per image taken from each ANN index as candidates.
DEFAULT_K: int = 10


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
        colours: ``(n, 116)`` float32 colour descriptors.
        pairs: the scored candidate pairs (:class:`dedup.grouping.Pairs`).
        confidence: ``(m,)`` float64 calibrated P(same product) of each pair.
        review: the doubtful pairs left apart (``review.csv``, see
            :func:`review_table`).
        codes: ``(n,)`` uint64 pHashes; fused_ids: ``(n, k+1)`` int64 kNN ids
            in the colour-fused space.
        meta: settings, backbones with weights provenance, counts, seconds
            per stage (written to run.json).
        verifier: the geometric verifier used (or ``None``).
        files: the real path of each row of ``groups`` (``groups.path`` is
            made printable: a name that is not valid UTF-8 is backslash-escaped
            there, so act on files through this list).
    """

    root: Path
    groups: pd.DataFrame
    skipped: pd.DataFrame
    embeddings: dict[str, np.ndarray]
    indexes: dict[str, AnnIndex]
    colours: np.ndarray
    pairs: object
    exact_pairs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    verifier: object = None
    files: list = field(default_factory=list)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    review: pd.DataFrame = field(default_factory=pd.DataFrame)
    codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    fused_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))

    def ensemble_embeddings(self) -> np.ndarray:
        """``(n, sum d_b)`` float32: the backbones' embeddings side by side, each
        scaled by ``1/sqrt(B)``, so that a dot product is the mean over
        backbones of the cosine similarity (rows have unit norm)."""
        mats = list(self.embeddings.values())
        if not mats:
            return np.zeros((len(self.groups), 0), np.float32)
        return (np.hstack(mats) / np.sqrt(len(mats))).astype(np.float32)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _safe_str(s: str) -> str:
    """A path string that can always be written as UTF-8 (surrogates escaped)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, printable (what groups.csv and skipped.csv show)."""
    return _safe_str(_rel(path, root))


def _decode_task(path: Path, nets: list[Backbone], need_embed: list[bool], max_pixels: int | None):
    """Decode one file and compute what every stage needs from its pixels.

    Module-level (picklable), so that it runs in threads or in spawn-started
    processes alike.

    Returns:
        ``(width, height, note, phash, colour, prepared)``; ``prepared`` holds
        each backbone's network input (``None`` where the cache has the
        embedding).

    Raises:
        DecodeError: the file cannot be decoded.
    """
    target = max(n.input_size for n in nets) if nets else 64
    dec = load_image(path, target_size=target, max_pixels=max_pixels)
    prepared = [n.prepare(dec.image) if need else None for n, need in zip(nets, need_embed)]
    return dec.width, dec.height, dec.note, phash(dec.image), colour_descriptor(dec.image), prepared


def group_counts(groups: pd.DataFrame) -> dict:
    """Counts of a groups table for run.json and the summary.

    Returns:
        ``{"groups_of_2_or_more", "images_in_groups", "singletons",
        "joined_by_stage": {stage: images}}`` (ints).
    """
    multi = groups.group_size > 1
    stages = {s: 0 for s in STAGES}
    stages.update({str(k): int(v) for k, v in groups.stage.value_counts().items() if k != "single"})
    return {"groups_of_2_or_more": int(groups.loc[multi, "group"].nunique()),
            "images_in_groups": int(multi.sum()), "singletons": int((~multi).sum()), "joined_by_stage": stages}


class _CachedVerify:
    """Geometric verification that reuses results stored in the cache (keyed by content)."""

    def __init__(self, verifier, cache: EmbeddingCache, digests: list[str]):
        self.verifier, self.cache, self.digests = verifier, cache, digests

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        keys = [tuple(sorted((self.digests[i], self.digests[j]))) for i, j in ij]
        method = self.verifier.method_id
        got = self.cache.get_verified(keys, method)
        out = np.array([got.get(k, (-1, -1.0)) for k in keys], dtype=np.float64).reshape(-1, 2)
        miss = out[:, 0] < 0
        for s in range(0, int(miss.sum()), 2000):  # stored as it goes: an interrupted run resumes
            rows = np.nonzero(miss)[0][s:s + 2000]
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
            alignment for every candidate pair (the pair model's strongest
            evidence of an edited copy and against a recoloured look-alike;
            without it copies are found less often).
        model_path: a pair-model JSON (``None``: the one shipped in the package).
        decisions: a reviewer's decisions CSV (``path_a, path_b, decision``);
            stored in the cache, so later runs keep them.
        k: neighbours per image from each ANN index.
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
        max_pixels: decompression-bomb guard in pixels.
        progress: show tqdm progress bars.
    """

    def __init__(self, backbones="auto", grouping: GroupingParams | None = None, verify: bool = True,
                 k: int = DEFAULT_K, model_path: str | os.PathLike | None = None,
                 decisions: str | os.PathLike | None = None,
                 phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, batch_size: int = 32,
                 workers: int = 2, processes: int = 0, cache=None, weights_dir: str | None = None,
                 allow_download: bool = False, n_trees: int = DEFAULT_N_TREES,
                 search_k_factor: int = SEARCH_K_FACTOR, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 progress: bool = True):
        self.backbones = backbones
        self.grouping = grouping
        self.verify = verify
        self.model_path = model_path
        self.decisions = decisions
        self.k = k
        self.phash_max_distance = phash_max_distance
        self.batch_size = batch_size
        self.workers = workers
        self.processes = processes
        self.cache = cache
        self.weights_dir = weights_dir
        self.allow_download = allow_download
        self.n_trees = n_trees
        self.search_k_factor = search_k_factor
        self.max_pixels = max_pixels
        self.progress = progress

    def settings(self) -> dict:
        """The constructor's settings as a JSON-able dict."""
        out = {}
        for key, value in vars(self).items():
            if key == "backbones" and not isinstance(value, str):
                value = [b.name if isinstance(b, Backbone) else str(b) for b in value]
            if isinstance(value, GroupingParams):
                value = dataclasses.asdict(value)
            out[key] = str(value) if isinstance(value, Path) else value
        if out.get("grouping") is None:
            out["grouping"] = dataclasses.asdict(GroupingParams())
        return out

    def check(self) -> tuple[list[Backbone], str]:
        """Resolve the backbones and their weights (no image work).

        Raises:
            WeightsError: a named backbone's weights are missing or wrong.
            ValueError: bad settings.
        """
        self.grouping_params()
        if self.k < 1 or self.batch_size < 1:
            raise ValueError("k and batch_size must be >= 1")
        if not 0 <= self.phash_max_distance <= 16:
            raise ValueError(f"phash_max_distance must lie in [0, 16] bits of 64, got {self.phash_max_distance}")
        self.pair_model()
        if self.decisions is not None:
            read_decisions(self.decisions)
        return select_backbones(self.backbones, self.weights_dir, self.allow_download)

    # ------------------------------------------------------------------
    def run(self, root: str | os.PathLike, files: list[str | os.PathLike] | None = None,
            backbones: tuple[list[Backbone], str] | None = None) -> Result:
        """Run every stage on the images under ``root``.

        Args:
            root: the catalogue folder; paths in the result are relative to it.
            files: restrict the run to these files (absolute or relative to
                ``root``) instead of walking ``root``; used by ``bench``.
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

        t = time.perf_counter()
        if files is None:
            paths, skipped = discover(root)
        else:
            paths, skipped = [], []
            for f in files:
                p = Path(f) if Path(f).is_absolute() else root / f
                found, sk = discover(p) if p.exists() else ([], [Skipped(p, "file not found")])
                paths += found
                skipped += sk
        timings["discover"] = time.perf_counter() - t

        cache = None
        if self.cache not in (None, False):
            cache = EmbeddingCache(self.cache)
        try:
            result = self._run(root, paths, skipped, nets, cache, timings)
        finally:
            if cache is not None:
                cache.close()
        result.meta.update({
            "dedup_version": __version__,
            "root": _safe_str(str(root.resolve())),
            "settings": self.settings(),
            "backbones": [b.describe() for b in nets],
            "backbone_selection": backbone_note,
            "cache": None if cache is None else {"path": str(cache.path),
                                                 "rebuilt_from_corrupt": str(cache.rebuilt_from)
                                                 if cache.rebuilt_from else None},
            "seconds": {**{k: round(v, 3) for k, v in timings.items()},
                        "total": round(time.perf_counter() - t_all, 3)},
        })
        return result

    # ------------------------------------------------------------------
    def _digests(self, paths: list[Path], cache: EmbeddingCache | None) -> list[str | OSError]:
        """SHA-256 per path (an ``OSError`` where unreadable); cached by (path, size, mtime)."""
        out: list[str | OSError | None] = [None] * len(paths)
        stats: list[tuple[str, int, int] | None] = [None] * len(paths)
        for i, p in enumerate(paths):
            try:
                st = p.stat()
            except OSError as exc:
                out[i] = exc
                continue
            stats[i] = (os.fsencode(p.resolve()), st.st_size, st.st_mtime_ns)
            if cache is not None:
                out[i] = cache.get_digest(*stats[i])
        todo = [i for i in range(len(paths)) if out[i] is None]

        def one(i: int):
            try:
                return sha256_file(paths[i])
            except OSError as exc:
                return exc

        with ThreadPoolExecutor(max(1, self.workers)) as ex:
            for i, digest in zip(todo, tqdm(ex.map(one, todo), total=len(todo), desc="sha256",
                                            disable=not self.progress, unit="img")):
                out[i] = digest
                if cache is not None and isinstance(digest, str):
                    cache.put_digest(*stats[i], digest)
        if cache is not None:
            cache.commit()
        return out


    def _run(self, root: Path, paths: list[Path], skipped: list[Skipped], nets: list[Backbone],
             cache: EmbeddingCache | None, timings: dict) -> Result:
        skipped_rows = [(_shown(s.path, root), s.reason) for s in skipped]

        t = time.perf_counter()
        digests = self._digests(paths, cache)
        keep = []
        for p, d in zip(paths, digests):
            if isinstance(d, str):
                keep.append((p, d))
            else:
                skipped_rows.append((_shown(p, root), f"unreadable: {getattr(d, 'strerror', d)}"))
        timings["sha256"] = time.perf_counter() - t

        # Decode + hash + embed, reusing everything the cache already has.
        t = time.perf_counter()
        n0 = len(keep)
        info: list[dict | None] = [None] * n0
        vecs: list[list[np.ndarray | None]] = [[None] * n0 for _ in nets]
        if cache is not None:
            for i, (_, d) in enumerate(keep):
                info[i] = cache.get_file(d)
                if info[i] is not None and len(info[i]["colour"]) != COLOUR_DIM:
                    info[i] = None  # stored by another descriptor version
            uniq = sorted({d for _, d in keep})
            for b, net in enumerate(nets):
                got = cache.get_embeddings(uniq, net.name, net.weights_id, net.dim)
                for i, (_, d) in enumerate(keep):
                    vecs[b][i] = got.get(d)
        # Identical files are decoded and embedded once.
        first_of: dict[str, int] = {}
        todo = []
        for i, (_, d) in enumerate(keep):
            if d in first_of:
                continue
            first_of[d] = i
            if info[i] is None or any(v[i] is None for v in vecs):
                todo.append(i)
        failed: dict[int, str] = {}
        cached_count = n0 - len(todo)
        n_embedded = 0
        t_infer = 0.0
        if todo:
            for net in nets:
                net.load()
            batch_idx, batch_arr = [], [[] for _ in nets]

            def flush():
                nonlocal n_embedded, t_infer
                if not batch_idx:
                    return
                for b, net in enumerate(nets):
                    rows = [r for r, i in enumerate(batch_idx) if batch_arr[b][r] is not None]
                    if not rows:
                        continue
                    t0 = time.perf_counter()
                    emb = net.embed(np.stack([batch_arr[b][r] for r in rows]))
                    t_infer += time.perf_counter() - t0
                    for r, e in zip(rows, emb):
                        vecs[b][batch_idx[r]] = e
                    if cache is not None:
                        cache.put_embeddings([keep[batch_idx[r]][1] for r in rows], net.name, net.weights_id, emb)
                n_embedded += len(batch_idx)
                batch_idx.clear()
                for a in batch_arr:
                    a.clear()

            bar = tqdm(total=len(todo), desc="decode+embed " + "+".join(n.name for n in nets),
                       disable=not self.progress, unit="img")
            if self.processes:
                import multiprocessing

                executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))
            else:
                executor = ThreadPoolExecutor(max(1, self.workers))
            with executor as ex:
                pending: deque = deque()
                it = iter(todo)
                window = max(2 * self.batch_size, 4)

                def submit_next() -> bool:
                    i = next(it, None)
                    if i is None:
                        return False
                    need = [v[i] is None for v in vecs]
                    pending.append((i, ex.submit(_decode_task, keep[i][0], nets, need, self.max_pixels)))
                    return True

                while len(pending) < window and submit_next():
                    pass
                while pending:
                    i, fut = pending.popleft()
                    submit_next()
                    try:
                        width, height, note, code, colour, prepared = fut.result()
                    except DecodeError as exc:
                        failed[i] = str(exc)
                        bar.update(1)
                        continue
                    except Exception as exc:  # noqa: BLE001 - one bad file never ends the run
                        failed[i] = f"decode failed: {type(exc).__name__}: {exc}"
                        bar.update(1)
                        continue
                    info[i] = {"phash": code, "width": width, "height": height, "colour": colour, "note": note}
                    if cache is not None:
                        cache.put_file(keep[i][1], code, width, height, colour, note)
                    batch_idx.append(i)
                    for b in range(len(nets)):
                        batch_arr[b].append(prepared[b])
                    if len(batch_idx) >= self.batch_size:
                        flush()
                    bar.update(1)
                flush()
            bar.close()
        timings["decode_embed"] = time.perf_counter() - t
        timings["inference_only"] = t_infer

        # Copy results to byte-identical duplicates; drop failures.
        rows_ok = []
        for i, (p, d) in enumerate(keep):
            src = first_of[d]
            if src in failed:
                skipped_rows.append((_shown(p, root), failed[src]))
                continue
            if src != i:
                info[i] = info[src]
                for v in vecs:
                    v[i] = v[src]
            rows_ok.append(i)
        n = len(rows_ok)
        rel = [_shown(keep[i][0], root) for i in rows_ok]
        dig = [keep[i][1] for i in rows_ok]
        emb = {net.name: (np.stack([vecs[b][i] for i in rows_ok]).astype(np.float32) if n
                          else np.zeros((0, net.dim), np.float32)) for b, net in enumerate(nets)}
        colours = (np.stack([info[i]["colour"] for i in rows_ok]) if n else np.zeros((0, COLOUR_DIM), np.float32))
        codes = np.array([info[i]["phash"] for i in rows_ok], dtype=np.uint64)

        # Exact pass.
        t = time.perf_counter()
        sha_pairs = [(a, b) for g in exact_groups(dig) for a, b in zip(g[:-1], g[1:])]
        ph_pairs, _ = near_duplicate_pairs(codes, self.phash_max_distance)
        exact = {"sha256": np.asarray(sha_pairs, np.int64).reshape(-1, 2), "phash": ph_pairs}
        timings["exact_pass"] = time.perf_counter() - t

        # Index + candidates: each backbone's index, and the colour-fused one.
        t = time.perf_counter()
        params = self.grouping_params()
        indexes, neighbour_ids = {}, []
        fused = fused_vectors(list(emb.values()), colours, params.colour_weight)
        fused_ids = np.zeros((n, 0), np.int64)
        if n:
            for net in nets:
                idx = AnnIndex(self.n_trees, self.search_k_factor).build(emb[net.name])
                indexes[net.name] = idx
                neighbour_ids.append(idx.query(emb[net.name], self.k + 1)[0])
            fused_ids = AnnIndex(self.n_trees, self.search_k_factor).build(fused).query(fused, self.k + 1)[0]
        timings["index"] = time.perf_counter() - t

        t = time.perf_counter()
        ij = candidate_pairs(neighbour_ids + [fused_ids], extra=exact["phash"])
        pairs = score_pairs(ij, [emb[net.name] for net in nets], colours, fused, fused_ids, codes, params.k_context)
        verifier = None
        if self.verify:
            from .verify import MAX_SIDE, GeometricVerifier

            paths_ok = [keep[i][0] for i in rows_ok]
            verifier = GeometricVerifier(lambda i: load_image(paths_ok[i], target_size=MAX_SIDE,
                                                              max_pixels=self.max_pixels).image)
            verifier.progress = self.progress
        verify = verifier if cache is None or verifier is None else _CachedVerify(verifier, cache, dig)
        if verify is not None and len(ij):
            found = verify(ij)
            pairs.inliers, pairs.mismatch = found[:, 0].astype(np.int64), found[:, 1].astype(np.float32)
        model = self.pair_model()
        confidence = model.predict(pair_features(pairs))
        decisions = self._decisions(rel, dig, cache)
        grouping = group(n, pairs, confidence, exact, params, decisions)
        timings["group"] = time.perf_counter() - t

        width = max(4, len(str(max(int(grouping.labels.max()) + 1, 1)))) if n else 4
        sizes = np.bincount(grouping.labels, minlength=int(grouping.labels.max()) + 1 if n else 0)
        df = pd.DataFrame({
            "path": rel,
            "group": [f"g{int(g):0{width}d}" for g in grouping.labels],
            "group_size": sizes[grouping.labels] if n else [],
            "confidence": np.round(grouping.confidence, 4),
            "stage": grouping.stage,
            "distance": np.round(grouping.distance.astype(np.float64), 4),
            "matched": [rel[j] if j >= 0 else "" for j in grouping.partner],
            "width": [info[i]["width"] for i in rows_ok],
            "height": [info[i]["height"] for i in rows_ok],
            "note": [info[i]["note"] for i in rows_ok],
            "sha256": dig,
        })
        review = review_table(grouping.review, pairs, confidence, rel)
        skipped_df = pd.DataFrame(skipped_rows, columns=["path", "reason"]).sort_values("path", ignore_index=True)
        fitted = model.info.get("fitted_with", [])
        meta = {
            "counts": {
                "found": len(paths), "images": n, "skipped": len(skipped_df),
                "from_cache": cached_count, "embedded": n_embedded,
                **group_counts(df),
                "candidate_pairs": int(len(pairs.ij)),
                "pairs_to_review": int(len(review)),
                "decisions_applied": int(len(decisions)) if decisions is not None else 0,
                "pairs_verified_geometrically": verifier.pairs_checked if verifier is not None else 0,
            },
            "pair_model": {"source": str(self.model_path or "shipped"), "fitted_on": model.info.get("fitted_on"),
                           "fitted_with": fitted,
                           "calibrated_for_these_backbones": sorted(fitted) == sorted(net.name for net in nets)},
            "images_per_second_inference": round(n_embedded / t_infer, 2) if t_infer > 0 else None,
        }
        if not meta["pair_model"]["calibrated_for_these_backbones"]:
            log.warning("the pair model was fitted with %s; confidences for %s are not calibrated "
                        "(refit with benchmarks/calibrate.py)", fitted, [net.name for net in nets])
        files = [keep[i][0] for i in rows_ok]
        return Result(root, df, skipped_df, emb, indexes, colours, pairs, exact, meta, verifier, files,
                      confidence=confidence, review=review, codes=codes, fused_ids=fused_ids)

    def grouping_params(self, **overrides) -> GroupingParams:
        """This object's grouping settings, some overridden (validated).

        Raises:
            ValueError: a setting out of its range.
        """
        base = self.grouping if self.grouping is not None else GroupingParams()
        return dataclasses.replace(base, **overrides)

    def pair_model(self) -> PairModel:
        """The pair model: ``model_path`` when given, else the one shipped in the package."""
        return PairModel.load(self.model_path)

    def _decisions(self, rel: list[str], digests: list[str], cache: EmbeddingCache | None) -> pd.DataFrame:
        """A person's decisions as ``i, j, same`` rows: the ``decisions`` file
        (stored in the cache, keyed by content, so later runs keep them) and
        those the cache remembers from earlier runs."""
        by_digest = {}
        if self.decisions is not None:
            new = read_decisions(self.decisions)
            where = {p: d for p, d in zip(rel, digests)}
            unknown = [p for p in pd.concat([new.path_a, new.path_b]) if p not in where]
            if unknown:
                log.warning("%d decision paths are not among the images of this run (first: %s); ignored",
                            len(unknown), unknown[0])
            for a, b, same in zip(new.path_a, new.path_b, new.same):
                if a in where and b in where and where[a] != where[b]:
                    by_digest[tuple(sorted((where[a], where[b])))] = bool(same)
            if cache is not None:
                cache.put_decisions(by_digest)
        if cache is not None:
            by_digest = {**cache.get_decisions(), **by_digest}
        rows_of: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            rows_of.setdefault(d, []).append(i)
        out = [(i, j, same) for (da, db), same in by_digest.items()
               for i in rows_of.get(da, []) for j in rows_of.get(db, [])]
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
        return group(len(result.groups), result.pairs, result.confidence, result.exact_pairs,
                     self.grouping_params(**overrides))


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
    words = {"same": True, "yes": True, "true": True, "1": True,
             "different": False, "no": False, "false": False, "0": False}
    dec = df.decision.str.strip().str.lower()
    bad = df[~dec.isin(list(words))]
    if len(bad):
        raise ValueError(f"{path}: decision must be 'same' or 'different' (row {bad.index[0] + 2}: "
                         f"{bad.decision.iloc[0]!r})")
    return pd.DataFrame({"path_a": df.path_a, "path_b": df.path_b, "same": dec.map(words).astype(bool)})


def review_table(rows: np.ndarray, pairs: Pairs, confidence: np.ndarray, rel: list[str]) -> pd.DataFrame:
    """``review.csv``: doubtful pairs left apart, with the evidence that decided.

    Returns:
        DataFrame ``path_a, path_b, confidence, distance, colour_distance,
        context, rank, inliers, aligned_colour_mismatch, phash_bits``,
        strongest first.
    """
    rows = np.asarray(rows, np.int64)
    ij = pairs.ij[rows]
    return pd.DataFrame({
        "path_a": [rel[i] for i in ij[:, 0]], "path_b": [rel[j] for j in ij[:, 1]],
        "confidence": np.round(confidence[rows], 4), "distance": np.round(pairs.distance[rows], 4),
        "colour_distance": np.round(pairs.colour[rows], 4), "context": np.round(pairs.context[rows], 4),
        "rank": np.minimum(pairs.rank_ij[rows], pairs.rank_ji[rows]), "inliers": pairs.inliers[rows],
        "aligned_colour_mismatch": np.round(pairs.mismatch[rows], 4),
        "phash_bits": pairs.phash_bits[rows]})
