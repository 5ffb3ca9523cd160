"""The grouping rules one by one, on small synthetic pair sets (the real-image
behaviour is in test_grouping.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import bench_set
from PIL import Image

from dedup.colour import STORED_DIM, colour_descriptor, colour_distance, colour_features, layout_distances, pack, unpack
from dedup.grouping import (
    GroupingParams,
    Pairs,
    candidate_pairs,
    classifier_edges,
    fused_vectors,
    group,
    phash_edges,
    reviewed_edges,
    score_pairs,
    sha256_edges,
)


def pairs_of(ij, colour=None, phash_bits=None):
    """Pairs whose evidence is neutral: two unrelated photos' pHashes
    (32 bits apart) unless ``phash_bits`` says otherwise."""
    ij = np.asarray(ij, np.int64).reshape(-1, 2)
    m = len(ij)
    z = np.zeros(m, np.float32)
    return Pairs(
        ij,
        z.copy(),
        z[:, None].copy(),
        z.copy() if colour is None else np.asarray(colour, np.float32),
        z.copy(),
        z.copy(),
        np.zeros(m, np.int64),
        np.zeros(m, np.int64),
        z.copy(),
        np.full(m, 32, np.int64) if phash_bits is None else np.asarray(phash_bits, np.int64),
        np.zeros(m, np.int64),
    )


NO_EXACT = {"sha256": np.zeros((0, 2), np.int64), "phash": np.zeros((0, 2), np.int64)}


def test_pairs_at_or_above_min_confidence_join_others_stay_apart():
    pairs = pairs_of([(0, 1), (2, 3), (4, 5)])
    g = group(6, pairs, np.array([0.95, 0.89, 0.2]), NO_EXACT, GroupingParams(min_confidence=0.9))
    assert g.labels[0] == g.labels[1]
    assert len(set(g.labels[2:])) == 4
    assert g.stage[0] == "classifier" and g.confidence[0] == pytest.approx(0.95)
    assert np.isnan(g.confidence[2]) and g.stage[2] == "single"
    # the doubtful pair (0.89) is in review, the clear negative (0.2) is not
    assert [tuple(pairs.ij[r]) for r in g.review] == [(2, 3)]
    # one knob: lowering it joins the doubtful pair
    g2 = group(6, pairs, np.array([0.95, 0.89, 0.2]), NO_EXACT, GroupingParams(min_confidence=0.85))
    assert g2.labels[2] == g2.labels[3]


def test_a_bridge_image_cannot_chain_two_products():
    # 0-1 and 2-3 are products; image 4 looks like both; 0/1 vs 2/3 are clearly different
    ij = [(0, 1), (2, 3), (0, 4), (2, 4), (0, 2), (0, 3), (1, 2), (1, 3), (1, 4), (3, 4)]
    p = np.array([0.99, 0.99, 0.95, 0.94, 0.01, 0.01, 0.01, 0.01, 0.9, 0.9])
    g = group(5, pairs_of(ij), p, NO_EXACT)
    assert g.labels[0] == g.labels[1] == g.labels[4]
    assert g.labels[2] == g.labels[3] != g.labels[0]
    # the refused join is offered for review
    assert (2, 4) in {tuple(pairs_of(ij).ij[r]) for r in g.review}


@pytest.mark.parametrize("reencodes", [True, False])
def test_the_linkage_check_counts_pairs_with_copies_of_one_photo_once(reencodes):
    """Images 0-2 are one photo re-encoded (pHash 0 bits and colour distance
    0.01 apart) or three photos (32 bits); image 3 is confirmed against 0
    only (p 0.99), its pairs with 1 and 2 weak. Re-encodes are one piece of
    evidence, at its best: 3 joins. Three photos average 0.34: it does not."""
    ij = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    bits = [0, 0, 0, 20, 20, 20] if reencodes else [32] * 6
    pairs = pairs_of(ij, colour=[0.01, 0.01, 0.01, 0.2, 0.2, 0.2], phash_bits=bits)
    g = group(4, pairs, np.array([0.99, 0.99, 0.99, 0.99, 0.01, 0.01]), NO_EXACT)
    assert g.labels[0] == g.labels[1] == g.labels[2]
    assert (g.labels[3] == g.labels[0]) == reencodes


def test_byte_identical_files_always_join_and_phash_needs_agreeing_colour():
    pairs = pairs_of([(0, 1), (2, 3)], colour=[0.1, 0.9])
    exact = {"sha256": np.array([[4, 5]]), "phash": np.array([[0, 1], [2, 3]])}
    g = group(6, pairs, np.array([0.3, 0.3]), exact)
    assert g.labels[4] == g.labels[5] and g.stage[4] == "sha256" and g.confidence[4] == 1.0
    assert g.labels[0] == g.labels[1] and g.stage[0] == "phash"
    assert g.labels[2] != g.labels[3]  # same pHash, different colour: not an exact duplicate


def test_decisions_confirm_and_reject_pairs():
    pairs = pairs_of([(0, 1), (2, 3)])
    dec = pd.DataFrame({"i": [0, 3], "j": [1, 2], "same": [False, True]})
    g = group(4, pairs, np.array([0.99, 0.1]), NO_EXACT, decisions=dec)
    assert g.labels[0] != g.labels[1]  # rejected, although the model was sure
    assert g.labels[2] == g.labels[3] and g.stage[2] == "reviewed" and g.confidence[2] == 1.0
    assert len(g.review) == 0  # decided pairs are not offered again


def test_a_rejected_pair_is_never_in_one_group_even_through_others():
    ij = [(0, 1), (1, 2), (0, 2)]
    dec = pd.DataFrame({"i": [0], "j": [2], "same": [False]})
    g = group(3, pairs_of(ij), np.array([0.99, 0.98, 0.97]), NO_EXACT, decisions=dec)
    assert g.labels[0] != g.labels[2]


@pytest.mark.parametrize(
    "bad",
    [
        dict(min_confidence=1.5),
        dict(min_confidence=float("nan")),
        dict(k_context=0),
        dict(colour_weight=-0.1),
        dict(k_context=2.5),
        dict(min_confidence=0.4, review_confidence=0.6),
    ],
)
def test_settings_out_of_range_are_refused_with_the_range(bad):
    with pytest.raises(ValueError, match="must"):
        GroupingParams(**bad)


def test_fused_vectors_are_unit_and_mix_cosine_and_colour():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    C = np.abs(rng.normal(size=(5, 4))).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    F = fused_vectors([X], C, 0.75)
    assert np.allclose(np.linalg.norm(F, axis=1), 1, atol=1e-5)
    assert F[0] @ F[1] == pytest.approx(0.25 * (X[0] @ X[1]) + 0.75 * (C[0] @ C[1]), abs=1e-5)


def test_score_pairs_ranks_and_hamming_bits():
    X = np.eye(4, dtype=np.float32)
    C = np.eye(4, dtype=np.float32)
    F = fused_vectors([X], C, 0.5)
    ids = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
    ij = candidate_pairs([ids])
    codes = np.array([0, 0b111, 1 << 63, 0], dtype=np.uint64)
    p = score_pairs(ij, [X], C, F, ids, codes, k_context=2)
    row = {tuple(r): k for k, r in enumerate(ij)}
    assert p.rank_ij[row[(0, 1)]] == 0 and p.rank_ji[row[(0, 1)]] == 0  # mutual nearest
    assert p.rank_ij[row[(0, 2)]] == 1 and p.rank_ji[row[(0, 2)]] == 1
    assert p.rank_ij[row[(1, 3)]] == 1 and p.rank_ji[row[(1, 3)]] == 1
    assert p.phash_bits[row[(0, 1)]] == 3 and p.phash_bits[row[(0, 2)]] == 1
    assert np.allclose(p.distance, 1.0) and np.all(p.inliers == -1)


def _swatch(rgb, size=120):
    im = Image.new("RGB", (size, size), (250, 250, 250))
    im.paste(Image.new("RGB", (size // 2, size // 2), rgb), (size // 4, size // 4))
    return im


def test_colour_tells_black_from_navy_and_grey_from_any_hue():
    black, navy = colour_descriptor(_swatch((18, 18, 20))), colour_descriptor(_swatch((25, 30, 75)))
    grey, rust = colour_descriptor(_swatch((128, 128, 128))), colour_descriptor(_swatch((150, 80, 50)))
    assert colour_distance(black, navy) > 0.5
    assert colour_distance(grey, rust) > 0.5
    assert colour_distance(black, colour_descriptor(_swatch((20, 20, 22)))) < 0.2


def test_colour_layout_sees_a_recoloured_garment_and_ignores_a_mirror():
    # a real studio photo; the band holding the top recoloured (R and B swapped), as a colour variant worn
    # with the same outfit would be: one band in four changes, so the whole-image histogram moves less
    photo = Image.open(bench_set("inshop-women") / "images" / "00446.jpg").convert("RGB")
    px = np.asarray(photo).copy()
    h = px.shape[0]
    px[h // 4 : h // 2] = px[h // 4 : h // 2, :, ::-1]
    variant = Image.fromarray(px)
    (d0, l0), (d1, l1) = colour_features(photo), colour_features(variant)
    mean, worst = layout_distances(l0, l1)
    assert worst > colour_distance(d0, d1) + 0.1
    assert worst > 2 * mean  # the change is local: one band far, the others near
    mirrored = colour_features(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))[1]
    assert layout_distances(l0, mirrored)[1] < 0.05
    assert layout_distances(l0, l0)[1] < 0.02  # uint8 rounding only
    # stored form: round trip, and another version's length is refused (the image is decoded again)
    back = unpack(pack(d0, l0))
    assert back is not None and np.allclose(back[0], d0) and np.array_equal(back[1], l0)
    assert pack(d0, l0).shape == (STORED_DIM,) and unpack(d0) is None


# -- each rule alone ---------------------------------------------------------------


def test_rule_sha256_edges_have_probability_one_and_their_pair_row():
    pairs = pairs_of([(0, 1), (2, 3)])
    rows = {(0, 1): 0, (2, 3): 1}
    edges = sha256_edges({"sha256": np.array([[3, 2], [4, 5]])}, rows)
    assert edges == [("sha256", 3, 2, 1.0, 1), ("sha256", 4, 5, 1.0, -1)]
    assert pairs.ij.shape == (2, 2)


def test_rule_reviewed_edges_follow_confirmed_pairs():
    assert reviewed_edges([(0, 1), (5, 7)], {(0, 1): 0}) == [("reviewed", 0, 1, 1.0, 0), ("reviewed", 5, 7, 1.0, -1)]


def test_rule_phash_edges_need_a_scored_pair_with_agreeing_colour():
    pairs = pairs_of([(0, 1), (2, 3)], colour=[0.2, 0.5])
    rows = {(0, 1): 0, (2, 3): 1}
    hp = {"phash": np.array([[1, 0], [2, 3], [4, 5]])}  # (4, 5) was never scored: no colour evidence
    edges = phash_edges(hp, rows, pairs, np.array([0.4, 0.6]), GroupingParams(phash_colour_cutoff=0.35))
    assert edges == [("phash", 0, 1, 0.4, 0)]
    loose = phash_edges(hp, rows, pairs, np.array([0.4, 0.6]), GroupingParams(phash_colour_cutoff=0.6))
    assert [e[1:3] for e in loose] == [(0, 1), (2, 3)]


def test_rule_classifier_edges_are_the_confident_pairs_strongest_first():
    pairs = pairs_of([(0, 1), (1, 2), (2, 3), (3, 4)])
    edges = list(classifier_edges(pairs, np.array([0.91, 0.5, 0.99, 0.9]), GroupingParams(min_confidence=0.9)))
    assert [(e[1], e[2]) for e in edges] == [(2, 3), (0, 1), (3, 4)]
    assert [e[3] for e in edges] == [0.99, 0.91, 0.9]
