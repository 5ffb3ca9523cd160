"""Reduced-precision runtimes for EfficientNet-Lite0: how much faster, and what
they do to the embeddings and to the groups (#16's accuracy bar, #19's
precision bar), measured in one run on this CPU.

Arms, each built from the same kept ONNX export of the pooled network:

* ``onnxruntime fp32``: dedup's default (the reference of every column).
* ``openvino bf16``: OpenVINO with ``INFERENCE_PRECISION_HINT`` bf16, only on a
  CPU whose OpenVINO capabilities list BF16 (AVX-512 BF16 or AMX); bfloat16
  keeps fp32's range with an 8-bit significand.
* ``onnxruntime int8``: static QDQ quantisation (``onnxruntime.quantization``),
  weights per channel, activations uint8 calibrated (min-max) on 96
  ukbench-dev photos; full-range weights on a CPU with VNNI, reduced range
  (7 bits) without, where ONNX Runtime's U8S8 kernels would saturate (its
  quantisation documentation).

Per arm: the model-only rate (prepared batches of 32 of the first 600
ukbench-dev photos, after one warm-up batch; the fp32 arm split over one
single-thread run per CPU as dedup runs it, OpenVINO with its latency hint over
every CPU, int8 split as fp32), the per-image cosine similarity to the fp32
embedding over every photo of the three shared sets (smallest and 1st
percentile), and ``dedup bench`` with default settings on products-flipkart,
ukbench-dev, inshop-women and the two edited-copy sets (``edits.py``): groups,
pairwise P / R / F1, N-S and R@1. Verification results are cached in
``benchmarks/.cache/reduced_precision-*.sqlite``; each arm's embeddings are stored under
its own runtime name.

The bars: #16's, N-S on ukbench-dev within 0.01 and pairwise F1 within 0.005
of fp32 and every cosine >= 0.99; #19's, pairwise precision >= 0.98 on every
set and products-flipkart at exactly 6 groups.

    python benchmarks/reduced_precision.py [--readme]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
from _common import BENCH, ROOT, machine, replace_readme_block, write
from edits import set_folder
from PIL import Image
from speed import model_rate

from dedup.backbones import EfficientNetLite0
from dedup.backbones.runtime import onnxruntime_session, read_verified
from dedup.evaluate import read_labels, run_bench
from dedup.grouping import GroupingParams
from dedup.pipeline import Deduplicator

SETS = ("products-flipkart", "ukbench-dev", "inshop-women", "edited-inshop", "edited-ukbench")
SHARED = ("products-flipkart", "ukbench-dev", "inshop-women")
BATCH = 32
Network = Callable[[np.ndarray], np.ndarray]


class CompiledLite0(EfficientNetLite0):
    """EfficientNet-Lite0 whose pooled network is a given compiled function
    (``(n, 3, 224, 224)`` float32 network input -> ``(n, 1280)`` float32),
    its embeddings cached under ``tag`` (benchmark only)."""

    def __init__(self, tag: str, network: Network):
        super().__init__()
        self.runtime_used = tag
        self._network = network

    def load(self) -> None:
        self.check_weights()
        self._fast = self._network


def has_vnni() -> bool:
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI (Linux: /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def kept_export() -> bytes:
    """The default backbone's kept ONNX export (made by loading it once)."""
    net = EfficientNetLite0(runtime="onnxruntime")
    net.load()
    data = read_verified(net._onnx_path())
    if data is None:
        raise SystemExit("no kept ONNX export of efficientnet-lite0 (is the model cache folder writable?)")
    return data


def openvino_bf16(model: bytes) -> Network | None:
    """OpenVINO in bfloat16, or ``None`` where the CPU has no BF16."""
    import openvino as ov

    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None
    compiled = core.compile_model(
        core.read_model(model=model), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"}
    )
    return lambda x: np.array(compiled(np.ascontiguousarray(x, np.float32))[0], np.float32)


def quantize_int8(model: bytes, calibration: np.ndarray, tmp: Path, reduce_range: bool) -> bytes:
    """The ONNX model quantised to static int8 (QDQ, weights per channel,
    activations uint8 calibrated min-max on ``calibration``, ``(m, 3, 224,
    224)`` float32 network inputs), as ONNX bytes; files are written in ``tmp``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calibration[s : s + 8]} for s in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.it, None)

    src, pre, out = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "int8.onnx"
    src.write_bytes(model)
    quant_pre_process(str(src), str(pre))
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out.read_bytes()


def onnxruntime_int8(model: bytes, calibration: np.ndarray, tmp: Path, reduce_range: bool) -> Network:
    """:func:`quantize_int8`'s model run by ONNX Runtime, split as dedup splits fp32."""
    return onnxruntime_session(quantize_int8(model, calibration, tmp, reduce_range))


