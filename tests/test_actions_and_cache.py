"""Opt-in, reversible moves; the cache: reuse, resume after SIGKILL, changed
files, corrupt cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pandas as pd
import pytest
from conftest import ROOT, bench_set, checksums, run_cli
from PIL import Image

from dedup.cache import Cache


def _catalogue(tmp_path):
    d = tmp_path / "pics"
    shutil.copytree(bench_set("products-flipkart") / "images", d)
    src = d / "free-sari-5-mithark-original-imafm5hgeyeehvtu.jpeg"
    Image.open(src).resize((200, 260)).save(d / "sari-small.jpg")  # a smaller copy: must not be kept
    shutil.copy(src, d / "sari-exact-copy.jpeg")
    return d


def test_move_duplicates_keeps_the_largest_and_undo_restores_everything(tmp_path):
    d = _catalogue(tmp_path)
    before = checksums(d)
    quarantine, out = tmp_path / "quarantine", tmp_path / "out"
    proc = run_cli("run", str(d), "--out", str(out), "--quiet", "--move-duplicates", str(quarantine))
    assert proc.returncode == 0, proc.stderr
    groups = pd.read_csv(out / "groups.csv")
    moved = pd.read_csv(out / "moved.csv")
    # one image per group stays, the rest moved, nothing lost
    remaining = checksums(d)
    assert len(remaining) == groups.group.nunique()
    assert set(remaining) | set(moved.path) == set(before)
    assert "sari-small.jpg" in set(moved.path)
    assert checksums(quarantine).keys() >= set(moved.path)
    for p in moved.path:
        assert checksums(quarantine)[p] == before[p]
    manifest = quarantine / "moved-manifest.jsonl"
    undo = run_cli("undo", str(manifest))
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert checksums(d) == before
    # undo twice is harmless
    assert run_cli("undo", str(manifest)).returncode == 0
    assert checksums(d) == before


def test_files_reached_through_a_link_to_another_folder_are_never_moved(tmp_path):
    d = _catalogue(tmp_path)
    # another folder the user did not point at, holding byte copies of two
    # catalogue photos and a photo of its own, linked into the catalogue
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photos = sorted(p for p in d.iterdir() if p.name.startswith("m-rs19stkt"))[:2]
    for p in photos:
        shutil.copy(p, elsewhere / p.name)
    shutil.copy(bench_set("ukbench-dev") / "images" / "ukbench00000.jpg", elsewhere / "own.jpg")
    (d / "linked").symlink_to(elsewhere, target_is_directory=True)
    theirs, before = checksums(elsewhere), checksums(d)
    quarantine, out = tmp_path / "quarantine", tmp_path / "out"
    proc = run_cli("run", str(d), "--out", str(out), "--quiet", "--move-duplicates", str(quarantine))
    assert proc.returncode == 0, proc.stderr
    moved = pd.read_csv(out / "moved.csv", keep_default_na=False).set_index("path")
    # the linked folder is read, and its copies are refused, not moved
    for p in photos:
        assert moved.status[f"linked/{p.name}"].startswith("refused: in a folder outside the input folder")
        assert f"linked/{p.name}" not in checksums(quarantine)
    assert checksums(elsewhere) == theirs
    # the group keeps a photo of the catalogue itself, and the catalogue's other duplicates still move
    kept = set(moved.kept[[f"linked/{p.name}" for p in photos]])
    assert len(kept) == 1 and not kept.pop().startswith("linked/")
    assert (moved.status[~moved.index.str.startswith("linked/")] == "moved").all()
    assert run_cli("undo", str(quarantine / "moved-manifest.jsonl")).returncode == 0
    assert checksums(d) == before and checksums(elsewhere) == theirs


def test_move_target_inside_the_input_folder_is_refused(tmp_path):
    d = _catalogue(tmp_path)
    before = checksums(d)
    proc = run_cli("run", str(d), "--out", str(tmp_path / "out"), "--move-duplicates", str(d / "dupes"))
    assert proc.returncode == 1 and "inside" in proc.stderr
    assert checksums(d) == before


def test_changed_file_is_recomputed_and_unchanged_ones_reused(tmp_path):
    d = tmp_path / "pics"
    shutil.copytree(bench_set("products-flipkart") / "images", d)
    out = tmp_path / "out"
    assert run_cli("run", str(d), "--out", str(out), "--quiet").returncode == 0
    victim = sorted(d.iterdir())[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(victim, format="JPEG")
    assert run_cli("run", str(d), "--out", str(out), "--quiet").returncode == 0
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["embedded"] == 1 and counts["from_cache"] == 19


def test_corrupt_cache_is_moved_aside_and_rebuilt(tmp_path):
    d = bench_set("products-flipkart") / "images"
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "out"
    assert run_cli("run", str(d), "--out", str(out), "--quiet", "--cache", str(cache)).returncode == 0
    data = bytearray(cache.read_bytes())  # a real cache whose pages are damaged behind a valid header
    data[4096:] = bytes((b * 7 + 13) % 256 for b in range(len(data) - 4096))
    cache.write_bytes(bytes(data))
    proc = run_cli("run", str(d), "--out", str(out), "--quiet", "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["cache"]["rebuilt_from_corrupt"]
    assert meta["counts"]["embedded"] == 20
    assert list(tmp_path.glob("cache.sqlite.corrupt-*"))
    with Cache(cache) as c:  # the rebuilt cache is healthy and holds the run
        assert c.rebuilt_from is None


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_from_the_cache(tmp_path):
    images = bench_set("ukbench-dev") / "images"
    out = tmp_path / "out"
    cache = tmp_path / "cache.sqlite"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dedup",
            "run",
            str(images),
            "--out",
            str(out),
            "--quiet",
            "--cache",
            str(cache),
            "--batch-size",
            "16",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stored = 0
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            # read-only, beside the running job (Cache would be refused: the run holds the cache's lock)
            with closing(sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=5)) as c:
                stored = c.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        except Exception:
            stored = 0
        if stored >= 64:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert 64 <= stored < 600, "the run should have been killed part-way"
    done = run_cli("run", str(images), "--out", str(out), "--quiet", "--cache", str(cache))
    assert done.returncode == 0, done.stderr
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["from_cache"] >= stored and counts["embedded"] == 600 - counts["from_cache"]
    assert len(pd.read_csv(out / "groups.csv")) == 600
