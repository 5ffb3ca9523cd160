"""The pair decision: a calibrated probability that two images show the same product.

Every candidate pair carries evidence (:func:`pair_features`): the ensemble
cosine distance, the colour distance, the contextual distance (Jegou et al.,
CVPR 2007), the mutual rank in the colour-fused kNN lists, the RANSAC inliers
of RootSIFT matches (mirror included), the colour mismatch of the two images
once aligned by that homography, and the pHash Hamming distance. A
logistic regression over that evidence (scikit-learn; Platt-style
probabilities, Platt 1999) turns it into the probability that the pair shows
the same product, and a small ensemble of gradient-boosted regression trees
(Friedman, Annals of Statistics 2001; scikit-learn's
``GradientBoostingClassifier``), boosted from the logistic model's logit,
corrects it where the evidence interacts: on a multi-view catalogue a very
small distance between two photos in the same pose is a colour variant's
sign, not a copy's, which no single linear weight can say. It replaces
hand-set acceptance rules.

The shipped model (``dedup/data/pair_model.json``) is fitted on labelled
candidate pairs of the shared benchmark sets by ``benchmarks/calibrate.py``,
which also checks it on held-out cuts (folds by garment cut, fitted on the
rest) and by a leave-one-set-out split (fit on all sets but one, measure the
expected calibration error and precision on the one left out).
It holds a dozen numbers (feature means and scales, coefficients,
intercept) and 100 trees of depth 3 over the same evidence columns (about
1,500 thresholds and leaf values): calibration constants of the pair
decision, no network weights and no projection of image features. It is
valid for the
distances of the backbones it was fitted with (``fitted_with``); a run with
other backbones says so in ``run.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

import numpy as np

#: Version of the feature set; a model file of another version is refused.
FEATURES_VERSION = 4
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
    "layout_mean",
    "layout_max",
)
#: The model file shipped in the package.
MODEL_FILE = "pair_model.json"
#: The model shipped for runs without geometric verification (``--no-verify``):
#: fitted on the same pairs with the verification evidence as an unverified
#: pair has it (:func:`unverified`; fitted and validated by held-out cuts in
#: ``benchmarks/calibrate.py``). The verified model reads "not verified" as
#: "no inlier found", evidence against a copy: on 8 crops each of 6
#: ukbench-dev photos without verification its ECE was 0.035 and 72 % of
#: the same-photo pairs reached p >= 0.9; with this model 0.011 and 94 %.
UNVERIFIED_MODEL_FILE = "pair_model_unverified.json"
#: The columns of :data:`FEATURES` that geometric verification fills (0 for
#: an unverified pair).
VERIFICATION_FEATURES = ("log_inliers", "inliers_capped", "copy_evidence", "variant_evidence")
#: The logistic logit is clipped to +-this before the trees are added: the
#: log-odds of 1 - float32 eps, where scikit-learn's gradient boosting clips
#: the probabilities of its ``init`` estimator, so that the trees add to the
#: same starting logit here as in the fit.
LOGIT_CLIP = float(np.log((1 - np.finfo(np.float32).eps) / np.finfo(np.float32).eps))
#: The boosted trees of the shipped fit, chosen on held-out cuts
#: (``benchmarks/calibrate.py``): 150 trees of depth 4 with 20 pairs a leaf
#: fitted the sets seen better (inshop-women pair precision 0.981 at p >= 0.9)
#: and held-out cuts worse (0.964, against 0.971 with these settings).
TREE_SETTINGS = {"n_estimators": 100, "max_depth": 3, "learning_rate": 0.1, "min_samples_leaf": 50}
#: The trees may move the logistic logit by at most +-this (odds x 7.4 either
#: way). Unbounded, they extrapolated where the training pairs are few: in a
#: 260-photo subset of inshop-women they joined a coral tee and a blue dress
#: (colour distance 0.79, in neither's kNN list) at p 0.91 where the logistic
#: part said 0.012. Chosen on held-out cuts (``benchmarks/calibrate.py``):
#: at the default confidence a cap of 2 kept every held-out set's recall and
#: raised precision on products-flipkart (0.955 -> 1.000) and edited-inshop
#: (0.978 -> 0.982); a cap of 1 lost recall on inshop-women (0.404 -> 0.364).
TREE_CAP = 2.0


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
        precision of ``benchmarks/calibrate.py``; the mean and the largest
        band distance of the colour layouts [0, 1].
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
            pairs.layout_mean,
            pairs.layout_max,
        ]
    ).astype(np.float64)


@dataclass
class BoostedTrees:
    """Regression trees whose summed leaf values add to a logit.

    Every array is ``(t, nodes)``, one row per tree, padded: ``feature``
    int64 (the evidence column a node splits on, ``-1`` at a leaf),
    ``threshold`` float64 (go left when ``float32(x) <= threshold``, as in
    scikit-learn's trees), ``left``/``right`` int64 (child nodes; a leaf
    points to itself), ``value`` float64 (a leaf's addition to the logit,
    learning rate included). ``depth``: the deepest leaf's depth. ``cap``:
    the most the trees' sum may add to or take from the logit
    (:data:`TREE_CAP`; ``inf``: unbounded, as scikit-learn predicts).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int
    cap: float = TREE_CAP

    def decision(self, X: np.ndarray) -> np.ndarray:
        """``(m, f)`` evidence -> ``(m,)`` float64 sum of the trees' leaf
        values, clipped to +-:attr:`cap`.

        Each tree is evaluated as a complete tree of :attr:`depth` levels
        (:attr:`_complete`): one comparison per internal node on a contiguous
        evidence column, then the leaf's index bit by bit, so that no
        per-row gather of node arrays is needed (about 15x faster than a
        node-by-node walk at a million pairs).

        Raises:
            ValueError: a tree deeper than :attr:`depth`, or deeper than 5.
        """
        Xc = np.ascontiguousarray(np.asarray(X, np.float32).T)
        m = Xc.shape[1]
        out = np.zeros(m, np.float64)
        feats, thrs, leaves = self._complete
        for feat, thr, leaf_value in zip(feats, thrs, leaves):
            go_left = [Xc[f] <= t for f, t in zip(feat, thr)]
            idx = np.zeros(m, np.uint8)
            bits: list[np.ndarray] = []  # went right at each level so far, first level first
            for level in range(self.depth):
                first = (1 << level) - 1
                here = _select(bits, go_left[first : 2 * first + 1])
                bits.append(~here)
                idx = ((idx << 1) | bits[-1].view(np.uint8)).astype(np.uint8, copy=False)
            out += leaf_value[idx]
        return np.clip(out, -self.cap, self.cap)

    @cached_property
    def _complete(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trees as complete binary trees in heap order (computed on first use):
        ``(t, 2**depth - 1)`` feature and threshold of the internal nodes (a
        leaf above the last level becomes nodes that always go left, with
        copies of its value below) and ``(t, 2**depth)`` leaf values."""
        d = self.depth
        if d > 5:
            raise ValueError("trees deeper than 5 levels are not supported")  # level L costs 2**L - 1 wheres
        t = len(self.feature)
        feat = np.zeros((t, (1 << d) - 1), np.int64)
        thr = np.full((t, (1 << d) - 1), np.inf)
        leaf = np.zeros((t, 1 << d), np.float64)
        for k in range(t):
            stack = [(0, 0, 0)]  # (node, heap position, level)
            while stack:
                node, pos, level = stack.pop()
                if level == d:
                    if self.feature[k, node] >= 0:
                        raise ValueError(f"tree {k} is deeper than its stated depth {d}")
                    leaf[k, pos - (1 << d) + 1] = self.value[k, node]
                    continue
                if self.feature[k, node] < 0:  # a leaf above the last level: always left, same value
                    stack += [(node, 2 * pos + 1, level + 1), (node, 2 * pos + 2, level + 1)]
                    continue
                feat[k, pos], thr[k, pos] = self.feature[k, node], self.threshold[k, node]
                stack += [(self.left[k, node], 2 * pos + 1, level + 1), (self.right[k, node], 2 * pos + 2, level + 1)]
        # float32 x <= float64 t exactly when x <= the largest float32 not above t
        thr32 = thr.astype(np.float32)
        thr32 = np.where(thr32.astype(np.float64) > thr, np.nextafter(thr32, np.float32(-np.inf)), thr32)
        return feat, thr32, leaf

    @classmethod
    def from_sklearn(cls, gb) -> "BoostedTrees":
        """The trees of a fitted binary ``GradientBoostingClassifier``
        (through its public ``estimators_[i, 0].tree_`` arrays)."""
        trees = [est.tree_ for est in gb.estimators_[:, 0]]
        n = max(t.node_count for t in trees)
        shape = (len(trees), n)
        feature, left, right = np.full(shape, -1, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
        threshold, value = np.zeros(shape, np.float64), np.zeros(shape, np.float64)
        for k, t in enumerate(trees):
            c = t.node_count
            leaf = t.children_left[:c] < 0
            own = np.arange(c)
            feature[k, :c] = np.where(leaf, -1, t.feature[:c])
            threshold[k, :c] = np.where(leaf, 0.0, t.threshold[:c])
            left[k, :c] = np.where(leaf, own, t.children_left[:c])
            right[k, :c] = np.where(leaf, own, t.children_right[:c])
            value[k, :c] = t.value[:c, 0, 0] * gb.learning_rate
        return cls(feature, threshold, left, right, value, int(max(t.max_depth for t in trees)))

    def to_dict(self) -> dict:
        """JSON-ready lists (the ``"trees"`` entry of the model file)."""
        return {
            "cap": self.cap,
            "depth": self.depth,
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BoostedTrees":
        """Read :meth:`to_dict`'s format.

        Raises:
            ValueError: arrays of different shapes, or a child or feature out of range.
        """
        arrays = [
            np.asarray(d[k], dt)
            for k, dt in (
                ("feature", np.int64),
                ("threshold", np.float64),
                ("left", np.int64),
                ("right", np.int64),
                ("value", np.float64),
            )
        ]
        shape = arrays[0].shape
        if len(shape) != 2 or any(a.shape != shape for a in arrays):
            raise ValueError("the pair model's trees have arrays of different shapes")
        feature, threshold, left, right, value = arrays
        if (
            feature.max(initial=-1) >= len(FEATURES)
            or min(left.min(initial=0), right.min(initial=0)) < 0
            or max(left.max(initial=0), right.max(initial=0)) >= shape[1]
        ):
            raise ValueError("the pair model's trees point outside their nodes or features")
        return cls(feature, threshold, left, right, value, int(d["depth"]), float(d.get("cap", TREE_CAP)))


def _select(bits: list[np.ndarray], nodes: list[np.ndarray]) -> np.ndarray:
    """Per row, ``nodes[k]`` where ``k`` is the row's path so far (``bits``,
    most significant first; ``len(nodes) == 2 ** len(bits)``), by nested
    ``np.where`` on boolean arrays."""
    if not bits:
        return nodes[0]
    half = len(nodes) // 2
    return np.where(bits[0], _select(bits[1:], nodes[half:]), _select(bits[1:], nodes[:half]))


class _LogitInit:
    """A fitted model's probabilities as the ``init`` estimator of
    scikit-learn's gradient boosting, which then boosts from its logit."""

    def __init__(self, model: "PairModel"):
        self.model = model
        self.classes_ = np.array([0, 1])

    def fit(self, X, y, sample_weight=None) -> "_LogitInit":
        return self  # already fitted: the boosting starts from it as it is

    def predict_proba(self, X) -> np.ndarray:
        p = self.model.predict(X)
        return np.column_stack([1.0 - p, p])

    def get_params(self, deep: bool = True) -> dict:
        return {"model": self.model}


