"""``dedup fit``: learn an adapted model from the user's own catalogue.

Two entry points, one per mode (what the model is, and why these steps: see
:mod:`dedup.adapt`):

* :func:`fit_supervised` (``dedup fit LABELS.csv --out MODEL/``): learned
  whitening from photos that share a label, and the pair model refitted
  out of fold on the same labels;
* :func:`fit_self_supervised` (``dedup fit DIR --self-supervised --out
  MODEL/``): learned whitening from each photo and its augmented views.

Both embed through the normal run (so the embedding cache is shared with
``dedup run``: a fit on a catalogue already run embeds nothing new), and the
augmented views' embeddings are cached too, under keys derived from the
photo's SHA-256 and :data:`dedup.adapt.AUGMENT_ID`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .adapt import (
    AUGMENT_ID,
    DEFAULT_DIM,
    DEFAULT_FOLDS,
    DEFAULT_SHRINKAGE,
    DEFAULT_VIEWS,
    VIEW_KINDS,
    AdaptedModel,
    check_model_folder,
    check_whitening_settings,
    fit_domain,
    fitted_info,
    learned_whitening,
    matching_pairs,
    read_fit_labels,
)
from .augment import apply_edit
from .cache import Cache
from .calibration import FEATURES, PairModel, pair_features
from .colour import DIM as COLOUR_DIM
from .colour import colour_descriptor
from .decode import load_image
from .grouping import fused_vectors
from .hashing import hash_pass
from .pipeline import Deduplicator, Embeddings

log = logging.getLogger(__name__)

#: Weight of the shipped pair model as a prior of the refit (see
#: :meth:`dedup.calibration.PairModel.fit`); chosen by ``benchmarks/adapt.py``.
PRIOR_STRENGTH = 100.0


def embedding_run(dedup: Deduplicator, root: Path, files: list | None) -> tuple[Embeddings, list]:
    """Stages 1-3 with ``dedup``'s settings but no adapted model
    (:meth:`~dedup.pipeline.Deduplicator.embed`): the embeddings, colours
    and pHashes a fit learns from, cached as in any run.

    Returns:
        ``(embedded, backbones)``: the :class:`~dedup.pipeline.Embeddings`
        and the checked :class:`~dedup.backbones.Backbone` list.
    """
    base = copy.copy(dedup)
    base.model, base.model_path, base.decisions = None, None, None
    nets, note = base.check()
    return base.embed(root, files=files, backbones=(nets, note)), nets


def _backbone_record(nets) -> list[dict]:
    return [{"name": n.name, "weights_id": n.weights_id, "dim": int(n.dim)} for n in nets]


def fit_supervised(
    labels_csv: str | os.PathLike,
    out: str | os.PathLike | None = None,
    dedup: Deduplicator | None = None,
    root: str | os.PathLike | None = None,
    dim: int = DEFAULT_DIM,
    shrinkage: float = DEFAULT_SHRINKAGE,
    n_folds: int = DEFAULT_FOLDS,
) -> AdaptedModel:
    """Fit a model on labelled photos (``path,group``: the retailer's SKUs).

    Args:
        labels_csv: the labels (checked by :func:`dedup.adapt.read_fit_labels`).
        out: the model folder to write (``None``: only return the model).
        dedup: a :class:`~dedup.pipeline.Deduplicator` giving the backbones,
            cache, workers and grouping settings (default: the defaults); its
            ``verify`` decides whether the out-of-fold pairs are verified
            geometrically (the shipped pair model's strongest evidence).
        root: the folder the label paths are relative to (default: the
            labels file's folder).
        dim, shrinkage: see :func:`dedup.adapt.learned_whitening`; ``dim`` is
            capped at the fused width.
        n_folds: folds of the out-of-fold pair-model fit (2..20; fewer when
            there are fewer groups).

    Returns:
        The :class:`~dedup.adapt.AdaptedModel` (also written to ``out``).

    Raises:
        FileNotFoundError / ValueError: bad labels (see ``read_fit_labels``)
            or settings; WeightsError: backbone weights missing;
            ModelError: ``out`` is not a model folder.
    """
    t0 = time.perf_counter()
    dedup = dedup or Deduplicator()
    check_whitening_settings(dim, shrinkage)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= 20:
        raise ValueError(f"n_folds must be an integer in [2, 20], got {n_folds!r}")
    labels, root = read_fit_labels(labels_csv, root)
    if out is not None:
        check_model_folder(out)  # before the work, not after it
    res, nets = embedding_run(dedup, root, list(labels.path))
    truth = labels.drop_duplicates("path").set_index("path").group.reindex(res.paths).to_numpy()
    known = pd.notna(truth)
    if len(pd.unique(truth[known])) < 2:
        raise ValueError(f"{labels_csv}: fewer than two labelled products could be read (see the skipped files)")
    cw = dedup.grouping_params().colour_weight
    emb = list(res.embeddings.values())
    F = fused_vectors(emb, res.colours, cw)
    dim = min(dim, F.shape[1])
    rows = np.flatnonzero(known)
    pairs = matching_pairs(truth[rows])
    projection = learned_whitening(F[rows], pairs, dim, shrinkage)

    X, y = out_of_fold_pairs(dedup, res, F, truth, known, nets, cw, dim, shrinkage, n_folds)
    pair_model = refit_pair_model(X, y, dedup.pair_model(), [n.name for n in nets], bool(dedup.verify))
    domain = fit_domain(F[rows])
    info = fitted_info(
        "supervised",
        labels_csv,
        len(rows),
        len(pd.unique(truth[known])),
        len(pairs),
        dim=dim,
        shrinkage=shrinkage,
        n_folds=n_folds,
        skipped=int(len(res.skipped)),
        seconds=round(time.perf_counter() - t0, 1),
    )
    model = AdaptedModel(projection, _backbone_record(nets), cw, pair_model, info, *domain)
    if out is not None:
        model.save(out)
    return model


def refit_pair_model(X, y, prior: PairModel, backbones: list[str], verified: bool) -> PairModel | None:
    """The pair model refitted on out-of-fold evidence, regularised towards ``prior``.

    Returns:
        The refitted :class:`~dedup.calibration.PairModel`, or ``None`` (keep
        ``prior``) when the pairs are all of one kind.
    """
    y = np.asarray(y, bool)
    if len(y) == 0 or y.all() or not y.any():
        log.warning("the out-of-fold pairs are all of one kind; keeping the shipped pair model")
        return None
    return PairModel.fit(
        X,
        y,
        prior=prior,
        prior_strength=PRIOR_STRENGTH,
        info={
            "fitted_on": "out-of-fold candidate pairs of the adapted model's labels",
            "prior": prior.info.get("fitted_on"),
            "prior_strength": PRIOR_STRENGTH,
            "fitted_with": backbones,
            "pairs": int(len(y)),
            "positives": int(y.sum()),
            "verified_geometrically": verified,
        },
    )


def _folds(groups: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per row; all photos of a group share a fold."""
    codes, uniq = pd.factorize(pd.Series(groups))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    return perm[codes] % n_folds


def out_of_fold_pairs(
    dedup: Deduplicator,
    res: Embeddings,
    F: np.ndarray,
    truth: np.ndarray,
    known: np.ndarray,
    nets,
    cw: float,
    dim: int,
    shrinkage: float,
    n_folds: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Evidence of candidate pairs scored in projections that never saw their groups.

    The labelled rows are split into ``n_folds`` folds by group; for each
    fold a projection is fitted on the other folds, and the fold's images
    are indexed, paired and scored as in a run (verification included when
    ``dedup.verify``).

    Args:
        dedup: the settings of the scoring (its ``model`` is not used).
        res: the embedding run (:func:`embedding_run`); F: its ``(n, D)``
            fused vectors at colour weight ``cw``.
        truth: ``(n,)`` group per row; known: ``(n,)`` bool, labelled rows.
        nets: the backbones; dim, shrinkage: of each fold's projection;
        n_folds: folds (fewer when there are fewer groups).

    Returns:
        ``(X, y)``: ``(m, len(calibration.FEATURES))`` float64 evidence and
        ``(m,)`` bool "same group".
    """
    rows = np.flatnonzero(known)
    n_folds = min(n_folds, len(pd.unique(truth[rows])))
    fold = _folds(truth[rows], n_folds)
    digests = res.digests
    X, y = [np.zeros((0, len(FEATURES)))], [np.zeros(0, bool)]
    cache = dedup.open_cache()
    try:
        for k in tqdm(range(n_folds), desc="out-of-fold pairs", disable=not dedup.progress):
            tr, te = rows[fold != k], rows[fold == k]
            fit_pairs = matching_pairs(truth[tr])
            if len(te) < 2 or len(fit_pairs) == 0:
                continue
            proj = learned_whitening(F[tr], fit_pairs, dim, shrinkage)
            dd = copy.copy(dedup)
            dd.model, dd.decisions = None, None
            dd.n_neighbours = min(dedup.n_neighbours, len(te) - 1)
            emb = {name: E[te] for name, E in res.embeddings.items()}
            dig = [digests[i] for i in te]
            phash = hash_pass(dig, res.codes[te], dedup.phash_max_distance)["phash"]
            fold_model = AdaptedModel(proj, _backbone_record(nets), cw)
            files = [res.files[i] for i in te]
            fused = dd.fused_space(list(emb.values()), res.colours[te], fold_model, base=F[te])  # F: computed once
            scored = dd.score(
                emb,
                res.colours[te],
                res.codes[te],
                files,
                dig,
                cache,
                phash,
                adapted=fold_model,
                fused=fused,
                layouts=res.layouts[te],
            )
            ij = scored.pairs.ij
            X.append(pair_features(scored.pairs))
            y.append(truth[te][ij[:, 0]] == truth[te][ij[:, 1]])
    finally:
        if cache is not None:
            cache.close()
    return np.vstack(X), np.concatenate(y)


# ---------------------------------------------------------------------------
# self-supervised


def view_key(digest: str, v: int) -> str:
    """The cache key of view ``v`` of the photo with SHA-256 ``digest``."""
    return hashlib.sha256(f"{digest}|{AUGMENT_ID}|{v}".encode()).hexdigest()


def augmented_view(path: Path, digest: str, v: int, side: int, max_pixels: int | None):
    """View ``v`` of a photo: one edit kind of :data:`dedup.adapt.VIEW_KINDS`
    applied with a seed derived from the photo's SHA-256 (deterministic).

    Returns:
        A PIL RGB image.

    Raises:
        DecodeError: the file cannot be decoded.
    """
    key = view_key(digest, v)
    kind = VIEW_KINDS[int(key[:8], 16) % len(VIEW_KINDS)]
    image = load_image(path, target_size=side, max_pixels=max_pixels).image
    return apply_edit(image, kind, int(key[8:16], 16))


def embed_views(
    res: Embeddings, nets, views: int, cache: Cache | None, batch_size: int, workers: int, progress: bool, max_pixels
) -> tuple[list[np.ndarray], np.ndarray]:
    """Embeddings and colour descriptors of ``views`` augmented views of every
    image of a run, cached by :func:`view_key`.

    Returns:
        ``(embeddings, colours)``: per backbone ``(n * views, d)`` float32
        and ``(n * views, colour.DIM)`` float32; row ``i * views + v`` is view
        ``v`` of image ``i``. A view that fails to decode keeps its image's
        own vectors (a zero difference in the fit).
    """
    n = len(res.paths)
    digests = res.digests
    keys = [view_key(d, v) for d in digests for v in range(views)]
    embs = [np.repeat(res.embeddings[net.name], views, axis=0) for net in nets]
    cols = np.repeat(res.colours, views, axis=0)
    have = np.ones(len(keys), bool)
    colour_name, colour_id = "view-colour", f"{AUGMENT_ID} colour"
    if cache is not None:
        got = [cache.get_embeddings(keys, net.name, net.cache_id + " " + AUGMENT_ID, net.dim) for net in nets]
        got_c = cache.get_embeddings(keys, colour_name, colour_id, COLOUR_DIM)
        have = np.array([all(k in g for g in got) and k in got_c for k in keys], bool)
        for r in np.flatnonzero(have):
            for b in range(len(nets)):
                embs[b][r] = got[b][keys[r]]
            cols[r] = got_c[keys[r]]
    todo = np.flatnonzero(~have)
    side = max(net.input_size for net in nets)

    def work(r: int):
        i, v = divmod(int(r), views)
        try:
            im = augmented_view(res.files[i], digests[i], v, side, max_pixels)
        except Exception as exc:  # noqa: BLE001 - a view that fails only adds nothing
            log.warning("view %d of %s skipped: %s", v, res.paths[i], exc)
            return r, None, None
        return r, [net.prepare(im) for net in nets], colour_descriptor(im)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        bar = tqdm(total=len(todo), desc="augmented views", unit="img", disable=not progress)
        for s in range(0, len(todo), batch_size):
            done = [d for d in pool.map(work, todo[s : s + batch_size]) if d[1] is not None]
            if not done:
                bar.update(min(batch_size, len(todo) - s))
                continue
            rr = [d[0] for d in done]
            for b, net in enumerate(nets):
                e = net.embed(np.stack([d[1][b] for d in done]))
                embs[b][rr] = e
                if cache is not None:
                    cache.put_embeddings([keys[r] for r in rr], net.name, net.cache_id + " " + AUGMENT_ID, e)
            c = np.stack([d[2] for d in done]).astype(np.float32)
            cols[rr] = c
            if cache is not None:
                cache.put_embeddings([keys[r] for r in rr], colour_name, colour_id, c)
                cache.commit()
            bar.update(min(batch_size, len(todo) - s))
        bar.close()
    assert embs[0].shape[0] == n * views
    return embs, cols


def fit_self_supervised(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    dedup: Deduplicator | None = None,
    dim: int = DEFAULT_DIM,
    shrinkage: float = DEFAULT_SHRINKAGE,
    views: int = DEFAULT_VIEWS,
    files: list | None = None,
) -> AdaptedModel:
    """Fit a model on the unlabelled photos of ``folder`` (each photo and its
    ``views`` augmented views are the matching pairs).

    Args:
        folder: the catalogue folder (walked as ``dedup run`` walks it).
        out: the model folder to write (``None``: only return the model).
        dedup: settings as in :func:`fit_supervised`.
        dim, shrinkage: see :func:`dedup.adapt.learned_whitening`.
        views: augmented views per photo (1..8).
        files: fit on these files only (relative to ``folder`` or absolute)
            instead of walking ``folder``.

    Returns:
        The :class:`~dedup.adapt.AdaptedModel` (keeps the shipped pair model).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is not a folder;
        ValueError: fewer than two readable photos, or bad settings;
        WeightsError: backbone weights missing; ModelError: bad ``out``.
    """
    t0 = time.perf_counter()
    dedup = dedup or Deduplicator()
    check_whitening_settings(dim, shrinkage)
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or not 1 <= views <= 8:
        raise ValueError(f"views must be an integer in [1, 8], got {views!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    if out is not None:
        check_model_folder(out)
    res, nets = embedding_run(dedup, folder, files)
    n = len(res.paths)
    if n < 2:
        raise ValueError(f"{folder}: {n} readable photos; fitting needs at least two")
    cache = dedup.open_cache()
    try:
        v_emb, v_col = embed_views(
            res, nets, views, cache, dedup.batch_size, dedup.workers, dedup.progress, dedup.max_pixels
        )
    finally:
        if cache is not None:
            cache.close()
    cw = dedup.grouping_params().colour_weight
    F = np.vstack([fused_vectors(list(res.embeddings.values()), res.colours, cw), fused_vectors(v_emb, v_col, cw)])
    own = np.repeat(np.arange(n), views)
    view_rows = n + np.arange(n * views)
    pairs = [np.stack([own, view_rows], axis=1)]
    if views > 1:  # views of one photo match each other too
        pairs.append(matching_pairs(np.repeat(np.arange(n), views)) + n)
    pairs_all = np.concatenate(pairs)
    dim = min(dim, F.shape[1])
    projection = learned_whitening(F, pairs_all, dim, shrinkage)
    info = fitted_info(
        "self-supervised",
        folder,
        n,
        n,
        len(pairs_all),
        dim=dim,
        shrinkage=shrinkage,
        views=views,
        augment=AUGMENT_ID,
        skipped=int(len(res.skipped)),
        seconds=round(time.perf_counter() - t0, 1),
    )
    model = AdaptedModel(projection, _backbone_record(nets), cw, None, info, *fit_domain(F[:n]))
    if out is not None:
        model.save(out)
    return model
