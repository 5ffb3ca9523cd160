"""The optimised inference runtime: same embeddings as the reference, never mixed in the cache."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import bench_set, run_cli
from PIL import Image

from dedup.backbones import EfficientNetLite0, make_backbone
from dedup.backbones.runtime import (
    MIN_AGREEMENT,
    MODEL_CACHE_ENV,
    agreement,
    checked,
    onnxruntime_session,
    read_verified,
)
from dedup.pipeline import Deduplicator

UKB = bench_set("ukbench-dev") / "images"


@pytest.fixture(scope="module")
def photos():
    """24 real photos: 6 objects x 4 views."""
    return [Image.open(UKB / f"ukbench{i:05d}.jpg").convert("RGB") for i in range(24)]


def test_onnxruntime_embeddings_agree_with_eager_pytorch(photos):
    ort = make_backbone("efficientnet-lite0")  # auto: ONNX Runtime is installed with dedup
    ort.load()
    assert ort.runtime_used == "onnxruntime"
    native = EfficientNetLite0(runtime="native")
    native.load()
    batch = np.stack([native.prepare(im) for im in photos])
    got = ort.embed(batch)
    x = torch.from_numpy(np.ascontiguousarray(native.network_input(batch)))
    want = native._eager(x)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    cos = (got * want).sum(axis=1)
    assert cos.shape == (24,) and cos.min() >= 0.99, cos.min()
    # and the same neighbours: each photo's nearest other photo is the same under both
    np.fill_diagonal(sim_got := got @ got.T, -1)
    np.fill_diagonal(sim_want := want @ want.T, -1)
    assert (sim_got.argmax(axis=1) == sim_want.argmax(axis=1)).all()


def test_a_batch_split_over_single_thread_runs_gives_each_photo_its_own_embedding(photos):
    net = make_backbone("efficientnet-lite0")
    net.load()
    model = read_verified(net._onnx_path())
    assert model is not None
    x = net.network_input(np.stack([net.prepare(im) for im in photos[:11]]))
    one = onnxruntime_session(model, threads=1)(x)  # the whole batch in one run
    for threads in (2, 3, 16):  # uneven parts, and more runs than photos
        split = onnxruntime_session(model, threads=threads)
        np.testing.assert_allclose(split(x), one, rtol=1e-5, atol=1e-6)
        # each photo's row is the same alone, and in another order
        np.testing.assert_allclose(split(x[:1]), one[:1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(split(x[::-1]), one[::-1], rtol=1e-5, atol=1e-6)
    assert split(x[:0]).shape == (0, one.shape[1])


def test_a_runtime_that_fails_or_disagrees_falls_back_to_native(photos, caplog):
    native = EfficientNetLite0(runtime="native")
    native.load()
    probe = np.stack([native.prepare(im) for im in photos[:4]])

    def broken():
        raise RuntimeError("no such provider")

    with caplog.at_level(logging.WARNING):
        compiled, used = checked("efficientnet-lite0", "onnxruntime", broken, native._forward, probe)
    assert compiled is None and used == "native" and "no such provider" in caplog.text
    # a runtime whose output is a different network's (here: rows shuffled) is refused
    shuffled = lambda x: native._forward(x)[::-1]  # noqa: E731
    assert agreement(native._forward(probe), shuffled(probe)) < MIN_AGREEMENT
    compiled, used = checked("efficientnet-lite0", "openvino", lambda: shuffled, native._forward, probe)
    assert compiled is None and used == "native"


def test_unknown_or_missing_runtimes_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        make_backbone("efficientnet-lite0", runtime="tensorrt")
    with pytest.raises(ValueError, match="does not run on onnxruntime; it runs on: native"):
        make_backbone("style-lite0", runtime="onnxruntime")  # its Gram statistics are PyTorch only
    assert make_backbone("style-lite0").plan_runtime() == "native"  # so auto keys its cache as native
    with pytest.raises(ValueError, match="runtime must be one of"):
        Deduplicator(runtime="tensorrt").validate()
    proc = run_cli("run", str(UKB), "--out", str(tmp_path / "out"), "--runtime", "tensorrt")
    assert proc.returncode == 2 and "--runtime" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_embeddings_of_two_runtimes_are_never_mixed_in_the_cache(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(8):
        shutil.copy(UKB / f"ukbench{i:05d}.jpg", pics)
    cache = tmp_path / "cache.sqlite"

    def run(runtime: str):
        dd = Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False, verify=False, runtime=runtime)
        return dd.run(pics)

    first = run("native")
    assert first.meta["counts"]["embedded"] == 8
    assert [b["runtime"] for b in first.meta["backbones"]] == ["native"]
    second = run("onnxruntime")  # the native vectors are not reused
    assert second.meta["counts"]["embedded"] == 8 and second.meta["counts"]["from_cache"] == 0
    assert [b["runtime"] for b in second.meta["backbones"]] == ["onnxruntime"]
    third = run("auto")  # auto is onnxruntime here: its own vectors come back from the cache
    assert third.meta["counts"]["embedded"] == 0 and third.meta["counts"]["from_cache"] == 8
    a, b = first.embeddings["efficientnet-lite0"], second.embeddings["efficientnet-lite0"]
    assert (a * b).sum(axis=1).min() >= 0.99
    assert json.loads(json.dumps(third.meta["backbones"]))[0]["runtime"] == "onnxruntime"


def test_the_exported_model_is_kept_verified_and_rebuilt_when_damaged(photos, tmp_path, monkeypatch):
    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "models"))
    first = make_backbone("efficientnet-lite0")
    first.load()
    path = first._onnx_path()
    assert path.parent == tmp_path / "models" and read_verified(path) is not None
    batch = np.stack([first.prepare(im) for im in photos[:8]])
    want = first.embed(batch)
    again = make_backbone("efficientnet-lite0")
    again.load()
    assert again._model is None and again.runtime_used == "onnxruntime"  # started from the kept file, no PyTorch
    np.testing.assert_allclose(again.embed(batch), want, atol=1e-6)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted or damaged file is never used
    assert read_verified(path) is None
    rebuilt = make_backbone("efficientnet-lite0")
    rebuilt.load()
    assert rebuilt._model is not None and rebuilt.runtime_used == "onnxruntime"
    assert read_verified(path) == data
    np.testing.assert_allclose(rebuilt.embed(batch), want, atol=1e-6)