@dataclass
class PairModel:
    """Logistic regression, with boosted trees added to its logit when
    :attr:`trees` is set, from pair evidence to P(same product).

    Attributes:
        mean, scale: ``(f,)`` standardisation of :data:`FEATURES`.
        coef: ``(f,)`` coefficients on standardised features; intercept: float.
        trees: optional :class:`BoostedTrees`: the logit is the logistic
            one (clipped to +-:data:`LOGIT_CLIP`) plus the trees' sum (capped
            at +-:data:`TREE_CAP`); ``None``: logistic alone.
        info: provenance (what it was fitted on, with which backbones,
            leave-one-set-out calibration errors).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    info: dict = field(default_factory=dict)
    trees: BoostedTrees | None = None

    def logit(self, X: np.ndarray) -> np.ndarray:
        """``(m, f)`` evidence -> ``(m,)`` float64 log-odds of the same product."""
        X = np.asarray(X, np.float64)
        z = np.clip(((X - self.mean) / self.scale) @ self.coef + self.intercept, -LOGIT_CLIP, LOGIT_CLIP)
        return z if self.trees is None else z + self.trees.decision(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(m, f)`` evidence -> ``(m,)`` float64 probabilities in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.logit(X), -50, 50)))

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
        boost: dict | None = None,
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
        prior's coefficient stays; the prior's trees are kept as they are
        (their logit is an offset of the refit).

        With ``boost`` (keyword arguments of scikit-learn's
        ``GradientBoostingClassifier``, e.g. :data:`TREE_SETTINGS`; not with
        ``prior``): regression trees boosted by log-loss from the fitted
        logistic model's logit (its probabilities are the boosting's
        ``init``), kept as :attr:`trees`; ``random_state`` 0, so a refit on
        the same pairs gives the same model.

        Raises:
            ValueError: only one class in ``y``; ``boost`` together with ``prior``.
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
            model = cls(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), dict(info or {}))
            if boost:
                from sklearn.ensemble import GradientBoostingClassifier

                gb = GradientBoostingClassifier(init=_LogitInit(model), random_state=0, **boost)
                gb.fit(X, y, sample_weight=sample_weight)
                model.trees = BoostedTrees.from_sklearn(gb)
            return model
        if boost:
            raise ValueError("boosting from a prior is not supported: the prior's trees are kept")
        from scipy.optimize import minimize

        # the prior's logit in this fit's standardisation
        c0 = prior.coef * scale / prior.scale
        b0 = prior.intercept + float(((mean - prior.mean) / prior.scale) @ prior.coef)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        sign = 2.0 * y - 1.0
        offset = np.zeros(len(y)) if prior.trees is None else prior.trees.decision(X)

        def loss(theta):
            c, b = theta[:-1], theta[-1]
            z = sign * (Xs @ c + b + offset)
            p = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z), stable
            value = float(w @ np.logaddexp(0.0, -z)) + 0.5 * prior_strength * float((c - c0) @ (c - c0))
            g = -(w * p * sign)
            return value, np.append(Xs.T @ g + prior_strength * (c - c0), g.sum())

        theta = minimize(loss, np.append(c0, b0), jac=True, method="L-BFGS-B").x
        return cls(mean, scale, theta[:-1].astype(np.float64), float(theta[-1]), dict(info or {}), prior.trees)

    def to_json(self) -> str:
        """The model as JSON (the format of ``dedup/data/pair_model.json``)."""
        text = json.dumps(
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
        if self.trees is None:
            return text
        # the trees' long arrays one per line, not one number per line
        rows = ",\n".join(f'    "{k}": {json.dumps(v, separators=(",", ":"))}' for k, v in self.trees.to_dict().items())
        return text[: text.rindex("}")].rstrip() + ',\n  "trees": {\n' + rows + "\n  }\n}"

    @classmethod
    def from_json(cls, text: str, source: str = "") -> "PairModel":
        """Read :meth:`to_json`'s format.

        Raises:
            ValueError: another feature version or feature list, or malformed trees.
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
            BoostedTrees.from_dict(d["trees"]) if d.get("trees") else None,
        )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, verified: bool = True) -> "PairModel":
        """The model in ``path``, or one shipped in the package: the one for
        geometrically verified pairs, or with ``verified=False`` the one for
        runs without verification (:data:`UNVERIFIED_MODEL_FILE`).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a pair model of this version.
        """
        if path is None:
            name = MODEL_FILE if verified else UNVERIFIED_MODEL_FILE
            text = resources.files("dedup.data").joinpath(name).read_text(encoding="utf-8")
            return cls.from_json(text, f"(shipped {name})")
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(fh.read(), str(path))


def unverified(X: np.ndarray) -> np.ndarray:
    """A copy of the ``(m, len(FEATURES))`` evidence matrix ``X`` as the same
    pairs have it when not verified (the :data:`VERIFICATION_FEATURES`
    columns 0, as :func:`pair_features` gives for ``inliers == -1``)."""
    out = np.array(X, np.float64, copy=True)
    out[:, [FEATURES.index(c) for c in VERIFICATION_FEATURES]] = 0.0
    return out


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
