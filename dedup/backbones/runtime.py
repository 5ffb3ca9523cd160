"""Inference runtimes: the same network, run by a faster engine where one measures faster.

A backbone's network is defined in its own framework (PyTorch for
EfficientNet-Lite0, Keras for the card's trio). Running it there is the
reference ("native"); an optimised runtime runs the same graph with the same
weights, fused and scheduled for the CPU:

* ``onnxruntime`` (Microsoft's ONNX Runtime, CPU execution provider): the
  PyTorch model is exported to ONNX (``torch.onnx.export``) and run by an
  ``InferenceSession`` with every graph optimisation on. The exported file is
  kept (:func:`model_cache_path`, with a SHA-256 record written last), so a
  later run starts ONNX Runtime from it without importing PyTorch at all
  (about 2 s less per cold run on a 2-core CPU).
* ``openvino`` (Intel's OpenVINO): the Keras model, with its input
  preprocessing, is converted directly (``openvino.convert_model``, a few
  seconds) and compiled for the CPU with the latency hint. The converted IR
  is kept the same way, so a later run needs neither TensorFlow nor Keras.

Which runtime ``auto`` picks per backbone was decided by
``benchmarks/speed.py`` on this project's 2-core CPU (its "Runtimes" table,
two runs: EfficientNet-Lite0 ran 3.9x and 5.1x the eager PyTorch rate
under ONNX Runtime, 3.4x and 4.4x under OpenVINO; the Keras trio 1.1-1.6x
the TensorFlow rate under OpenVINO). Reduced precisions were measured too and refused:
static int8 disagreed with fp32 (cosine down to 0.64 on real photos without
VNNI, 0.973 with it), and int8 and OpenVINO's bfloat16 (cosine 0.991) each
join two products on the edited-copy sets that fp32 keeps apart
(``benchmarks/reduced_precision.py``).

Every compiled runtime is checked against the native model on a probe batch
when it is built (:func:`agreement`); a runtime that disagrees (cosine below
:data:`MIN_AGREEMENT`) or fails to build falls back to native with a logged
warning (``auto`` never picks one that is not installed; naming it is an
error before any work). The runtime actually used is part of every
embedding's cache key (:attr:`dedup.backbones.base.Backbone.cache_id`), so
embeddings from two runtimes are never mixed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

#: Accepted values of ``--runtime``.
RUNTIMES: tuple[str, ...] = ("auto", "native", "onnxruntime", "openvino")
#: Lowest per-row cosine similarity between a runtime's pooled features and
#: the native model's on the probe batch for the runtime to be used.
MIN_AGREEMENT = 0.999
#: ONNX opset of the export (supported by ONNX Runtime >= 1.12).
ONNX_OPSET = 17
#: Environment variable naming the folder where exported models are kept.
MODEL_CACHE_ENV = "DEDUP_MODEL_CACHE"

#: How a runtime is named in embedding cache keys where its numbers changed
#: under one name: OpenVINO ran in bfloat16 on CPUs with AVX-512 BF16 until
#: its precision was pinned to f32.
_CACHE_TAGS = {"openvino": "openvino/f32"}


def runtime_tag(runtime: str) -> str:
    """A runtime's name as embedding cache keys carry it (see :data:`_CACHE_TAGS`)."""
    return _CACHE_TAGS.get(runtime, runtime)


