"""Metrics against small hand-computed cases, and the bench/evaluate commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import bench_set, labels_of, run_cli

from dedup.evaluate import bcubed_scores, evaluate, ns_score, pairwise_scores, recall_by_view


def test_pairwise_hand_computed():
    true = ["a", "a", "a", "b", "b"]
    pred = [1, 1, 2, 2, 2]
    # true pairs: C(3,2)+C(2,2) = 4; predicted pairs: C(2,2)+C(3,2) = 4; TP: (0,1) and (3,4) = 2
    m = pairwise_scores(np.array(pred), np.array(true))
    assert (m["tp_pairs"], m["predicted_pairs"], m["true_pairs"]) == (2, 4, 4)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)


def test_bcubed_hand_computed():
    true = ["a", "a", "a", "b", "b"]
    pred = [1, 1, 2, 2, 2]
    # precision per item: 2/2, 2/2, 1/3, 2/3, 2/3 -> (11/3) / 5 = 11/15
    # recall per item:    2/3, 2/3, 1/3, 2/2, 2/2 -> (11/3) / 5 = 11/15
    m = bcubed_scores(np.array(pred), np.array(true))
    assert m["precision"] == pytest.approx(11 / 15)
    assert m["recall"] == pytest.approx(11 / 15)
    assert m["f1"] == pytest.approx(11 / 15)
    # an asymmetric case: true a,a,b ; pred 1,1,1 -> P = (2/3+2/3+1/3)/3 = 5/9, R = 1
    m = bcubed_scores(np.array([1, 1, 1]), np.array(["a", "a", "b"]))
    assert m["precision"] == pytest.approx(5 / 9) and m["recall"] == 1.0


def test_all_singletons_and_one_big_group():
    true = np.array(["a", "a", "b", "b", "c"])
    singles = np.arange(5)
    m = pairwise_scores(singles, true)
    assert m["predicted_pairs"] == 0 and m["precision"] == 1.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    b = bcubed_scores(singles, true)
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx((0.5 * 4 + 1) / 5)
    one = np.zeros(5)
    m = pairwise_scores(one, true)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 10)
    b = bcubed_scores(one, true)
    assert b["recall"] == 1.0 and b["precision"] == pytest.approx((2 / 5 * 4 + 1 / 5) / 5)


def test_recall_by_view_hand_computed():
    labels = pd.DataFrame(
        {
            "path": ["a1", "a2", "a3", "b1", "b2", "c1"],
            "group": ["A", "A", "A", "B", "B", "C"],
            "view": ["front", "back", "side", "front", "back", "front"],
        }
    )
    # A's front and back joined, its side alone; B's front joined with C's front (a false join)
    groups = pd.DataFrame({"path": labels.path, "group": ["g1", "g1", "g2", "g3", "g4", "g3"]})
    got = recall_by_view(groups, labels)
    assert got["back+front"] == {"pairs": 2, "joined": 1, "recall": 0.5, "false_joins": 0}
    assert got["front+side"] == {"pairs": 1, "joined": 0, "recall": 0.0, "false_joins": 0}
    assert got["back+side"] == {"pairs": 1, "joined": 0, "recall": 0.0, "false_joins": 0}
    assert got["front+front"] == {"pairs": 0, "joined": 0, "recall": None, "false_joins": 1}
    assert list(got)[-1] == "front+front"  # views seen only in false joins come last
    # with the scored candidates: where the missed pairs were lost
    scored = pd.DataFrame(
        {"path_a": ["a1", "a1", "b1", "b1"], "path_b": ["a2", "a3", "b2", "c1"], "confidence": [0.95, 0.6, 0.3, 0.92]}
    )
    got = recall_by_view(groups, labels, scored, min_confidence=0.9, review_confidence=0.5)
    assert (got["back+front"]["candidates"], got["back+front"]["confident"], got["back+front"]["to_review"]) == (
        2,
        1,
        0,
    )
    assert (got["front+side"]["candidates"], got["front+side"]["to_review"]) == (1, 1)
    assert got["back+side"]["candidates"] == 0
    assert got["front+front"]["candidates"] == 0  # a candidate pair of two products is not counted here


def test_recall_by_view_on_the_multi_view_catalogues_labels():
    """On inshop-women's labels: every same-product pair is counted once, under its views;
    the labels as the grouping find them all, singletons none, and merging two
    products counts their pairs as false joins."""
    labels = pd.read_csv(bench_set("inshop-women") / "labels.csv")
    sizes = labels.group.value_counts()
    perfect = recall_by_view(labels[["path", "group"]], labels)
    assert sum(v["pairs"] for v in perfect.values()) == int((sizes * (sizes - 1) // 2).sum())
    assert all(v["recall"] == 1.0 and v["false_joins"] == 0 for v in perfect.values())
    assert all(v["pairs"] > 0 for v in perfect.values())
    alone = recall_by_view(labels.assign(group=labels.path)[["path", "group"]], labels)
    assert all(v["joined"] == 0 for v in alone.values())
    two = sizes.index[:2]
    merged = labels.assign(group=labels.group.replace({two[1]: two[0]}))[["path", "group"]]
    false = sum(v["false_joins"] for v in recall_by_view(merged, labels).values())
    assert false == sizes[two[0]] * sizes[two[1]]


def test_bench_command_reports_recall_by_view_on_a_multi_view_catalogue(tmp_path):
    """`dedup bench` on real inshop-women photos (every photo of 8 cuts, their
    colour variants included): the report breaks recall down by pair of views,
    each row's counts consistent with the labels and with one another."""
    lab = labels_of("inshop-women")
    cuts = lab.cut.drop_duplicates().iloc[:8]
    sub = lab[lab.cut.isin(cuts)]
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "images").symlink_to(bench_set("inshop-women") / "images")
    sub.to_csv(folder / "labels.csv", index=False)
    out = tmp_path / "out"
    proc = run_cli("bench", str(folder / "labels.csv"), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "recall by views:" in proc.stdout
    data = json.loads((out / "bench.json").read_text())
    by_view = data["recall_by_view"]
    sizes = sub.group.value_counts()
    assert sum(v["pairs"] for v in by_view.values()) == int((sizes * (sizes - 1) // 2).sum())
    for v in by_view.values():
        assert 0 <= v["confident"] + v["to_review"] <= v["candidates"] <= v["pairs"]
        assert v["joined"] <= v["pairs"]
    joined = sum(v["joined"] for v in by_view.values())
    assert joined == data["pairwise"]["tp_pairs"]
    assert sum(v["false_joins"] for v in by_view.values()) == data["pairwise"]["predicted_pairs"] - joined
    assert "Pairwise recall by pair of views" in (out / "bench.md").read_text()


def test_ns_score_counts_group_members_among_four_nearest():
    # two groups of 4 on two orthogonal axes, with small noise: perfect score 4
    rng = np.random.default_rng(0)
    X = np.zeros((8, 3), np.float32)
    X[:4, 0] = 1
    X[4:, 1] = 1
    X += rng.normal(0, 0.01, X.shape).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels = np.array([0] * 4 + [1] * 4)
    assert ns_score(X, labels) == pytest.approx(4.0)
    # scramble labels so each group is split 2/2: each image finds itself + 1 of 3 neighbours
    mixed = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert ns_score(X, mixed) == pytest.approx(2.0)


def test_evaluate_aligns_paths_and_leaves_out_expected_skips():
    groups = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "group": ["g1", "g1", "g2"]})
    labels = pd.DataFrame(
        {
            "path": ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/bad.jpg"],
            "group": ["x", "x", "y", "_corrupt_"],
        }
    )
    m = evaluate(groups, labels)
    assert m["images"] == 3 and m["missing"] == 0 and m["expected_skipped"] == 1
    assert m["pairwise"]["f1"] == 1.0 and m["ari"] == pytest.approx(1.0)


def test_evaluate_command_on_a_real_run(flipkart_run, tmp_path):
    _, out = flipkart_run
    labels = bench_set("products-flipkart") / "labels.csv"
    proc = run_cli("evaluate", str(out / "groups.csv"), str(labels), "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["images"] == 20 and m["missing"] == 0
    # the same numbers as computed in-process
    again = evaluate(pd.read_csv(out / "groups.csv"), pd.read_csv(labels))
    assert m["pairwise"] == again["pairwise"]


def test_bench_command_writes_json_markdown_and_sweep(tmp_path):
    labels = bench_set("products-flipkart") / "labels.csv"
    out = tmp_path / "bench"
    proc = run_cli("bench", str(labels), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "bench.json").read_text())
    for key in (
        "pairwise",
        "bcubed",
        "ari",
        "ns_score",
        "predicted_groups",
        "true_groups",
        "joined_by_stage",
        "sweep",
        "recall_at_1",
        "recall_at_1_fused",
        "calibration_ece",
    ):
        assert key in data
    assert data["true_groups"] == 6 and data["images"] == 20
    assert 0 < data["ns_score"] <= 4
    assert sum(r["default"] for r in data["sweep"]) == 1
    # the loosest confidence level of the sweep joins at least as much as the strictest
    assert data["sweep"][0]["predicted_groups"] <= data["sweep"][-1]["predicted_groups"]
    assert data["sweep"][0]["recall"] >= data["sweep"][-1]["recall"]
    md = (out / "bench.md").read_text()
    assert "pairwise F1" in md and "--min-confidence" in md
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # bench also leaves the run's own report
    assert len(pd.read_csv(out / "groups.csv")) == 20
