"""Views on ukbench-dev: hierarchical clustering with a similarity cut,
k-means, PCA, time, symlink folders, the HTML gallery (in headless
Chromium when installed) and the 2-D map."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from conftest import bench_set, run_cli
from PIL import Image

from dedup import views
from dedup.decode import capture_times
from dedup.evaluate import evaluate

UKB = bench_set("ukbench-dev")


@pytest.fixture(scope="module")
def hier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    out, links = tmp / "out", tmp / "links"
    proc = run_cli(
        "run",
        str(UKB / "images"),
        "--out",
        str(out),
        "--quiet",
        "--method",
        "hierarchical",
        "--sim",
        "0.7",
        "--min-size",
        "2",
        "--map",
        "--link-dir",
        str(links),
    )
    assert proc.returncode == 0, proc.stderr
    return out, links


@pytest.mark.slow
def test_hierarchical_cut_groups_the_objects(hier_run):
    out, _ = hier_run
    g = pd.read_csv(out / "groups.csv")
    assert len(g) == 600 and g.path.is_unique
    assert set(g.stage) <= {"hierarchical", "below-min-size"}
    assert (g[g.stage == "below-min-size"].group_size == 1).all()
    m = evaluate(g, pd.read_csv(UKB / "labels.csv"))
    assert m["pairwise"]["precision"] > 0.9 and m["pairwise"]["recall"] > 0.5
    assert (out / "dendrogram.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_map_png_is_a_real_picture(hier_run):
    out, _ = hier_run
    im = Image.open(out / "map.png")
    assert im.size[0] >= 500 and im.size[1] >= 500
    colours = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 20  # many group colours, not a blank canvas


@pytest.mark.slow
def test_link_dir_holds_symlinks_to_the_originals(hier_run):
    out, links = hier_run
    g = pd.read_csv(out / "groups.csv")
    multi = g[g.group_size > 1]
    found = [p for p in links.rglob("*") if p.is_symlink()]
    assert len(found) == len(multi)
    for link in found:
        n = int(link.parent.parent.name.removeprefix("cluster_with_"))
        assert len(list(link.parent.iterdir())) == n
        assert link.resolve().parent == (UKB / "images").resolve()
        assert link.resolve().read_bytes()[:3] == b"\xff\xd8\xff"


@pytest.mark.slow
def test_sim_endpoints_kmeans_and_pca(hier_run):
    out, _ = hier_run
    X = np.load(out / "embeddings-efficientnet-lite0.npy")
    one, _ = views.cluster(X, "hierarchical", sim=0.0)
    assert len(set(one)) == 1
    alone, _ = views.cluster(X, "hierarchical", sim=1.0)
    assert len(set(alone)) == len(X)
    looser, _ = views.cluster(X, "hierarchical", sim=0.5)
    tighter, _ = views.cluster(X, "hierarchical", sim=0.8)
    assert len(set(looser)) < len(set(tighter))
    km, _ = views.cluster(X, "kmeans", k=150)
    assert len(set(km)) == 150
    km_pca, _ = views.cluster(X, "kmeans", k=150, pca=32)
    truth = pd.read_csv(UKB / "labels.csv").group.to_numpy()
    idx = np.arange(len(X)).astype(str)
    for labels in (km, km_pca):
        m = evaluate(pd.DataFrame({"path": idx, "group": labels}), pd.DataFrame({"path": idx, "group": truth}))
        assert m["ari"] > 0.5


def test_time_weight_separates_the_same_scene_shot_days_apart(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    src = UKB / "images"
    for i in range(4):  # one object, 4 views: two "shot" today, two a week later (EXIF stripped)
        Image.open(src / f"ukbench{i:05d}.jpg").save(d / f"view{i}.jpg", quality=95)
    now = time.time()
    for i, t in enumerate([now, now + 60, now + 7 * 86400, now + 7 * 86400 + 60]):
        os.utime(d / f"view{i}.jpg", (t, t))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2020:01:02 03:04:05"
    Image.open(src / "ukbench00004.jpg").save(d / "with-exif.jpg", exif=exif.tobytes())
    times = capture_times([d / "view0.jpg", d / "with-exif.jpg"])
    assert abs(times[0] - now) < 2
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(times[1])) == "2020-01-02 03:04:05"
    (d / "with-exif.jpg").unlink()
    without = run_cli(
        "run", str(d), "--out", str(tmp_path / "a"), "--quiet", "--method", "hierarchical", "--sim", "0.5"
    )
    with_time = run_cli(
        "run",
        str(d),
        "--out",
        str(tmp_path / "b"),
        "--quiet",
        "--method",
        "hierarchical",
        "--sim",
        "0.5",
        "--time-weight",
        "2",
    )
    assert without.returncode == 0 and with_time.returncode == 0, without.stderr + with_time.stderr
    a = pd.read_csv(tmp_path / "a" / "groups.csv").set_index("path").group
    b = pd.read_csv(tmp_path / "b" / "groups.csv").set_index("path").group
    assert a.nunique() == 1
    assert b["view0.jpg"] == b["view1.jpg"] and b["view2.jpg"] == b["view3.jpg"]
    assert b["view0.jpg"] != b["view2.jpg"]


@pytest.mark.slow
def test_gallery_lists_every_group_and_renders_in_chromium(hier_run, tmp_path):
    out, _ = hier_run
    g = pd.read_csv(out / "groups.csv")
    n_groups = g[g.group_size > 1].group.nunique()
    page = (out / "gallery.html").read_text()
    assert len(re.findall(r"<section class='group'", page)) == n_groups
    assert f"{(g.group_size == 1).sum()} singletons" in page
    assert "src='http" not in page and "data:image/jpeg;base64," in page  # self-contained
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it); the static checks above ran")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", (out / "gallery.html").as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('<section class="group"') == n_groups
    shot = tmp_path / "gallery.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", (out / "gallery.html").as_uri()],
        capture_output=True,
        timeout=120,
    )
    im = Image.open(shot).convert("RGB")
    assert im.size == (1200, 900)
    assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 50  # thumbnails were drawn


def test_gallery_pages_hold_every_group_once_and_link_each_other(flipkart_run, tmp_path):
    from dedup.report import write_gallery

    _, out = flipkart_run
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False)
    groups["confidence"] = pd.to_numeric(groups.confidence)
    multi = sorted(groups[groups.group_size > 1].group.unique())
    (tmp_path / "gallery-9.html").write_text("a page of an earlier, larger run")
    first = write_gallery(groups, bench_set("products-flipkart") / "images", tmp_path / "gallery.html", page_groups=2)
    pages = sorted(tmp_path.glob("gallery*.html"))
    assert first == tmp_path / "gallery.html" and len(pages) == -(-len(multi) // 2) >= 2
    seen = []
    for page in pages:
        text = page.read_text()
        seen += re.findall(r"<section class='group' id='([^']+)'", text)
        assert all(f"href='{p.name}'" in text for p in pages if p != page)  # links to every other page
    assert sorted(seen) == multi  # every group exactly once
    assert "singletons" in pages[0].read_text()


def test_a_huge_group_shows_some_thumbnails_and_lists_the_rest(flipkart_run, tmp_path, monkeypatch):
    """A placeholder photo under thousands of SKUs is one huge group: its
    section shows the first MAX_GROUP_THUMBS thumbnails and names the others,
    so that a page stays small (here with a limit of 2 on real groups)."""
    import dedup.report.gallery as gallery
    from dedup.report import write_gallery

    monkeypatch.setattr(gallery, "MAX_GROUP_THUMBS", 2)
    _, out = flipkart_run
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False)
    groups["confidence"] = pd.to_numeric(groups.confidence)
    write_gallery(groups, bench_set("products-flipkart") / "images", tmp_path / "gallery.html")
    text = (tmp_path / "gallery.html").read_text()
    sizes = groups[groups.group_size > 1].groupby("group").size()
    assert sizes.max() > 2
    for gid, n in sizes.items():
        section = text.split(f"<section class='group' id='{gid}'>")[1].split("</section>")[0]
        assert section.count("<figure>") == min(n, 2)
        named = re.findall(r"<li>([^<]+)</li>", section)
        assert len(named) == n - min(n, 2)
        assert set(named) | set(re.findall(r"alt='([^']+)'", section)) == set(groups.path[groups.group == gid])


def test_map_of_a_large_run_is_drawn_from_a_reproducible_subsample(flipkart_run, tmp_path):
    from dedup.report import plot_map

    _, out = flipkart_run
    X = np.load(out / "embeddings-efficientnet-lite0.npy")
    labels = pd.read_csv(out / "groups.csv").group.to_numpy()
    a = plot_map(X, labels, tmp_path / "a.png", max_points=12)
    b = plot_map(X, labels, tmp_path / "b.png", max_points=12)
    full = plot_map(X, labels, tmp_path / "full.png")
    assert Image.open(a).size[0] >= 500
    assert a.read_bytes() == b.read_bytes()  # the same subsample every time
    assert a.read_bytes() != full.read_bytes()


def test_review_section_says_which_pairs_were_not_verified(flipkart_run, tmp_path):
    """A doubtful pair shows its inlier count, or "not verified" (inliers -1:
    the verification screen skipped it), never a count of -1."""
    from dedup.report import write_gallery

    _, out = flipkart_run
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False)
    groups["confidence"] = pd.to_numeric(groups.confidence)
    paths = groups.path.tolist()
    review = pd.DataFrame(
        {
            "path_a": paths[:2],
            "path_b": paths[2:4],
            "confidence": [0.7, 0.6],
            "inliers": [-1, 37],
            "colour_distance": [0.1, 0.2],
            "layout_max": [0.2, 0.3],
        }
    )
    write_gallery(groups, bench_set("products-flipkart") / "images", tmp_path / "gallery.html", review=review)
    section = (tmp_path / "gallery.html").read_text().split("<section id='review'>")[1]
    assert section.count("not verified") == 1 and "inliers 37" in section and "inliers -1" not in section
