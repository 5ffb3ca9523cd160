"""Features adapted to the user's own catalogue (``dedup fit``).

ImageNet features were trained to tell a dress from a tee, not one dress from
the next. ``dedup fit`` learns, on top of the frozen backbone embeddings, one
linear projection of the colour-fused vectors (:func:`dedup.grouping.fused_vectors`:
the backbones' embeddings and the CIELAB colour histogram in one unit vector)
that pulls a product's photos together and pushes other products apart. A
run with ``--model MODEL/`` searches its fused kNN lists in the projected
space, and the pair evidence built on them (ranks, contextual and relative
distances) follows; the backbones' own indexes, the exact pass and the
geometric verification are unchanged.

**Learned whitening** (Mikolajczyk and Matas, ICCV 2007; Radenovic, Tolias
and Chum, TPAMI 2018, section 3.4), in closed form:

1. ``mu`` is the mean of the fused rows ``x`` (``(n, D)`` float32);
2. ``C_S`` is the mean of ``(x_i - x_j)(x_i - x_j)^T`` over *matching* pairs,
   shrunk towards the identity, ``C_S + s tr(C_S)/D I`` (shrinkage ``s``:
   with a few thousand photos and ``D`` ~ 2,000 the raw estimate is
   singular); ``P_1 = C_S^(-1/2)`` whitens the differences between matching
   photos;
3. the whitened rows' covariance ``C_D`` spreads all photos; its leading
   ``dim`` eigenvectors ``V`` keep the directions in which photos differ most
   relative to how a product's own photos differ;
4. ``z = normalise((x - mu) P_1 V)``: ``(n, dim)`` float32 with unit rows.

What counts as *matching* is the only difference between the two modes:

* **supervised** (``dedup fit LABELS.csv``): photos with the same label (a
  SKU column of the retailer's catalogue). The pair model (the calibrated
  P(same product), :mod:`dedup.calibration`) is refitted on the same labels,
  *out of fold*: the groups are split into ``n_folds`` folds, and each fold's
  candidate pairs are scored (as in a run, geometric verification included)
  in a projection fitted on the other folds, so the calibration sees
  distances as they will be on photos the projection never saw.
* **self-supervised** (``dedup fit DIR --self-supervised``): an image and
  ``views`` augmented copies of it (the seller edits of :mod:`dedup.augment`:
  crop, pad, watermark, mirror, rotate, JPEG, colour jitter), every photo its
  own class. This is instance discrimination (as in SimCLR, Chen et al., ICML
  2020) with a linear head solved in closed form instead of by gradient
  descent. Without labels there is nothing to recalibrate on, so the shipped
  pair model is kept; its evidence in the fused space is scale-free (ranks
  and distance ratios), and ``benchmarks/adapt.py`` measures its calibration
  error after the projection.

A model is used only on photos like those it was fitted on: it keeps
:data:`DOMAIN_CELLS` k-means centres of its fit photos, and a collection of
which more than :data:`MAX_OUT_OF_DOMAIN` lies farther from them than 99 %
of the fit photos is searched without it (:meth:`AdaptedModel.out_of_domain_share`).

``benchmarks/adapt.py`` measures where each kind of model helps and where it
hurts, on sets it was not fitted on, and chose ``DEFAULT_DIM`` and
``DEFAULT_SHRINKAGE``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .calibration import PairModel
from .hashing import sha256_file

log = logging.getLogger(__name__)

#: Version of the model folder's format; another version is refused.
MODEL_VERSION = 1
#: The model folder's commit record (written last, with every file's SHA-256).
MODEL_JSON = "model.json"
PROJECTION_NPZ = "projection.npz"
PAIR_MODEL_JSON = "pair_model.json"
#: Output dimensions of the projection (chosen by ``benchmarks/adapt.py``).
DEFAULT_DIM = 128
#: Shrinkage ``s`` of the matching-pair covariance towards ``s tr(C)/D I``
#: (chosen by ``benchmarks/adapt.py``).
DEFAULT_SHRINKAGE = 1.0
#: Folds of the out-of-fold calibration in supervised mode.
DEFAULT_FOLDS = 4
#: The domain check: k-means cells summarising the photos a model was fitted
#: on, the percentile of their own similarity to the nearest cell centre
#: below which a photo counts as outside the domain, and the largest share of
#: a collection outside it for which the model is still used. Measured with a
#: model fitted on half of inshop-women's cuts: 2.8 % of the other half's
#: photos (unseen cuts of the same shop) fall outside, 0.7 % of
#: edited-inshop, 30 % of products-flipkart (another shop's fashion photos,
#: where the model neither helped nor hurt), 95 % of ukbench-dev and 92 % of
#: edited-ukbench (objects, where it hurt).
DOMAIN_CELLS = 16
DOMAIN_PERCENTILE = 1.0
MAX_OUT_OF_DOMAIN = 0.5
#: Augmented views per image in self-supervised mode.
DEFAULT_VIEWS = 2
#: Matching pairs drawn at most from one group (a group of g photos has
#: g (g - 1) / 2 pairs; a huge group would otherwise dominate the estimate).
MAX_PAIRS_PER_GROUP = 200
#: Identifies the augmentation recipe (part of the cache key of a view).
AUGMENT_ID = "dedup-augment-1"
#: The edit kinds a view draws from (:data:`dedup.augment.KINDS`).
VIEW_KINDS = ("crop", "pad", "mirror", "rotate", "jpeg", "jitter", "crop+jitter", "mirror+jpeg", "jitter+pad")


class ModelError(ValueError):
    """A model folder that cannot be used (missing, half-written, another
    version, or fitted with other backbones); ``str(err)`` says why."""


@dataclass
class Projection:
    """``z = normalise((x - mean) @ matrix)``.

    Attributes:
        mean: ``(D,)`` float32, the mean of the rows it was fitted on.
        matrix: ``(D, dim)`` float32.
    """

    mean: np.ndarray
    matrix: np.ndarray

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, D)`` rows -> ``(n, dim)`` float32 with unit L2 norm.

        Raises:
            ValueError: ``X`` has another width than ``D``.
        """
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ValueError(f"the projection takes rows of width {len(self.mean)}, got shape {X.shape}")
        Z = (X - self.mean) @ self.matrix
        return (Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def matching_pairs(groups, max_per_group: int = MAX_PAIRS_PER_GROUP, seed: int = 0) -> np.ndarray:
    """All pairs of rows with the same group label (at most ``max_per_group``
    per group, drawn at random with ``seed``).

    Args:
        groups: ``(n,)`` labels (any hashable dtype).

    Returns:
        ``(p, 2)`` int64 row pairs, ``i < j``.
    """
    codes = pd.factorize(pd.Series(groups))[0]
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    rng = np.random.default_rng(seed)
    out = []
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        i, j = np.triu_indices(len(rows), 1)
        if len(i) > max_per_group:
            keep = rng.choice(len(i), max_per_group, replace=False)
            i, j = i[keep], j[keep]
        out.append(np.stack([rows[i], rows[j]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def check_whitening_settings(dim: int, shrinkage: float) -> None:
    """Check the settings of :func:`learned_whitening` before any work.

    Raises:
        ValueError: ``dim`` not an integer >= 1, or ``shrinkage`` not a
            finite number >= 0.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float, np.number)):
        raise ValueError(f"shrinkage must be a number >= 0, got {shrinkage!r}")
    if not np.isfinite(shrinkage) or shrinkage < 0:
        raise ValueError(f"shrinkage must be a number >= 0, got {shrinkage!r}")


def learned_whitening(
    X: np.ndarray, pairs: np.ndarray, dim: int = DEFAULT_DIM, shrinkage: float = DEFAULT_SHRINKAGE
) -> Projection:
    """Fit learned whitening (see the module's docstring for the steps).

    Args:
        X: ``(n, D)`` float rows (fused vectors).
        pairs: ``(p, 2)`` int row pairs that show the same thing (``p >= 1``).
        dim: output dimensions, ``1 <= dim <= D``.
        shrinkage: ``s >= 0``, weight of the identity added to the matching
            covariance, relative to its mean eigenvalue.

    Returns:
        A :class:`Projection` ``(D,) -> (dim,)``.

    Raises:
        ValueError: no pairs, or ``dim``/``shrinkage`` out of range.
    """
    X = np.asarray(X, np.float64)
    n, D = X.shape
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        raise ValueError("learned whitening needs at least one matching pair")
    check_whitening_settings(dim, shrinkage)
    if dim > D:
        raise ValueError(f"dim must lie in [1, {D}], got {dim}")
    mu = X.mean(axis=0)
    diff = X[pairs[:, 0]] - X[pairs[:, 1]]
    cs = diff.T @ diff / len(diff)
    cs += (shrinkage * np.trace(cs) / D + 1e-9) * np.eye(D)
    w, V = np.linalg.eigh(cs)
    p1 = (V / np.sqrt(np.maximum(w, 1e-12))) @ V.T
    Xw = (X - mu) @ p1
    w2, V2 = np.linalg.eigh(Xw.T @ Xw / max(n - 1, 1))
    top = np.argsort(w2)[::-1][:dim]
    return Projection(mu.astype(np.float32), (p1 @ V2[:, top]).astype(np.float32))


def fit_domain(fused: np.ndarray, cells: int = DOMAIN_CELLS, percentile: float = DOMAIN_PERCENTILE, seed: int = 0):
    """Summarise the photos a model is fitted on, for its domain check.

    Args:
        fused: ``(n, D)`` float32 fused vectors of the fit photos (unit rows).

    Returns:
        ``(centres, threshold)``: ``(min(cells, n), D)`` float32 unit k-means
        centres (scikit-learn ``KMeans``) and the ``percentile``-th percentile
        of the photos' cosine similarity to their nearest centre.
    """
    from sklearn.cluster import KMeans

    fused = np.asarray(fused, np.float32)
    km = KMeans(n_clusters=min(cells, len(fused)), n_init=1, random_state=seed).fit(fused)
    centres = km.cluster_centers_.astype(np.float32)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres, float(np.percentile((fused @ centres.T).max(axis=1), percentile))


@dataclass
class AdaptedModel:
    """A fitted model folder (``dedup fit --out MODEL/``).

    Attributes:
        projection: the learned :class:`Projection` of the fused vectors.
        backbones: ``[{"name", "weights_id", "dim"}]`` it was fitted with, in order.
        colour_weight: the fused vectors' colour share it was fitted with.
        pair_model: the refitted pair model (supervised), or ``None`` (keep
            the shipped one).
        info: provenance: ``mode``, ``fitted_on`` (labels file or folder,
            its SHA-256 for a file), ``images``, ``groups``, ``pairs``,
            ``dim``, ``shrinkage``, ``seconds``, ``dedup_version``, ``date``.
        domain_centres: ``(DOMAIN_CELLS, D)`` float32 unit k-means centres
            of the fit's fused vectors; domain_threshold: see
            :meth:`out_of_domain_share` (both from :func:`fit_domain`).
    """

    projection: Projection
    backbones: list[dict]
    colour_weight: float
    pair_model: PairModel | None = None
    info: dict = field(default_factory=dict)
    domain_centres: np.ndarray | None = None
    domain_threshold: float = -1.0

    def out_of_domain_share(self, fused: np.ndarray) -> float:
        """The share of a collection unlike the photos the model was fitted on.

        Args:
            fused: ``(n, D)`` fused vectors (before the projection).

        Returns:
            The share in [0, 1] of rows whose cosine similarity to the nearest
            of the fit's k-means cell centres (``domain_centres``) is below
            ``domain_threshold`` (the fit photos' own 1st percentile); 0 for
            a model without domain (or an empty collection).
        """
        if self.domain_centres is None or len(fused) == 0:
            return 0.0
        best = np.asarray(fused, np.float32) @ self.domain_centres.T
        return float((best.max(axis=1) < self.domain_threshold).mean())

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model into ``folder`` (created). ``model.json`` is
        withdrawn first and written last with the SHA-256 of every other
        file, so a half-written folder is never taken for a model.

        Raises:
            ModelError: ``folder`` exists, is not empty and holds no dedup model.
            OSError: it cannot be written.
        """
        from .report.files import atomic_write

        folder = check_model_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MODEL_JSON).unlink(missing_ok=True)
        files = {}

        def npz(p: Path) -> None:
            buf = io.BytesIO()
            arrays = {"mean": self.projection.mean, "matrix": self.projection.matrix}
            if self.domain_centres is not None:
                arrays["domain_centres"] = self.domain_centres
            np.savez(buf, **arrays)  # type: ignore[arg-type]
            p.write_bytes(buf.getvalue())

        atomic_write(folder / PROJECTION_NPZ, npz)
        files[PROJECTION_NPZ] = sha256_file(folder / PROJECTION_NPZ)
        if self.pair_model is not None:
            text = self.pair_model.to_json() + "\n"
            atomic_write(folder / PAIR_MODEL_JSON, lambda p: p.write_text(text, encoding="utf-8"))
            files[PAIR_MODEL_JSON] = sha256_file(folder / PAIR_MODEL_JSON)
        else:
            (folder / PAIR_MODEL_JSON).unlink(missing_ok=True)
        record = {
            "model_version": MODEL_VERSION,
            "backbones": self.backbones,
            "colour_weight": self.colour_weight,
            "input_dim": int(len(self.projection.mean)),
            "dim": int(self.projection.matrix.shape[1]),
            "domain_threshold": self.domain_threshold,
            "info": self.info,
            "files": files,
        }
        text = json.dumps(record, indent=2, default=str) + "\n"
        atomic_write(folder / MODEL_JSON, lambda p: p.write_text(text, encoding="utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "AdaptedModel":
        """Read a model folder written by :meth:`save`.

        Raises:
            ModelError: no such folder, no ``model.json`` (not a model, or
                half-written), another format version, or a file whose
                SHA-256 differs from the record (changed or mixed).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such model folder (make one with `python -m dedup fit`)")
        try:
            record = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{folder}: no {MODEL_JSON}; not a dedup model, or its fit did not finish") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"{folder / MODEL_JSON}: not a dedup model record ({exc})") from None
        if not isinstance(record, dict) or record.get("model_version") != MODEL_VERSION:
            raise ModelError(
                f"{folder}: model format {record.get('model_version') if isinstance(record, dict) else '?'}, "
                f"this dedup reads {MODEL_VERSION}; fit it again"
            )
        for name, digest in record.get("files", {}).items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise ModelError(f"{folder / name} is missing or differs from the model's record; fit it again")
        with np.load(folder / PROJECTION_NPZ) as z:
            projection = Projection(z["mean"].astype(np.float32), z["matrix"].astype(np.float32))
            centres = z["domain_centres"].astype(np.float32) if "domain_centres" in z.files else None
        pair_model = None
        if PAIR_MODEL_JSON in record.get("files", {}):
            pair_model = PairModel.load(folder / PAIR_MODEL_JSON)
        return cls(
            projection,
            record["backbones"],
            float(record["colour_weight"]),
            pair_model,
            record.get("info", {}),
            centres,
            float(record.get("domain_threshold", -1.0)),
        )

    def check_backbones(self, nets) -> None:
        """Refuse backbones other than those the model was fitted with.

        Raises:
            ModelError: other names, order or weights.
        """
        have = [(n.name, n.weights_id) for n in nets]
        want = [(b["name"], b["weights_id"]) for b in self.backbones]
        if have != want:
            raise ModelError(
                f"the model was fitted with backbones {[w[0] for w in want]} (weights {[w[1] for w in want]}); "
                f"this run has {[h[0] for h in have]} (weights {[h[1] for h in have]}): "
                "run with the model's backbones or fit again"
            )

    def describe(self, folder: str | os.PathLike | None = None) -> dict:
        """run.json's record of the model: where, what it was fitted on, how."""
        out = {"path": str(folder) if folder is not None else None, **self.info}
        out["backbones"] = [b["name"] for b in self.backbones]
        out["pair_model"] = "refitted on its labels" if self.pair_model is not None else "shipped"
        return out


def check_model_folder(folder: str | os.PathLike) -> Path:
    """Check that ``folder`` may receive a model: absent, empty, a previous
    model (it is replaced), or holding only a cache (``cache.sqlite*``, the
    CLI's default cache place).

    Raises:
        ModelError: a file, or a folder holding anything else.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{folder} is a file, not a model folder")
    if folder.is_dir() and not (folder / MODEL_JSON).exists():
        other = [p.name for p in folder.iterdir() if not p.name.startswith("cache.sqlite")]
        if other:
            raise ModelError(f"{folder} holds other files ({other[0]}, ...) and no dedup model; choose another --out")
    return folder


# ---------------------------------------------------------------------------
# reading the labels


def read_fit_labels(labels_csv: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[pd.DataFrame, Path]:
    """Read and check the labels of a supervised fit.

    Args:
        labels_csv: a CSV with columns ``path`` (relative to ``root``) and
            ``group`` (the product or SKU). Rows whose group is empty or
            starts with ``_`` are left out (the benchmark sets' convention
            for files expected to be skipped).
        root: the folder the paths are relative to (default: the labels
            file's folder).

    Returns:
        ``(labels, root)``: DataFrame ``path, group`` and the resolved root.

    Raises:
        FileNotFoundError: no labels file, or a listed image missing (the
            first few are named).
        ValueError: missing columns; a path outside ``root``; fewer than two
            groups; no group with two or more photos (nothing to learn from).
    """
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(f"{labels_csv}: no such labels file")
    root = Path(root) if root is not None else labels_csv.parent
    df = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if not {"path", "group"} <= set(df.columns):
        raise ValueError(f"{labels_csv}: needs columns path,group (has {list(df.columns)})")
    df = df[(df.group.str.strip() != "") & ~df.group.str.startswith("_")][["path", "group"]].reset_index(drop=True)
    base = root.resolve()
    outside = [p for p in df.path if Path(p).is_absolute() or not (base / p).resolve().is_relative_to(base)]
    if outside:
        raise ValueError(
            f"{labels_csv}: {len(outside)} paths lie outside {root} (first: {outside[0]!r}); "
            "paths must be relative to the labels file's folder or --root"
        )
    missing = [p for p in df.path if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{labels_csv}: {len(missing)} listed images not found under {root} (first: {', '.join(missing[:3])})"
        )
    n_groups = df.group.nunique()
    if n_groups < 2:
        raise ValueError(f"{labels_csv}: {n_groups} group; fitting needs at least two products to tell apart")
    if (df.group.value_counts() < 2).all():
        raise ValueError(f"{labels_csv}: every group has one photo; fitting needs products with two or more photos")
    return df, root


def fitted_info(mode: str, source: str | os.PathLike, n_images: int, n_groups: int, n_pairs: int, **more) -> dict:
    """The provenance recorded in ``model.json`` and then in every ``run.json``."""
    source = Path(source)
    return {
        "mode": mode,
        "fitted_on": str(source.resolve()),
        "fitted_on_sha256": sha256_file(source) if source.is_file() else None,
        "images": int(n_images),
        "groups": int(n_groups),
        "matching_pairs": int(n_pairs),
        **more,
        "dedup_version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
