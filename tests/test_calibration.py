"""The pair model: logistic regression plus boosted trees, on real pair evidence."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import bench_set, labels_of

from dedup.calibration import (
    FEATURES,
    TREE_CAP,
    TREE_SETTINGS,
    PairModel,
    _LogitInit,
    expected_calibration_error,
    pair_features,
)
from dedup.evaluate import pairwise_scores
from dedup.pipeline import Deduplicator


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    """Candidate pairs of every photo of 10 inshop-women cuts in 3+ colours,
    every pair verified (the evidence the shipped verified model is for):
    (evidence matrix, same-product 0/1 per pair, run result, true group per image)."""
    lab = labels_of("inshop-women")
    per_cut = lab.groupby("cut").group.nunique()
    cuts = sorted(per_cut[per_cut >= 3].index)[1:40:4]
    sub = lab[lab.cut.isin(cuts)]
    dd = Deduplicator(
        backbones="efficientnet-lite0",
        progress=False,
        cache=tmp_path_factory.mktemp("cache") / "c.sqlite",
        verify_all=True,
    )
    res = dd.run(bench_set("inshop-women"), files=list(sub.path))
    truth = sub.set_index("path").group.reindex(res.groups.path).to_numpy()
    y = (truth[res.pairs.ij[:, 0]] == truth[res.pairs.ij[:, 1]]).astype(int)
    return pair_features(res.pairs), y, res, truth


def test_boosted_pair_model_predicts_as_scikit_learn_and_survives_its_file(evidence):
    from sklearn.ensemble import GradientBoostingClassifier

    X, y, _, _ = evidence
    assert 0 < y.sum() < len(y)
    settings = dict(TREE_SETTINGS, min_samples_leaf=5, n_estimators=30)
    model = PairModel.fit(X, y, boost=settings)
    assert model.trees is not None and model.trees.feature.shape[0] == 30
    logistic = PairModel(model.mean, model.scale, model.coef, model.intercept)
    reference = GradientBoostingClassifier(init=_LogitInit(logistic), random_state=0, **settings).fit(X, y)
    assert model.trees.cap == TREE_CAP
    unbounded = PairModel(model.mean, model.scale, model.coef, model.intercept, trees=replace(model.trees, cap=np.inf))
    np.testing.assert_allclose(unbounded.predict(X), reference.predict_proba(X)[:, 1], atol=1e-6)
    # capped: the trees move the logistic logit by at most TREE_CAP
    moved = model.logit(X) - logistic.logit(X)
    assert np.abs(moved).max() <= TREE_CAP + 1e-9 and np.abs(moved).max() > 0.5
    # the trees change the logistic model's answer (the test could fail)
    assert np.abs(model.predict(X) - logistic.predict(X)).max() > 0.05
    again = PairModel.from_json(model.to_json())
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    assert PairModel.from_json(unbounded.to_json()).trees.cap == np.inf


def test_a_malformed_tree_file_is_refused(evidence):
    X, y, _, _ = evidence
    d = json.loads(PairModel.fit(X, y, boost=dict(TREE_SETTINGS, n_estimators=3)).to_json())
    d["trees"]["left"][0][0] = 10_000  # a child outside the tree
    with pytest.raises(ValueError, match="trees"):
        PairModel.from_json(json.dumps(d))


def test_the_shipped_model_is_calibrated_and_precise_on_colour_variants(evidence):
    X, y, res, truth = evidence
    shipped = PairModel.load()
    assert shipped.trees is not None and shipped.info["fitted_with"] == ["efficientnet-lite0"]
    p = shipped.predict(X)
    np.testing.assert_allclose(p, res.confidence, atol=1e-9)  # what the run decided with
    assert expected_calibration_error(p, y) < 0.05
    # pairs the default accepts, on cuts that come in 3+ colours, are the same
    # product; the trees accept far more of them than the logistic part alone
    # (measured: 142 pairs 0.979 precise; the logistic part alone 98, 0.980)
    joined = p >= 0.9
    logistic = PairModel(shipped.mean, shipped.scale, shipped.coef, shipped.intercept).predict(X) >= 0.9
    assert y[joined].mean() >= 0.95, (joined.sum(), y[joined].mean())
    assert joined.sum() >= 1.2 * logistic.sum(), (joined.sum(), logistic.sum())
    scores = pairwise_scores(res.groups.group.to_numpy(), truth)
    assert scores["precision"] >= 0.95, scores  # measured 0.975 (recall 0.71)


def test_a_refit_towards_the_shipped_model_keeps_its_trees(evidence):
    X, y, _, _ = evidence
    shipped = PairModel.load()
    refit = PairModel.fit(X, y, prior=shipped, prior_strength=10.0)
    assert refit.trees is shipped.trees
    assert not np.allclose(refit.coef, shipped.coef)  # the logistic part moved towards these pairs
    with pytest.raises(ValueError, match="prior"):
        PairModel.fit(X, y, prior=shipped, boost=TREE_SETTINGS)
    assert len(FEATURES) == X.shape[1]
