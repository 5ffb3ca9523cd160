"""Bad and odd input: a reason, never a crash; odd modes converted correctly.
Every test image is made here from real photos of ../shared/bench."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import bench_set, checksums, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dedup.decode import DecodeError, load_image
from dedup.discover import discover, sniff_format

PHOTO = bench_set("ukbench-dev") / "images" / "ukbench00004.jpg"


@pytest.fixture()
def photo():
    return Image.open(PHOTO).convert("RGB")


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif.tobytes())
    dec = load_image(path)
    assert dec.image.size == (photo.height, photo.width)
    assert (dec.width, dec.height) == (photo.height, photo.width)
    upright = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), np.float32)
    assert np.abs(np.asarray(dec.image, np.float32) - upright).mean() < 8  # JPEG noise only


def test_alpha_is_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:40, :40, 3] = 0  # a transparent corner
    path = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(path)
    img = np.asarray(load_image(path).image)
    assert img.shape[2] == 3
    assert (img[:40, :40] == 255).all()
    assert np.abs(img[100:, 100:].astype(int) - np.asarray(photo)[100:, 100:]).max() == 0
    la = tmp_path / "la.png"
    Image.fromarray(a, "RGBA").convert("LA").save(la)
    assert (np.asarray(load_image(la).image)[:40, :40] == 255).all()


def test_palette_with_transparency_cmyk_and_16_bit(tmp_path, photo):
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert load_image(tmp_path / "pal.png").image.mode == "RGB"

    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    dec = load_image(tmp_path / "cmyk.jpg")
    assert dec.mode == "CMYK" and dec.image.mode == "RGB"
    assert np.abs(np.asarray(dec.image, np.float32) - np.asarray(photo, np.float32)).mean() < 20

    grey = np.asarray(photo.convert("L"), np.uint16) * 257
    deep = Image.fromarray(grey)
    assert deep.mode.startswith("I;16")
    deep.save(tmp_path / "deep.png")
    dec = load_image(tmp_path / "deep.png")
    assert dec.mode.startswith("I")
    assert dec.image.mode == "RGB"
    out = np.asarray(dec.image)[..., 0].astype(int)
    assert np.abs(out - np.asarray(photo.convert("L"), int)).max() <= 1


def test_animated_gif_and_multipage_tiff_use_the_first_frame(tmp_path, photo):
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.convert("L").convert("RGB")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    dec = load_image(tmp_path / "anim.gif")
    assert dec.frames == 3 and "first of 3 frames" in dec.note
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    dec = load_image(tmp_path / "pages.tiff")
    assert dec.frames == 3
    assert np.abs(np.asarray(dec.image, int) - np.asarray(photo, int)).max() == 0


def test_bad_files_give_specific_reasons(tmp_path, photo):
    data = PHOTO.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is a text file, not a JPEG\n")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(DecodeError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(DecodeError, match="truncated"):
        load_image(tmp_path / "truncated.jpg")
    with pytest.raises(DecodeError, match="decompression bomb"):
        load_image(PHOTO, max_pixels=1000)
    with pytest.raises(DecodeError, match="not found"):
        load_image(tmp_path / "missing.jpg")


def test_a_jpeg_named_svg_is_found_by_content(tmp_path):
    shutil.copy(PHOTO, tmp_path / "picture.svg")
    (tmp_path / "notes.jpg").write_text("not an image")
    images, skipped = discover(tmp_path)
    assert [p.name for p in images] == ["picture.svg"]
    assert [s.path.name for s in skipped] == ["notes.jpg"]
    assert sniff_format(PHOTO.read_bytes()[:32]) == "JPEG"


def test_the_threaded_walk_gives_what_one_thread_gives(tmp_path):
    d = tmp_path / "pics"
    shutil.copytree(bench_set("robustness") / "images", d)
    (d / "sub" / ".cache").mkdir(parents=True)
    (d / "sub" / "notes.txt").write_text("not an image")
    os.symlink(d, d / "sub" / "loop")
    one, many = discover(d, workers=1), discover(d, workers=8)
    assert one == many and len(one[0]) >= 25
    assert {s.reason for s in one[1]} >= {"folder already visited (symlink loop or duplicate link)"}


def test_messy_folder_runs_and_reports_every_bad_file(tmp_path, photo):
    d = tmp_path / "messy"
    (d / "nested" / "deeper").mkdir(parents=True)
    shutil.copy(PHOTO, d / "good.jpg")
    photo.convert("CMYK").save(d / "nested" / "cmyk.jpg")
    photo.save(d / "nested" / "deeper" / "copy.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "readme.txt").write_text("catalogue notes")
    (d / "truncated.jpg").write_bytes(PHOTO.read_bytes()[:5000])
    (d / ".hidden.jpg").write_bytes(PHOTO.read_bytes())
    os.symlink(d, d / "nested" / "loop")  # a folder symlink loop
    odd = "caf\u00e9 \u2014 #1 (copy).jpg"
    shutil.copy(PHOTO, d / odd)
    before = checksums(d)
    out = tmp_path / "out"
    proc = run_cli("run", str(d), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    groups = pd.read_csv(out / "groups.csv")
    skipped = pd.read_csv(out / "skipped.csv").set_index("path").reason
    assert sorted(groups.path) == sorted(["good.jpg", "nested/cmyk.jpg", "nested/deeper/copy.png", odd])
    assert "empty" in skipped["empty.jpg"]
    assert "not an image" in skipped["readme.txt"]
    assert "truncated" in skipped["truncated.jpg"]
    assert "hidden" in skipped[".hidden.jpg"]
    assert any("symlink loop" in r for r in skipped)
    # the byte-identical copy under an odd name joins the original
    g = groups.set_index("path").group
    assert g[odd] == g["good.jpg"] == g["nested/deeper/copy.png"]
    assert checksums(d) == before


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=2048),
    st.sampled_from(
        [
            b"",
            b"\xff\xd8\xff\xe0",
            b"\x89PNG\r\n\x1a\n",
            b"GIF89a",
            b"BM",
            b"II*\x00",
            b"RIFF\x00\x00\x00\x00WEBP",
            b"P6\n",
        ]
    ),
)
def test_decode_returns_an_image_or_a_reason_for_any_bytes(tmp_path_factory, body, magic):
    path = tmp_path_factory.mktemp("fuzz") / "x.bin"
    path.write_bytes(magic + body)
    try:
        dec = load_image(path)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert dec.image.mode == "RGB" and dec.image.width > 0


def test_fuzzed_real_jpeg_prefixes_never_raise_anything_else(tmp_path):
    data = PHOTO.read_bytes()
    rng = np.random.default_rng(1)
    for k in range(40):
        cut = bytearray(data[: int(rng.integers(10, len(data)))])
        for _ in range(int(rng.integers(0, 20))):
            cut[int(rng.integers(0, len(cut)))] = int(rng.integers(0, 256))
        p = tmp_path / f"f{k}.jpg"
        p.write_bytes(bytes(cut))
        try:
            load_image(p)
        except DecodeError:
            pass


def test_heic_is_read_through_pillow_heif(tmp_path, photo):
    pytest.importorskip("pillow_heif")  # a declared dependency; present after `pip install -e .`
    photo.save(tmp_path / "phone.heic")
    assert sniff_format((tmp_path / "phone.heic").read_bytes()[:32]) == "HEIF"
    dec = load_image(tmp_path / "phone.heic")
    assert dec.format == "HEIF" and dec.image.size == photo.size
    assert np.abs(np.asarray(dec.image, np.float32) - np.asarray(photo, np.float32)).mean() < 10


def test_non_utf8_file_name_is_read_and_reported(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-latin1.jpg"  # not valid UTF-8
    with open(raw, "wb") as fh:
        fh.write(PHOTO.read_bytes())
    out = tmp_path.parent / (tmp_path.name + "-out")
    proc = run_cli("run", str(tmp_path), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    groups = pd.read_csv(out / "groups.csv")
    assert len(groups) == 1 and "caf" in groups.path[0]
