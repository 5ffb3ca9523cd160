"""The card's ensemble (VGG16 + ResNet50 + InceptionV3 through Keras) and
honest weights handling. The weights files here are made by the tests: each
model's own random initialisation saved under Keras's file name, with its MD5
supplied through the DEDUP_TEST_WEIGHTS_MD5 hook (no network here)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import bench_set, run_cli
from PIL import Image

from dedup.backbones import KERAS_WEIGHTS, select_backbones
from dedup.backbones.weights import MD5_OVERRIDE_ENV, file_md5, import_weights

CARD = ("vgg16", "resnet50", "inceptionv3")


@pytest.fixture(scope="module")
def made_weights(tmp_path_factory):
    """A Keras cache folder holding the three no-top files, made from random init."""
    import h5py
    from keras import applications
    from keras.src.legacy.saving import legacy_h5_format

    home = tmp_path_factory.mktemp("keras_home")
    models = home / "models"
    models.mkdir()
    builders = {
        "vgg16": (applications.VGG16, 224),
        "resnet50": (applications.ResNet50, 224),
        "inceptionv3": (applications.InceptionV3, 299),
    }
    md5 = {}
    for name, (build, size) in builders.items():
        model = build(include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3))
        path = models / KERAS_WEIGHTS[name].filename
        with h5py.File(path, "w") as fh:  # the legacy .h5 layout Keras's ImageNet files use
            legacy_h5_format.save_weights_to_hdf5_group(fh, model)
        md5[name] = file_md5(path)
    hook = ",".join(f"{k}={v}" for k, v in md5.items())
    return home, md5, hook


@pytest.fixture()
def small_set(tmp_path):
    src = bench_set("ukbench-dev") / "images"
    d = tmp_path / "pics"
    d.mkdir()
    for i in (0, 1, 2, 3, 40, 41, 42, 43):
        shutil.copy(src / f"ukbench{i:05d}.jpg", d)
    shutil.copy(src / "ukbench00040.jpg", d / "copy.jpg")
    return d


@pytest.mark.keras
def test_cli_runs_the_card_ensemble_end_to_end(made_weights, small_set, tmp_path):
    home, md5, hook = made_weights
    out = tmp_path / "out"
    proc = run_cli(
        "run",
        str(small_set),
        "--out",
        str(out),
        "--quiet",
        "--backbones",
        "vgg16,resnet50,inceptionv3",
        env={"KERAS_HOME": str(home), MD5_OVERRIDE_ENV: hook},
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "run.json").read_text())
    names = [b["name"] for b in meta["backbones"]]
    assert names == list(CARD)
    dims = {b["name"]: b["dim"] for b in meta["backbones"]}
    assert dims == {"vgg16": 512, "resnet50": 2048, "inceptionv3": 2048}
    assert [b["runtime"] for b in meta["backbones"]] == ["openvino"] * 3  # auto: the measured fastest
    for b in meta["backbones"]:
        # provenance is honest: the file, its md5, and that the expectation was overridden
        assert md5[b["name"]] in b["weights_id"]
        assert str(home) in b["weights_source"] and "NOT the ImageNet file" in b["weights_source"]
        X = np.load(out / f"embeddings-{b['name']}.npy")
        assert X.shape == (9, dims[b["name"]]) and X.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-4)
        assert (out / f"index-{b['name']}.ann").is_file()
    g = pd.read_csv(out / "groups.csv").set_index("path")
    assert len(g) == 9
    assert g.loc["copy.jpg", "group"] == g.loc["ukbench00040.jpg", "group"]


@pytest.mark.keras
def test_openvino_embeddings_agree_with_tensorflow(made_weights, small_set, tmp_path, monkeypatch):
    from dedup.backbones import KerasBackbone
    from dedup.backbones.runtime import MODEL_CACHE_ENV
    from dedup.backbones.weights import WeightsSpec

    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "models"))
    home, md5, _ = made_weights
    spec = WeightsSpec("vgg16", KERAS_WEIGHTS["vgg16"].filename, md5["vgg16"], "made by the test")
    nets = {
        rt: KerasBackbone("vgg16", weights_dir=str(home / "models"), spec=spec, runtime=rt)
        for rt in ("native", "openvino")
    }
    for net in nets.values():
        net.load()
    assert nets["openvino"].runtime_used == "openvino" and nets["native"].runtime_used == "native"
    assert nets["openvino"].cache_id != nets["native"].cache_id
    images = [Image.open(p) for p in sorted(small_set.iterdir())]
    batch = np.stack([nets["native"].prepare(im) for im in images])
    a, b = nets["native"].embed(batch), nets["openvino"].embed(batch)
    assert a.shape == b.shape == (9, 512)
    # f32 on every CPU: OpenVINO's default on AVX-512 BF16 CPUs is bfloat16,
    # which measured 1 - cosine = 5.6e-6 here (f32: 2.4e-7), and such vectors
    # cached before the pin are never read back
    assert (a * b).sum(axis=1).min() >= 1 - 1e-6
    assert nets["openvino"].cache_id.endswith("runtime:openvino/f32")
    # the converted model (preprocessing included) is kept: a later load needs no Keras model at all
    kept = KerasBackbone("vgg16", weights_dir=str(home / "models"), spec=spec, runtime="openvino")
    kept.load()
    assert kept.runtime_used == "openvino" and getattr(kept, "_model", None) is None
    assert sorted(p.suffix for p in (tmp_path / "models").iterdir()) == [".bin", ".sha256", ".sha256", ".xml"]
    np.testing.assert_allclose(kept.embed(batch), b, atol=1e-5)


def test_auto_picks_the_card_ensemble_when_its_weights_are_present(made_weights, monkeypatch):
    home, md5, hook = made_weights
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv(MD5_OVERRIDE_ENV, hook)
    nets, note = select_backbones("auto")
    assert [b.name for b in nets] == list(CARD)
    assert "ensemble" in note


def test_auto_falls_back_loudly_when_weights_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    nets, note = select_backbones("auto")
    assert [b.name for b in nets] == ["efficientnet-lite0"]
    assert "FELL BACK" in note and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in note


def test_named_backbone_with_missing_weights_stops_before_any_work(tmp_path, small_set):
    out = tmp_path / "out"
    proc = run_cli(
        "run", str(small_set), "--out", str(out), "--backbones", "vgg16", env={"KERAS_HOME": str(tmp_path / "empty")}
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err
    assert str(tmp_path / "empty" / "models") in err  # where to put it
    assert "--backbones efficientnet-lite0" in err  # the offline alternative
    assert not (out / "groups.csv").exists()


def test_wrong_hash_is_reported_and_the_file_left_untouched(tmp_path, small_set):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    bad = models / KERAS_WEIGHTS["resnet50"].filename
    bad.write_bytes(b"not the weights you are looking for" * 100)
    before = bad.read_bytes()
    proc = run_cli(
        "run",
        str(small_set),
        "--out",
        str(tmp_path / "out"),
        "--backbones",
        "resnet50",
        env={"KERAS_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 1
    assert "md5" in proc.stderr and KERAS_WEIGHTS["resnet50"].md5 in proc.stderr
    assert "left untouched" in proc.stderr
    assert bad.read_bytes() == before
    listing = run_cli("weights", env={"KERAS_HOME": str(tmp_path / "home")})
    assert listing.returncode == 0
    line = [ln for ln in listing.stdout.splitlines() if ln.startswith("resnet50")][0]
    assert "wrong hash" in line
    assert "missing" in [ln for ln in listing.stdout.splitlines() if ln.startswith("vgg16")][0]
    assert bad.read_bytes() == before


def test_weights_import_copies_only_verified_files_and_never_overwrites(made_weights, tmp_path, monkeypatch):
    home, md5, hook = made_weights
    monkeypatch.setenv(MD5_OVERRIDE_ENV, hook)
    src = tmp_path / "downloads"
    src.mkdir()
    shutil.copy(home / "models" / KERAS_WEIGHTS["vgg16"].filename, src)
    (src / KERAS_WEIGHTS["resnet50"].filename).write_bytes(b"truncated download")
    dest = tmp_path / "dest"
    from dedup.backbones.weights import expected_spec

    specs = {n: expected_spec(n) for n in CARD}
    result = dict(import_weights(src, dest, specs))
    assert result[KERAS_WEIGHTS["vgg16"].filename] == "copied"
    assert result[KERAS_WEIGHTS["resnet50"].filename] == "wrong hash (not copied)"
    assert result[KERAS_WEIGHTS["inceptionv3"].filename] == "not in source"
    assert file_md5(dest / KERAS_WEIGHTS["vgg16"].filename) == md5["vgg16"]
    assert not (dest / KERAS_WEIGHTS["resnet50"].filename).exists()
    # an existing different file at the destination is left as it was
    other = dest / KERAS_WEIGHTS["vgg16"].filename
    other.write_bytes(b"user's own file")
    result = dict(import_weights(src, dest, specs))
    assert "left untouched" in result[KERAS_WEIGHTS["vgg16"].filename]
    assert other.read_bytes() == b"user's own file"


def test_a_backbone_registered_in_one_place_is_built_and_run_by_name(small_set):
    """Adding a backbone is one registered class: make_backbone, select_backbones
    and a whole run find it by name, and a taken name is refused."""
    from dedup.backbones import REGISTRY, EfficientNetLite0, make_backbone, register
    from dedup.pipeline import Deduplicator

    @register("lite0-small-input")
    class SmallInput(EfficientNetLite0):
        name = "lite0-small-input"
        input_size = 160

    try:
        b = make_backbone("lite0-small-input")
        assert isinstance(b, SmallInput) and b.input_size == 160
        nets, note = select_backbones("lite0-small-input")
        assert [n.name for n in nets] == ["lite0-small-input"] and "named by the user" in note
        result = Deduplicator(backbones=nets, progress=False, verify=False).run(small_set)
        assert result.embeddings["lite0-small-input"].shape == (len(result.groups), 1280)
        with pytest.raises(ValueError, match="registered twice"):
            register("efficientnet-lite0")(SmallInput)
    finally:
        REGISTRY.pop("lite0-small-input", None)