def network_inputs(paths: list[Path]) -> np.ndarray:
    """``(n, 3, 224, 224)`` float32: the photos as the network takes them."""
    b = EfficientNetLite0()
    rows = []
    for p in paths:
        with Image.open(p) as im:
            rows.append(b.prepare(im))
    return EfficientNetLite0.network_input(np.stack(rows))


def run_network(fn: Network, x: np.ndarray) -> np.ndarray:
    return np.concatenate([fn(x[s : s + BATCH]) for s in range(0, len(x), BATCH)])


def cosines(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    a, b = ref.astype(np.float64), got.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


class _Keeping(Deduplicator):
    """A Deduplicator that keeps its last result (to compare arms pair by pair)."""

    last = None

    def run(self, *args, **kwargs):
        self.last = super().run(*args, **kwargs)
        return self.last


def bench(arm: str, tag: str, fn: Network, tmp: Path) -> tuple[dict, dict]:
    """``dedup bench`` on every set with this arm's network: the scores per
    set, and per set the run's groups (path -> group), its candidate pairs'
    confidences ((path, path) -> p) and the true groups (path -> label)."""
    out, runs = {}, {}
    for name in SETS:
        folder = set_folder(name)
        cache = ROOT / "benchmarks" / ".cache" / f"reduced_precision-{name}.sqlite"
        dd = _Keeping(backbones="efficientnet-lite0", cache=cache, progress=False)
        r = run_bench(folder / "labels.csv", dd, tmp / arm / name, backbones=([CompiledLite0(tag, fn)], ""))
        pw = r["pairwise"]
        out[name] = {
            "groups": r["predicted_groups"],
            "precision": pw["precision"],
            "recall": pw["recall"],
            "f1": pw["f1"],
            "ns": r["ns_score"],
            "recall_at_1": r["recall_at_1"],
        }
        res = dd.last
        paths = list(res.groups.path)
        labels = read_labels(folder / "labels.csv")
        runs[name] = {
            "group": dict(zip(paths, res.groups.group)),
            "p": {tuple(sorted((paths[i], paths[j]))): float(c) for (i, j), c in zip(res.pairs.ij, res.confidence)},
            "truth": dict(zip(labels.path, labels.group)),
        }
        print(arm, name, out[name], flush=True)
    return out, runs


def new_false_joins(ref: dict, got: dict) -> list[dict]:
    """The pairs that join two products in the arm and not in fp32: candidate
    pairs of photos of two products, at or above the join threshold (the
    default ``--min-confidence``), in one of the arm's groups and not in one of
    fp32's; each with its confidence in the arm and in fp32 (``None`` where
    fp32 did not make it a candidate pair)."""
    threshold = GroupingParams().min_confidence
    rows = []
    for name, run in got.items():
        base, truth = ref[name], run["truth"]
        for a, b in sorted(run["p"]):
            joins = run["p"][(a, b)] >= threshold and run["group"][a] == run["group"][b]
            if joins and base["group"][a] != base["group"][b] and truth[a] != truth[b]:
                rows.append({"set": name, "a": a, "b": b, "p_fp32": base["p"].get((a, b)), "p": run["p"][(a, b)]})
    return rows


def main() -> None:
    readme = "--readme" in sys.argv[1:]
    model = kept_export()
    ukb = read_labels(BENCH / "ukbench-dev" / "labels.csv")
    ukb_paths = [BENCH / "ukbench-dev" / p for p in ukb.path]
    speed_x = network_inputs(ukb_paths[:600])
    speed_batches = [speed_x[s : s + BATCH] for s in range(0, len(speed_x), BATCH)]
    calibration = network_inputs(ukb_paths[300::3][:96])
    every = []
    for name in SHARED:
        labels = read_labels(BENCH / name / "labels.csv")
        every += [BENCH / name / p for p in labels.path]
    every_x = network_inputs(every)
    vnni = has_vnni()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        arms: list[tuple[str, str, Network | None]] = [
            ("onnxruntime fp32 (dedup's default)", "onnxruntime", onnxruntime_session(model)),
            ("openvino bf16", "precision-benchmark/openvino-bf16", openvino_bf16(model)),
            (
                f"onnxruntime static int8 (QDQ, per channel, {'full' if vnni else 'reduced'} range)",
                f"precision-benchmark/onnxruntime-int8-{'full' if vnni else 'reduced'}",
                onnxruntime_int8(model, calibration, tmp, reduce_range=not vnni),
            ),
        ]
        ref, ref_runs = None, None
        for arm, tag, fn in arms:
            if fn is None:
                rows.append({"runtime": arm, "supported": False})
                print(arm, "not supported on this CPU", flush=True)
                continue
            row: dict = {"runtime": arm, "supported": True, "img_s": model_rate(fn, speed_batches)[0]}
            emb = run_network(fn, every_x)
            if ref is None:
                ref = emb
            c = cosines(ref, emb)
            row.update(min_cosine=float(c.min()), p1_cosine=float(np.percentile(c, 1)), images=len(c))
            row["sets"], runs = bench(arm, tag, fn, tmp)
            if ref_runs is None:
                ref_runs = runs
            else:
                row["new_false_joins"] = new_false_joins(ref_runs, runs)
            rows.append(row)
    tables = report(rows)
    n = rows[0].get("images", 0)
    md = (
        "# Reduced-precision runtimes for EfficientNet-Lite0\n\n"
        f"Produced by `python benchmarks/reduced_precision.py`. Cosines over the {n} photos of the shared sets; "
        f"the CPU {'has' if vnni else 'lacks'} VNNI.\n\n{tables}\n\nMachine: {machine()}\n"
    )
    write("reduced_precision", {"machine": machine(), "vnni": vnni, "rows": rows}, md)
    if readme:
        replace_readme_block("PRECISION-TABLE", tables)


def verdicts(row: dict, ref: dict) -> tuple[str, str]:
    """Whether an arm meets #16's accuracy bar and #19's precision bar, with why not."""
    s, r = row["sets"], ref["sets"]
    why16 = []
    if abs(s["ukbench-dev"]["ns"] - r["ukbench-dev"]["ns"]) > 0.01:
        why16.append("N-S")
    if abs(s["ukbench-dev"]["f1"] - r["ukbench-dev"]["f1"]) > 0.005:
        why16.append("F1")
    if row["min_cosine"] < 0.99:
        why16.append("cosine")
    why19 = [k for k, v in s.items() if v["precision"] < 0.98]
    if s["products-flipkart"]["groups"] != 6:
        why19.append("flipkart groups")
    v16 = "yes" if not why16 else "no: " + ", ".join(why16)
    return v16, ("yes" if not why19 else "no: P < 0.98 on " + ", ".join(why19))


def report(rows: list[dict]) -> str:
    """Markdown: the arms against the bars, then each arm's bench per set."""
    ref = rows[0]
    lines = [
        "| runtime | model-only img/s | x fp32 | smallest cosine to fp32 (1st percentile) "
        "| #16's accuracy bar | #19's precision bar |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if not row["supported"]:
            lines.append(f"| {row['runtime']} | not supported on this CPU | | | | |")
            continue
        v16, v19 = ("reference", "yes") if row is ref else verdicts(row, ref)
        lines.append(
            f"| {row['runtime']} | {row['img_s']:.1f} | {row['img_s'] / ref['img_s']:.2f} | "
            f"{row['min_cosine']:.4f} ({row['p1_cosine']:.4f}) | {v16} | {v19} |"
        )
    sets = [
        "| runtime | set | groups | pairwise P | pairwise R | pairwise F1 | N-S | R@1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, s in row.get("sets", {}).items():
            sets.append(
                f"| {row['runtime']} | {name} | {s['groups']} | {s['precision']:.3f} | {s['recall']:.3f} | "
                f"{s['f1']:.4f} | {s['ns']:.3f} | {s['recall_at_1']:.3f} |"
            )
    joins = [
        "The joins of two products an arm adds (candidate pairs at or above the default --min-confidence, "
        "in one of its groups and not in one of fp32's), with the pair's confidence in fp32 and in the arm:",
        "",
        "| runtime | set | photo | photo | confidence fp32 | confidence |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for j in row.get("new_false_joins", []):
            before = "-" if j["p_fp32"] is None else f"{j['p_fp32']:.3f}"
            joins.append(f"| {row['runtime']} | {j['set']} | {j['a']} | {j['b']} | {before} | {j['p']:.3f} |")
    return "\n".join(lines) + "\n\n" + "\n".join(sets) + "\n\n" + "\n".join(joins)


if __name__ == "__main__":
    main()