#: A compiled network: ``(n, ...)`` float32 input -> ``(n, d)`` float32 output.
Compiled = Callable[[np.ndarray], np.ndarray]


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s Python package can be imported (native always can)."""
    if runtime == "native":
        return True
    return importlib.util.find_spec(runtime) is not None


def resolve(requested: str, preferred: tuple[str, ...], name: str = "this backbone") -> str:
    """The runtime a backbone will use, decided before any model is built.

    Args:
        requested: one of :data:`RUNTIMES`.
        preferred: the backbone's optimised runtimes in its measured order of
            preference for ``auto`` (fastest first); ``native`` is the last
            resort and always supported.
        name: the backbone's name, for messages.

    Returns:
        A runtime name other than ``auto``.

    Raises:
        ValueError: an unknown runtime, one the backbone does not run on, or
            one named explicitly whose package is not installed (with the pip
            command that installs it).
    """
    requested = (requested or "auto").strip().lower()
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; choose from {', '.join(RUNTIMES)}")
    if requested == "auto":
        return next((r for r in preferred if installed(r)), "native")
    if requested not in (*preferred, "native"):
        raise ValueError(f"{name} does not run on {requested}; it runs on: {', '.join((*preferred, 'native'))}")
    if not installed(requested):
        raise ValueError(f"runtime {requested!r} is not installed: pip install {requested}")
    return requested


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Smallest row-wise cosine similarity of two ``(n, d)`` feature matrices, in [-1, 1]."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(candidate, np.float64)
    if a.shape != b.shape or a.size == 0:
        return -1.0
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)
    return float(cos.min())


def export_onnx(module: Any, example: np.ndarray) -> bytes:
    """A PyTorch module as an ONNX model (``torch.onnx.export``, TorchScript
    exporter, opset :data:`ONNX_OPSET`, dynamic batch axis), in memory.

    Args:
        module: an ``torch.nn.Module`` in eval mode taking one float32 tensor.
        example: a float32 input of the module's shape (any batch size).

    Raises:
        Exception: whatever the exporter raises (the caller falls back to native).
    """
    import warnings

    import torch

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding
        torch.onnx.export(
            module,
            (torch.from_numpy(np.ascontiguousarray(example, np.float32)),),
            buf,  # type: ignore[arg-type]  # a file object is accepted too
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def onnxruntime_session(model: bytes, threads: int | None = None) -> Compiled:
    """An ONNX model run by ONNX Runtime (CPU execution provider, every graph
    optimisation), a batch split across ``threads`` single-threaded runs.

    One session with one intra-op thread is run concurrently on contiguous
    parts of each batch (``InferenceSession.run`` is thread-safe, per ONNX
    Runtime's documentation), instead of one run with ``threads`` intra-op
    threads: EfficientNet-Lite0's many small depthwise convolutions make the
    intra-op threads wait on each other at every operator. Measured by
    ``benchmarks/speed.py`` (its "Runtimes" table, both rows on the same
    photos in one run).

    Args:
        model: the serialised ONNX model (:func:`export_onnx`).
        threads: concurrent runs (``None``: the CPUs this process may use,
            ``os.sched_getaffinity``).

    Returns:
        ``(n, ...)`` float32 array -> ``(n, d)`` float32 array; each row the
        same whatever the split (a row never depends on its batch).

    Raises:
        Exception: whatever ONNX Runtime raises on a model it cannot run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    parts = max(1, int(threads or available_cpus()))

    def one(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"x": x})[0], np.float32)

    if parts == 1:
        return lambda x: one(np.ascontiguousarray(x, np.float32))
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(parts, thread_name_prefix="dedup-onnxruntime")

    def run(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if len(x) < 2:
            return one(x)
        return np.concatenate(list(pool.map(one, np.array_split(x, min(parts, len(x))))))

    return run


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity`` where the
    platform has it, else ``os.cpu_count()``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def model_cache_path(name: str, *parts: str, suffix: str = ".onnx") -> Path | None:
    """Where a compiled model of backbone ``name`` is kept between runs, or
    ``None`` when no cache folder can be made.

    The folder is ``$DEDUP_MODEL_CACHE``, else ``$XDG_CACHE_HOME/dedup/models``
    (``~/.cache/dedup/models``). The file name carries a digest of ``parts``
    (weights, exporter and runtime versions), so a change of any of them
    never reuses an old file.
    """
    root = os.environ.get(MODEL_CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dedup", "models"
    )
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return None
    key = hashlib.sha256("|".join((name, *parts)).encode()).hexdigest()[:20]
    return Path(root) / f"{name}-{key}{suffix}"


def read_verified(path: Path | None) -> bytes | None:
    """The file's bytes if its ``.sha256`` record (written last by
    :func:`write_verified`) matches them, else ``None``."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
        want = Path(str(path) + ".sha256").read_text().strip()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == want else None


def write_verified(path: Path | None, data: bytes) -> None:
    """Write ``data`` to ``path`` and then its SHA-256 record, each whole or
    not at all (:func:`dedup.report.files.atomic_write`): an interrupted
    write never leaves a file that :func:`read_verified` accepts. A failure
    is logged, not raised (the kept model only saves time)."""
    if path is None:
        return
    from ..report.files import atomic_write

    record = Path(str(path) + ".sha256")
    try:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        atomic_write(record, lambda tmp: tmp.write_text(hashlib.sha256(data).hexdigest()))
    except OSError as exc:
        log.info("could not keep the compiled model in %s: %s", path, exc)


def package_version(name: str) -> str:
    """An installed distribution's version without importing it ("" when absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def openvino_ir_from_keras(model: Any, preprocess: Callable, input_shape: tuple[int, ...]) -> tuple[bytes, bytes]:
    """Convert a Keras model, with its input preprocessing, to OpenVINO's IR.

    The preprocessing (Keras's ``preprocess_input``) is traced into the graph,
    so the converted model takes raw RGB in [0, 255] and a later run needs
    neither TensorFlow nor Keras to use it.

    Args:
        model: a built Keras model taking one float32 ``(n, *input_shape)`` tensor.
        preprocess: its ``keras.applications.<module>.preprocess_input``.
        input_shape: the per-image input shape, e.g. ``(224, 224, 3)``.

    Returns:
        ``(xml, weights)``: the IR's two files as bytes (``openvino.save_model``).

    Raises:
        Exception: whatever Keras or OpenVINO's converter raise (the caller falls back).
    """
    import tempfile
    import warnings

    import keras
    import openvino as ov

    inputs = keras.Input(input_shape)
    wrapped = keras.Model(inputs, model(preprocess(inputs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(wrapped, input=[(-1, *input_shape)])
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "model.xml")
        ov.save_model(converted, xml)
        return Path(xml).read_bytes(), Path(xml).with_suffix(".bin").read_bytes()


def openvino_session(xml: bytes, weights: bytes, threads: int | None = None) -> Compiled:
    """An OpenVINO IR compiled for the CPU with the latency hint.

    Args:
        xml, weights: the IR (:func:`openvino_ir_from_keras`).
        threads: inference threads (``None``: OpenVINO's default).

    Returns:
        ``(n, ...)`` float32 array -> ``(n, d)`` float32 array.

    Raises:
        Exception: whatever OpenVINO raises on an IR it cannot read.
    """
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model=xml.decode("utf-8"), weights=ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
    # f32 named: on a CPU with AVX-512 BF16 or AMX, OpenVINO's default
    # inference precision is bfloat16, which moves the embeddings.
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(np.ascontiguousarray(x, np.float32))[0], np.float32)

    return run


def checked(name: str, runtime: str, build: Callable[[], Compiled], native: Compiled, probe: np.ndarray):
    """Build a runtime's compiled network and keep it only if it agrees with native.

    Args:
        name: the backbone's name (for the log).
        runtime: the runtime being built.
        build: makes the compiled network (may raise).
        native: the reference network.
        probe: an input batch both are run on.

    Returns:
        ``(compiled, runtime)``, or ``(None, "native")`` after a logged
        warning when building failed or the outputs disagree.
    """
    try:
        compiled = build()
        score = agreement(native(probe), compiled(probe))
    except Exception as exc:  # noqa: BLE001 - the native model always works
        log.warning("%s: %s could not be used (%s: %s); running natively", name, runtime, type(exc).__name__, exc)
        return None, "native"
    if score < MIN_AGREEMENT:
        log.warning("%s: %s disagrees with the native model (cosine %.4f); running natively", name, runtime, score)
        return None, "native"
    return compiled, runtime
