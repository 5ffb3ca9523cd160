"""The main job end to end: `python -m dedup run DIR` on real catalogue photos."""

from __future__ import annotations

import json
import shutil

import pandas as pd
from conftest import bench_set, checksums, labels_of, run_cli
from PIL import Image


def _label_map(name):
    lab = labels_of(name)
    return dict(zip(lab.path.str.replace("images/", "", regex=False), lab.group))


def test_flipkart_run_writes_every_image_once_and_keeps_products_apart(flipkart_run):
    proc, out = flipkart_run
    assert proc.returncode == 0, proc.stderr
    groups = pd.read_csv(out / "groups.csv")
    assert list(groups.columns[:2]) == ["path", "group"]
    truth = _label_map("products-flipkart")
    # every readable input exactly once, paths relative to DIR
    assert sorted(groups.path) == sorted(truth)
    assert groups.path.is_unique
    # different products are never in one group
    for gid, members in groups.groupby("group"):
        assert len({truth[p] for p in members.path}) == 1, f"group {gid} mixes products: {list(members.path)}"
    # and the photos of most products are found together
    joined = groups[groups.group_size > 1]
    assert joined.path.map(truth).nunique() >= 5
    assert pd.read_csv(out / "skipped.csv").empty


def test_run_json_reports_backbones_weights_counts_and_times(flipkart_run):
    proc, out = flipkart_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["backbones"], "run.json must name the backbones used"
    for b in meta["backbones"]:
        assert b["weights_id"] and b["weights_source"]
        assert (out / f"index-{b['name']}.ann").is_file()
    assert meta["counts"]["images"] == 20
    assert set(meta["seconds"]) >= {"discover", "decode_embed", "hash_pass", "index", "group", "total"}
    # the summary on stdout says which backbones and weights were used
    assert meta["backbones"][0]["name"] in proc.stdout
    assert "groups:" in proc.stdout


def test_robustness_set_skips_only_the_corrupt_file(robustness_run):
    proc, out = robustness_run
    assert proc.returncode == 0, proc.stderr
    groups = pd.read_csv(out / "groups.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    truth = _label_map("robustness")
    corrupt = {p for p, g in truth.items() if g == "_corrupt_"}
    assert set(skipped.path) == corrupt
    assert all(isinstance(r, str) and r for r in skipped.reason)
    assert sorted(groups.path) == sorted(set(truth) - corrupt)
    # the same photo saved as .jpeg/.png/.bmp/.webp and as a JPEG named .svg is one group
    fmt = groups[groups.path.str.startswith("ukbench09380")]
    assert len(fmt) == 6 and fmt.group.nunique() == 1


def test_exact_copies_grouped_and_distinct_objects_apart(tmp_path):
    src = bench_set("ukbench-dev") / "images"
    d = tmp_path / "pics"
    (d / "sub").mkdir(parents=True)
    originals = ["ukbench00000.jpg", "ukbench00100.jpg", "ukbench00200.jpg", "ukbench00300.jpg"]
    for name in originals:
        shutil.copy(src / name, d / name)
    shutil.copy(src / "ukbench00100.jpg", d / "sub" / "copy-of-100.jpg")  # byte-identical
    im = Image.open(src / "ukbench00200.jpg")
    im.resize((160, 120)).save(d / "sub" / "small-200.png")  # resized, re-encoded
    im.save(d / "sub" / "recompressed-200.jpg", quality=60)  # recompressed
    out = tmp_path / "out"
    proc = run_cli("run", str(d), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    g = pd.read_csv(out / "groups.csv").set_index("path")
    assert g.loc["sub/copy-of-100.jpg", "group"] == g.loc["ukbench00100.jpg", "group"]
    assert g.loc["sub/copy-of-100.jpg", "stage"] == "sha256"
    assert g.loc["sub/small-200.png", "group"] == g.loc["ukbench00200.jpg", "group"]
    assert g.loc["sub/recompressed-200.jpg", "group"] == g.loc["ukbench00200.jpg", "group"]
    assert {g.loc["sub/small-200.png", "stage"], g.loc["sub/recompressed-200.jpg", "stage"]} <= {"phash", "sha256"}
    # four different objects stay in four different groups
    assert g.loc[originals, "group"].nunique() == 4


def test_run_never_writes_inside_the_input_folder(tmp_path):
    d = tmp_path / "pics"
    shutil.copytree(bench_set("products-flipkart") / "images", d)
    before = checksums(d)
    proc = run_cli("run", str(d), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert checksums(d) == before
    # an output folder inside DIR is refused with a one-line reason
    proc = run_cli("run", str(d), "--out", str(d / "dedup-out"), "--quiet")
    assert proc.returncode == 1
    assert "inside" in proc.stderr and not (d / "dedup-out").exists()
    assert checksums(d) == before


def test_missing_folder_is_a_one_line_error(tmp_path):
    proc = run_cli("run", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "not a folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_second_run_reuses_the_cache(tmp_path):
    d = bench_set("products-flipkart") / "images"
    out = tmp_path / "out"
    first = run_cli("run", str(d), "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    groups1 = pd.read_csv(out / "groups.csv")
    second = run_cli("run", str(d), "--out", str(out), "--quiet")
    assert second.returncode == 0, second.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["counts"]["embedded"] == 0 and meta["counts"]["from_cache"] == 20
    pd.testing.assert_frame_equal(groups1, pd.read_csv(out / "groups.csv"))


def test_decoding_in_spawned_processes_gives_the_same_result(robustness_run, tmp_path):
    _, threads_out = robustness_run
    out = tmp_path / "out"
    proc = run_cli("run", str(bench_set("robustness") / "images"), "--out", str(out), "--quiet", "--processes", "2")
    assert proc.returncode == 0, proc.stderr
    a = pd.read_csv(threads_out / "groups.csv")
    b = pd.read_csv(out / "groups.csv")
    assert list(a.path) == list(b.path) and list(a.group) == list(b.group)
    pd.testing.assert_frame_equal(pd.read_csv(threads_out / "skipped.csv"), pd.read_csv(out / "skipped.csv"))
