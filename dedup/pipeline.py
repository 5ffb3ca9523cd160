"""The whole run as one library call: :class:`Deduplicator`.

``Deduplicator(...).run(DIR)`` wires the stages (discover, decode, exact
pass, embed, index, group) and returns a :class:`Result`; the CLI only
parses arguments, calls this and :func:`dedup.report.write_report`.
"""
from __future__ import annotations

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
from .grouping import STAGES, Grouping, GroupingParams, candidate_pairs, group, score_pairs
from .hashing import DEFAULT_PHASH_MAX_DISTANCE, exact_groups, near_duplicate_pairs, phash, sha256_file
from .index import DEFAULT_N_TREES, SEARCH_K_FACTOR, AnnIndex

log = logging.getLogger(__name__)

_G = GroupingParams()
#: Neighbours per image taken from each ANN index as candidates.
DEFAULT_K: int = 10


@dataclass
class Result:
    """What a run found.

    Attributes:
        root: the folder that was run on.
        groups: DataFrame with one row per decoded image: ``path`` (relative
            to ``root``, POSIX separators), ``group`` (str id; a singleton has
            its own), ``group_size``, ``stage`` (how it joined: sha256, phash,
            embedding, fallback, single), ``distance`` (ensemble cosine
            distance of the pair that joined it, [0, 2]), ``matched`` (that
            pair's other path), ``width``, ``height`` (pixels), ``note``.
        skipped: DataFrame ``path, reason`` for every file not used.
        embeddings: backbone name -> ``(n, d)`` float32 L2-normalised, rows
            in ``groups`` order.
        indexes: backbone name -> :class:`AnnIndex` over those rows.
        colours: ``(n, 116)`` float32 colour descriptors.
        pairs: the scored candidate pairs (:class:`dedup.grouping.Pairs`).
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
    """Geometric verification that reuses inlier counts stored in the cache."""

    def __init__(self, verifier, cache: EmbeddingCache, digests: list[str]):
        self.verifier, self.cache, self.digests = verifier, cache, digests

    def __call__(self, ij: np.ndarray) -> np.ndarray:
        keys = [tuple(sorted((self.digests[i], self.digests[j]))) for i, j in ij]
        method = self.verifier.method_id
        got = self.cache.get_inliers(keys, method)
        out = np.array([got.get(k, -1) for k in keys], dtype=np.int64)
        miss = out < 0
        if miss.any():
            out[miss] = self.verifier(ij[miss])
            self.cache.put_inliers({k: int(v) for k, v, m in zip(keys, out, miss) if m}, method)
        return out


class Deduplicator:
    """Group the images of a folder that show the same product.

    Settings follow scikit-learn's habit: the constructor stores them and
    does no work; :meth:`run` does the work.

    Args:
        backbones: ``"auto"`` (the card's VGG16+ResNet50+InceptionV3 when their
            ImageNet weights are on disk, else ``efficientnet-lite0``), a
            comma-separated string or list of names, or Backbone objects.
        cutoff, max_distance, colour_weight, colour_cutoff, k_context,
        verify_cutoff, min_inliers, linkage_cutoff, fallback_max,
        fallback_ratio: grouping settings, documented with the reason for
            each default in :class:`dedup.grouping.GroupingParams`.
        verify: run geometric verification (ORB + RANSAC) on borderline pairs.
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

    def __init__(self, backbones="auto", cutoff: float = _G.cutoff, max_distance: float = _G.max_distance,
                 colour_weight: float = _G.colour_weight, colour_cutoff: float = _G.colour_cutoff,
                 k_context: int = _G.k_context, verify: bool = True, verify_cutoff: float = _G.verify_cutoff,
                 min_inliers: int = _G.min_inliers, linkage_cutoff: float = _G.linkage_cutoff,
                 fallback_max: float = _G.fallback_max, fallback_ratio: float = _G.fallback_ratio,
                 k: int = DEFAULT_K,
                 phash_max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, batch_size: int = 32,
                 workers: int = 2, processes: int = 0, cache=None, weights_dir: str | None = None,
                 allow_download: bool = False, n_trees: int = DEFAULT_N_TREES,
                 search_k_factor: int = SEARCH_K_FACTOR, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 progress: bool = True):
        self.backbones = backbones
        self.cutoff = cutoff
        self.max_distance = max_distance
        self.colour_weight = colour_weight
        self.colour_cutoff = colour_cutoff
        self.k_context = k_context
        self.verify = verify
        self.verify_cutoff = verify_cutoff
        self.min_inliers = min_inliers
        self.linkage_cutoff = linkage_cutoff
        self.fallback_max = fallback_max
        self.fallback_ratio = fallback_ratio
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
            out[key] = str(value) if isinstance(value, Path) else value
        return out

    def check(self) -> tuple[list[Backbone], str]:
        """Resolve the backbones and their weights (no image work).

        Raises:
            WeightsError: a named backbone's weights are missing or wrong.
            ValueError: bad settings.
        """
        if self.cutoff < 0 or self.verify_cutoff < 0 or not 0 <= self.max_distance <= 2:
            raise ValueError("need cutoff >= 0, verify_cutoff >= 0 and 0 <= max_distance <= 2")
        if not 0 <= self.colour_cutoff <= 1 or self.colour_weight < 0:
            raise ValueError("colour_cutoff must lie in [0, 1] and colour_weight be >= 0")
        if self.k < 1 or self.batch_size < 1:
            raise ValueError("k and batch_size must be >= 1")
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

        # Index + candidates.
        t = time.perf_counter()
        indexes, neighbour_ids = {}, []
        for net in nets:
            X = emb[net.name]
            if n == 0:
                continue
            idx = AnnIndex(self.n_trees, self.search_k_factor).build(X)
            indexes[net.name] = idx
            ids, _ = idx.query(X, self.k + 1)
            neighbour_ids.append(ids)
        timings["index"] = time.perf_counter() - t

        t = time.perf_counter()
        ij = candidate_pairs(neighbour_ids)
        pairs = score_pairs(ij, [emb[net.name] for net in nets], colours)
        verifier = None
        if self.verify:
            from .verify import MAX_SIDE, GeometricVerifier

            paths_ok = [keep[i][0] for i in rows_ok]
            verifier = GeometricVerifier(lambda i: load_image(paths_ok[i], target_size=MAX_SIDE,
                                                              max_pixels=self.max_pixels).image)
        verify = verifier if cache is None or verifier is None else _CachedVerify(verifier, cache, dig)
        grouping = self.regroup(n, pairs, exact, colours, list(emb.values()), verify)
        timings["group"] = time.perf_counter() - t

        width = max(4, len(str(max(int(grouping.labels.max()) + 1, 1)))) if n else 4
        sizes = np.bincount(grouping.labels, minlength=int(grouping.labels.max()) + 1 if n else 0)
        df = pd.DataFrame({
            "path": rel,
            "group": [f"g{int(g):0{width}d}" for g in grouping.labels],
            "group_size": sizes[grouping.labels] if n else [],
            "stage": grouping.stage,
            "distance": np.round(grouping.distance.astype(np.float64), 4),
            "matched": [rel[j] if j >= 0 else "" for j in grouping.partner],
            "width": [info[i]["width"] for i in rows_ok],
            "height": [info[i]["height"] for i in rows_ok],
            "note": [info[i]["note"] for i in rows_ok],
            "sha256": dig,
        })
        skipped_df = pd.DataFrame(skipped_rows, columns=["path", "reason"]).sort_values("path", ignore_index=True)
        meta = {
            "counts": {
                "found": len(paths), "images": n, "skipped": len(skipped_df),
                "from_cache": cached_count, "embedded": n_embedded,
                **group_counts(df),
                "candidate_pairs": int(len(pairs.ij)),
                "pairs_verified_geometrically": verifier.pairs_checked if verifier is not None else 0,
            },
            "images_per_second_inference": round(n_embedded / t_infer, 2) if t_infer > 0 else None,
        }
        files = [keep[i][0] for i in rows_ok]
        return Result(root, df, skipped_df, emb, indexes, colours, pairs, exact, meta, verifier, files)

    def grouping_params(self, **overrides) -> GroupingParams:
        """This object's grouping settings as :class:`GroupingParams`, some overridden."""
        names = GroupingParams.__dataclass_fields__
        return GroupingParams(**{**{k: getattr(self, k) for k in names}, **overrides})

    def regroup(self, n: int, pairs, exact_pairs: dict, colours: np.ndarray, embeddings: list[np.ndarray],
                verifier=None, **overrides) -> Grouping:
        """Group scored pairs with this object's settings, some overridden.

        Used by the run itself and by ``bench``'s cutoff sweep, which regroups
        one run's pairs at many cutoffs without re-embedding anything.

        Args:
            n: number of images.
            pairs: :class:`dedup.grouping.Pairs` of the run.
            exact_pairs: the run's ``{"sha256": ..., "phash": ...}`` pairs.
            colours: ``(n, 116)`` colour descriptors; embeddings: per backbone ``(n, d)``.
            verifier: pair -> inliers callable, or ``None``.
            overrides: any :class:`GroupingParams` field.
        """
        return group(n, pairs, exact_pairs, colours, embeddings, self.grouping_params(**overrides), verifier)

    def regroup_result(self, result: "Result", **overrides) -> Grouping:
        """:meth:`regroup` on a finished run's pairs (cheap: nothing re-embedded)."""
        return self.regroup(len(result.groups), result.pairs, result.exact_pairs, result.colours,
                            list(result.embeddings.values()), result.verifier, **overrides)
