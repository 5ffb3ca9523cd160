"""What a run reads: a folder, a glob, or a manifest table (dedup.discover.resolve_source)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

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


def test_manifest_rows_without_a_path_are_skipped_and_counted(tmp_path, caplog):
    images = sorted((bench_set("products-flipkart") / "images").iterdir())[:2]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"image,sku\n{images[0]},a\n,b\n   ,c\n{images[1]},d\n")
    with caplog.at_level("WARNING", logger="dedup.discover"):
        root, files = resolve_source(None, manifest, "image")
    assert files == images
    assert "2 rows have no image path in column 'image' (first: row 2 of the table)" in caplog.text


def test_a_manifest_refuses_a_missing_column_and_keeps_urls(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"url": ["s3://bucket/a.jpg", "https://shop.example/b.jpg", "c.jpg"]}).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="no column 'path'; its columns: url"):
        resolve_source(None, manifest)
    root, files = resolve_source(None, manifest, "url")
    assert files == ["s3://bucket/a.jpg", "https://shop.example/b.jpg", tmp_path.resolve() / "c.jpg"]
    assert input_folders(root, files) == [tmp_path.resolve()]  # a URL is no folder of this machine
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        resolve_source(None, tmp_path / "absent.csv")


def test_a_manifest_of_urls_runs_like_the_folder(http_images, flipkart_run, tmp_path):
    """`run --manifest` listing products-flipkart as HTTP URLs (plus one that
    answers 404): the folder run's groups, URLs reported as they are, the
    missing one skipped with its reason, the gallery's thumbnails fetched."""
    from urllib.parse import quote

    base, folder, downloads = http_images
    names = sorted(p.name for p in folder.iterdir())
    rows = [f"{base}/{quote(n)}" for n in names] + [f"{base}/absent.jpg"]
    pd.DataFrame({"url": rows}).to_csv(tmp_path / "urls.csv", index=False)
    out = tmp_path / "out"
    links = tmp_path / "links"
    spools = tmp_path / "tmp"
    spools.mkdir()
    downloads.clear()
    proc = run_cli(
        "run", "--manifest", str(tmp_path / "urls.csv"), "--image-col", "url", "--out", str(out), "--quiet",
        "--link-dir", str(links), env={"TMPDIR": str(spools)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each image downloaded once, though hashing, decoding, verification and the gallery all read it
    assert {f"/{quote(n)}" for n in names} <= set(downloads) and max(downloads.values()) == 1
    assert not list(spools.glob("dedup-downloads-*"))  # the download spool is gone with the run
    got = pd.read_csv(out / "groups.csv")
    assert set(got.path) == set(rows[:-1])
    local = pd.read_csv(flipkart_run[1] / "groups.csv")

    def same(paths, groups) -> set:
        """Pairs of file names in one group."""
        named = list(zip((Path(p).name for p in paths), groups))
        return {frozenset((a, b)) for a, ga in named for b, gb in named if a != b and ga == gb}

    assert same(got.path, got.group) == same(local.path, local.group) and same(got.path, got.group)
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped.set_index("path").loc[rows[-1], "reason"].startswith("unreadable")
    listed = sorted(line for f in links.rglob("urls.txt") for line in f.read_text().splitlines())
    assert listed == sorted(got[got.group_size > 1].path)  # a URL cannot be linked: it is listed
    assert not any(p.is_symlink() for p in links.rglob("*"))
    gallery = (out / "gallery.html").read_text()
    assert gallery.count("data:image/jpeg;base64,") >= len(got[got.group_size > 1])


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


def test_a_download_spool_fetches_each_url_once_and_is_removed(http_images):
    """Within download_spool a URL is fetched once and its bytes read back
    from the spool (a nested spool shares it); outside one, every read
    fetches; the spool's folder is removed on exit, and a 404 stays an OSError."""
    from dedup.discover import download_spool, read_source

    base, folder, downloads = http_images
    name = sorted(p.name for p in folder.iterdir())[3]
    url = f"{base}/{quote(name)}"
    want = (folder / name).read_bytes()
    downloads.clear()
    with download_spool() as spool:
        assert read_source(url) == want
        with download_spool() as inner:
            assert inner == spool and read_source(url) == want
        assert [p.read_bytes() for p in spool.iterdir()] == [want]  # one complete file, no partial one
        with pytest.raises(OSError):
            read_source(f"{base}/absent.jpg")
    assert downloads[f"/{quote(name)}"] == 1
    assert not spool.exists()
    assert read_source(url) == want and downloads[f"/{quote(name)}"] == 2
