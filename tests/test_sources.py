"""What a run reads: a folder, a glob, or a manifest table (dedup.discover.resolve_source)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import bench_set, run_cli

from dedup.discover import resolve_source
from dedup.job import input_folders


def test_a_glob_lists_the_matching_files_under_its_fixed_part():
    images = bench_set("products-flipkart") / "images"
    root, files = resolve_source(str(images / "*.jp*g"))
    assert root == images
    assert files == sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    assert len(files) == 20
    with pytest.raises(FileNotFoundError, match="no file matches"):
        resolve_source(str(images / "*.nothing"))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_manifest_lists_absolute_and_relative_paths(tmp_path, kind):
    images = sorted((bench_set("products-flipkart") / "images").iterdir())
    (tmp_path / "local.jpg").write_bytes(images[0].read_bytes())
    table = pd.DataFrame({"image": [str(p) for p in images[1:4]] + ["local.jpg", f"file://{images[5]}"]})
    manifest = tmp_path / f"m.{kind}"
    table.to_csv(manifest, index=False) if kind == "csv" else table.to_parquet(manifest, index=False)
    root, files = resolve_source(None, manifest, "image")
    assert root == tmp_path.resolve()
    assert files == [*images[1:4], tmp_path.resolve() / "local.jpg", images[5]]
    assert input_folders(root, files) == sorted({images[1].parent, tmp_path.resolve()})


def test_a_manifest_refuses_a_missing_column_and_remote_urls(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"url": ["s3://bucket/a.jpg"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="no column 'path'; its columns: url"):
        resolve_source(None, manifest)
    with pytest.raises(ValueError, match="remote URL"):
        resolve_source(None, manifest, "url")
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        resolve_source(None, tmp_path / "absent.csv")


def test_the_cli_never_writes_beside_a_manifests_images(tmp_path):
    """--out inside a folder that holds a listed image is refused before any work."""
    work = tmp_path / "work"
    work.mkdir()
    image = sorted((bench_set("products-flipkart") / "images").iterdir())[0]
    (work / "a.jpg").write_bytes(image.read_bytes())
    pd.DataFrame({"path": ["work/a.jpg"]}).to_csv(tmp_path / "m.csv", index=False)
    proc = run_cli("run", "--manifest", str(tmp_path / "m.csv"), "--out", str(work / "out"), "--quiet")
    assert proc.returncode != 0 and "lies inside" in proc.stderr
    assert not (work / "out").exists()
    both = run_cli("run", str(work), "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"))
    assert both.returncode != 0 and "either SOURCE" in both.stderr
    assert sorted(p.name for p in work.iterdir()) == ["a.jpg"]
    assert Path(tmp_path / "m.csv").is_file()
