"""Semantic clusters (--similarity semantic): what an image shows, through
ImageNet classes related by WordNet."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
from conftest import bench_set, run_cli

from dedup.backbones.semantic import ancestor_matrix, load_hierarchy


def _node(hierarchy: dict, synset: str) -> int:
    return next(i for i, n in enumerate(hierarchy["nodes"]) if n["synset"] == synset)


def _class(hierarchy: dict, name: str) -> int:
    return next(i for i, c in enumerate(hierarchy["classes"]) if c["name"] == name)


def test_the_hierarchy_relates_imagenet_classes_through_wordnet():
    h = load_hierarchy()
    assert len(h["classes"]) == 1000 and len(h["ancestors"]) == 1000
    clothing, entity = _node(h, "clothing.n.01"), _node(h, "entity.n.01")
    skirt, gown, fridge = _class(h, "miniskirt"), _class(h, "gown"), _class(h, "refrigerator")
    assert clothing in h["ancestors"][skirt] and clothing in h["ancestors"][gown]
    assert clothing not in h["ancestors"][fridge]
    assert h["nodes"][entity]["leaves"] == 1000 and h["nodes"][entity]["ic"] == 0.0
    H = ancestor_matrix(h)
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    # two garments share specific ancestors; a garment and a refrigerator only generic ones
    assert H[skirt] @ H[gown] > 1.5 * (H[skirt] @ H[fridge])


def test_semantic_clusters_put_garments_apart_from_household_objects(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    shop = bench_set("inshop-women")
    labels = pd.read_csv(shop / "labels.csv")
    garments = labels.groupby("category").head(2)  # two photos of each of the three categories
    for p in garments.path:
        shutil.copy(shop / p, pics / f"garment_{p.split('/')[-1]}")
    for i in (0, 1, 200, 201, 300, 302):  # a wallet, a sliding door, a refrigerator: two photos each
        shutil.copy(bench_set("ukbench-dev") / "images" / f"ukbench{i:05d}.jpg", pics / f"object_{i:05d}.jpg")
    out = tmp_path / "out"
    args = ["run", str(pics), "--out", str(out), "--quiet", "--no-cache", "--similarity", "semantic"]
    proc = run_cli(*args, "--method", "kmeans", "--k", "2")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "run.json").read_text())
    assert [b["name"] for b in meta["backbones"]] == ["semantic-lite0"]
    g = pd.read_csv(out / "groups.csv")
    kind = g.path.str.split("_").str[0]
    assert g.groupby("group").apply(lambda d: kind[d.index].nunique()).max() == 1  # no cluster mixes kinds
    assert g.group.nunique() == 2
    q = run_cli("query", str(pics / g.path[kind == "garment"].iloc[0]), "--index", str(out), "-n", "4")
    assert q.returncode == 0, q.stderr
    assert "semantic similarity" in q.stdout
    hits = [line.split()[2] for line in q.stdout.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert len(hits) == 4 and all(h.startswith("garment_") for h in hits)


def test_semantic_similarity_asks_for_a_clustering_method(tmp_path):
    proc = run_cli(
        "run", str(bench_set("ukbench-dev") / "images"), "--out", str(tmp_path / "o"), "--similarity", "semantic"
    )
    assert proc.returncode != 0 and "--method hierarchical or kmeans" in proc.stderr
    assert not (tmp_path / "o").exists()
