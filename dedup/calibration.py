"""The pair decision: a calibrated probability that two images show the same product.

Every candidate pair carries evidence (:func:`pair_features`): the ensemble
cosine distance, the colour distance, the contextual distance (Jegou et al.,
CVPR 2007), the mutual rank in the colour-fused kNN lists, the RANSAC inliers
of RootSIFT matches (mirror included), the colour mismatch of the two images
once aligned by that homography, and the pHash Hamming distance. A
logistic regression over that evidence (scikit-learn; Platt-style
probabilities, Platt 1999) turns it into the probability that the pair shows
the same product. It replaces hand-set acceptance rules.

The shipped model (``dedup/data/pair_model.json``) is fitted on labelled
candidate pairs of the shared benchmark sets by ``benchmarks/calibrate.py``,
which also checks its calibration by a leave-one-set-out split (fit on all
sets but one, measure the expected calibration error on the one left out).
It holds a dozen numbers (feature means and scales, coefficients,
intercept): calibration constants, no network weights. It is valid for the
distances of the backbones it was fitted with (``fitted_with``); a run with
other backbones says so in ``run.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

#: Version of the feature set; a model file of another version is refused.
FEATURES_VERSION = 3
#: The evidence columns, in order (see :func:`pair_features`).
FEATURES = (
    "distance",
    "colour",
    "context",
    "log_rank_min",
    "log_rank_max",
    "log_inliers",
    "inliers_capped",
    "phash_bits",
    "distance_x_colour",
    "relative_to_nearest",
    "copy_evidence",
    "variant_evidence",
)
#: The model file shipped in the package.
MODEL_FILE = "pair_model.json"


def pair_features(pairs) -> np.ndarray:
    """The evidence matrix of scored candidate pairs.

    Args:
        pairs: a :class:`dedup.grouping.Pairs` with ``inliers`` filled in
            (``-1``, not verified, counts as 0).

    Returns:
        ``(m, len(FEATURES))`` float64: ensemble cosine distance [0, 2];
        Hellinger colour distance [0, 1]; contextual fused distance (~1 for
        an ordinary neighbour); ``log1p`` of the smaller and larger rank of
        each image in the other's fused kNN list (0 = nearest; ``k`` when
        absent); ``log1p(inliers)``; ``min(inliers, 50) / 50``; pHash Hamming
        distance / 64; distance x colour; fused distance over the nearer of
        the two images' nearest-neighbour distances (1 for a mutual nearest
        pair); for pairs aligned by RANSAC, copy evidence ``exp(-mismatch /
        0.03)`` and variant evidence ``min(mismatch, 0.4)``, each times
        ``min(inliers, 50) / 50`` (0 when not aligned): an edited copy keeps
        its colours where it aligns, a colour variant in the same pose does
        not. The 0.03 and 0.4 scales were chosen by the leave-one-set-out
        precision of ``benchmarks/calibrate.py``.
    """
    inl = np.maximum(np.asarray(pairs.inliers, np.float64), 0)
    mm = np.asarray(pairs.mismatch, np.float64)
    aligned = mm >= 0
    d = pairs.distance.astype(np.float64)
    h = pairs.colour.astype(np.float64)
    return np.column_stack(
        [
            d,
            h,
            pairs.context,
            np.log1p(np.minimum(pairs.rank_ij, pairs.rank_ji)),
            np.log1p(np.maximum(pairs.rank_ij, pairs.rank_ji)),
            np.log1p(inl),
            np.minimum(inl, 50) / 50,
            pairs.phash_bits / 64.0,
            d * h,
            pairs.relative,
            np.where(aligned, np.exp(-np.maximum(mm, 0) / 0.03), 0.0) * np.minimum(inl, 50) / 50,
            np.where(aligned, np.minimum(mm, 0.4), 0.0) * np.minimum(inl, 50) / 50,
        ]
    ).astype(np.float64)


@dataclass
class PairModel:
    """Logistic regression from pair evidence to P(same product).

    Attributes:
        mean, scale: ``(f,)`` standardisation of :data:`FEATURES`.
        coef: ``(f,)`` coefficients on standardised features; intercept: float.
        info: provenance (what it was fitted on, with which backbones,
            leave-one-set-out calibration errors).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    info: dict = field(default_factory=dict)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(m, f)`` evidence -> ``(m,)`` float64 probabilities in (0, 1)."""
        z = ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def predict_pairs(self, pairs, block: int = 1 << 20) -> np.ndarray:
        """``(m,)`` float64 P(same product) of every pair of a
        :class:`dedup.grouping.Pairs`: :meth:`predict` of
        :func:`pair_features`, computed ``block`` pairs at a time so that the
        float64 evidence matrix never exists whole (1.4 GB at 15M pairs).
        Same values as computing it whole."""
        m = len(pairs.ij)
        out = np.empty(m, np.float64)
        for s in range(0, m, block):
            out[s : s + block] = self.predict(pair_features(pairs.rows(slice(s, s + block))))
        return out

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        C: float = 1.0,
        info: dict | None = None,
        sample_weight: np.ndarray | None = None,
        prior: "PairModel | None" = None,
        prior_strength: float = 1.0,
    ) -> "PairModel":
        """Fit on ``(m, f)`` evidence and ``(m,)`` 0/1 labels.

        Without ``prior``: scikit-learn's ``LogisticRegression`` (L2 penalty
        ``C``) on standardised features, ``sample_weight`` optional ``(m,)``
        weights. With ``prior`` (a fitted model, e.g. the shipped one): a
        maximum a posteriori fit whose coefficients are pulled towards the
        prior's (a Gaussian prior centred on them, as in transfer learning
        for logistic regression, Chelba and Acero, EMNLP 2004): minimises
        ``sum_i w_i logloss_i + prior_strength / 2 * ||c - c_prior||^2`` by
        L-BFGS (SciPy), ``prior_strength`` in pairs' worth of evidence. Where
        the new pairs say little (an evidence column that barely varies in
        them, such as inliers in a catalogue without edited copies), the
        prior's coefficient stays.

        Raises:
            ValueError: only one class in ``y``.
        """
        from sklearn.linear_model import LogisticRegression

        X, y = np.asarray(X, np.float64), np.asarray(y).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError("fitting the pair model needs both same-product and different-product pairs")
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        Xs = (X - mean) / scale
        if prior is None:
            lr = LogisticRegression(C=C, max_iter=5000).fit(Xs, y, sample_weight=sample_weight)
            return cls(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), dict(info or {}))
        from scipy.optimize import minimize

        # the prior's logit in this fit's standardisation
        c0 = prior.coef * scale / prior.scale
        b0 = prior.intercept + float(((mean - prior.mean) / prior.scale) @ prior.coef)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        sign = 2.0 * y - 1.0

        def loss(theta):
            c, b = theta[:-1], theta[-1]
            z = sign * (Xs @ c + b)
            p = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z), stable
            value = float(w @ np.logaddexp(0.0, -z)) + 0.5 * prior_strength * float((c - c0) @ (c - c0))
            g = -(w * p * sign)
            return value, np.append(Xs.T @ g + prior_strength * (c - c0), g.sum())

        theta = minimize(loss, np.append(c0, b0), jac=True, method="L-BFGS-B").x
        return cls(mean, scale, theta[:-1].astype(np.float64), float(theta[-1]), dict(info or {}))

    def to_json(self) -> str:
        """The model as JSON (the format of ``dedup/data/pair_model.json``)."""
        return json.dumps(
            {
                "features_version": FEATURES_VERSION,
                "features": list(FEATURES),
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "coef": self.coef.tolist(),
                "intercept": self.intercept,
                "info": self.info,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "") -> "PairModel":
        """Read :meth:`to_json`'s format.

        Raises:
            ValueError: another feature version or feature list.
        """
        d = json.loads(text)
        if d.get("features_version") != FEATURES_VERSION or tuple(d.get("features", ())) != FEATURES:
            raise ValueError(
                f"pair model {source or ''} was fitted on other evidence "
                f"(features version {d.get('features_version')}, this dedup uses {FEATURES_VERSION}); "
                "refit it with benchmarks/calibrate.py"
            )
        return cls(
            np.asarray(d["mean"], np.float64),
            np.asarray(d["scale"], np.float64),
            np.asarray(d["coef"], np.float64),
            float(d["intercept"]),
            d.get("info", {}),
        )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "PairModel":
        """The model in ``path``, or the one shipped in the package.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a pair model of this version.
        """
        if path is None:
            text = resources.files("dedup.data").joinpath(MODEL_FILE).read_text(encoding="utf-8")
            return cls.from_json(text, "(shipped)")
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read(), str(path))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error (Naeini et al., AAAI 2015): the mean over
    ``bins`` equal-width probability bins of |mean predicted - observed rate|,
    weighted by the share of pairs in the bin. In [0, 1]; 0 is perfect.

    Args:
        p: ``(m,)`` predicted probabilities; y: ``(m,)`` 0/1 outcomes.
    """
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    if len(p) == 0:
        return 0.0
    b = np.clip((p * bins).astype(int), 0, bins - 1)
    err = 0.0
    for k in np.unique(b):
        sel = b == k
        err += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(err)
