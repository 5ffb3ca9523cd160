"""Pooling of the last convolutional map: does keeping detail find more of a product's views?

Issue #19 lists, among its means, descriptors that keep detail: GeM or
R-MAC pooling of the last convolutional map instead of one global average
(Radenovic, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
annotation", TPAMI 2018; Tolias, Sicre and Jegou, "Particular object
retrieval with integral max-pooling of CNN activations", ICLR 2016). The
shipped embedding is EfficientNet-Lite0's global average pool of its
1280-channel head (7 x 7 at 224 px input). This script computes that map for
every photo of a labelled set (the same weights, the same input as a run:
``Backbone.prepare``, eager PyTorch) and pools it five ways, none of them
trained:

* ``average``: the mean over the 7 x 7 cells (what a run uses; checked equal
  to the run's cached embedding, smallest cosine reported);
* ``gem`` p = 2, 3, 4: ``(mean x^p)^(1/p)`` per channel (GeM, p = 3 the
  value Radenovic et al. use without learning it);
* ``max``: the largest activation per channel (MAC);
* ``r-mac``: max-pooled square regions at 3 scales (a grid after Tolias et
  al.'s: side ``2 min(H, W) / (l + 1)``, ``l`` x ``l`` regions spread evenly
  at scale ``l``; on a 7 x 7 map 1 + 4 + 9 regions), each L2-normalised,
  summed (no learned whitening: it would be fitted on the photos measured).

For each: nearest-neighbour recall@1 (:func:`dedup.evaluate.recall_at_1`,
exact search) of the embedding alone and of the colour-fused vectors a run
searches (:func:`dedup.grouping.fused_vectors`) at colour weights around the
default, and the UKBench N-S score of the embedding alone. The pair model
was fitted on average-pooled distances, so a pooling change would need a
refit (``benchmarks/calibrate.py``) before its groups could be compared.

Writes ``benchmarks/results/pooling.{md,json}``. Uses the run cache in
``benchmarks/.cache`` for the colours; the maps are computed each time
(about a minute per thousand photos on 2 cores).

    python benchmarks/pooling.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from _common import BENCH, ROOT, machine, write
from tqdm.auto import tqdm

from dedup.backbones import l2_normalise, make_backbone
from dedup.decode import load_image
from dedup.evaluate import ns_score, recall_at_1
from dedup.grouping import GroupingParams, fused_vectors
from dedup.index import exact_knn
from dedup.pipeline import Deduplicator

SETS = ("inshop-women", "ukbench-dev")
#: GeM exponents measured.
GEM_P = (2.0, 3.0, 4.0)
#: R-MAC scales (regions a side: 1, 2, 3).
RMAC_SCALES = 3
BATCH = 32


def conv_maps(paths: list, net) -> np.ndarray:
    """``(n, 1280, 7, 7)`` float16 head activations (after ReLU6) of each photo, as a run prepares it."""
    model = net._torch_model()
    out = []
    for s in tqdm(range(0, len(paths), BATCH), desc="conv maps", unit="batch"):
        batch = np.stack([net.prepare(load_image(p, target_size=net.input_size).image) for p in paths[s : s + BATCH]])
        x = torch.from_numpy(np.ascontiguousarray(net.network_input(batch)))
        with torch.inference_mode():
            out.append(model.extract_features(x).numpy().astype(np.float16))
    return np.concatenate(out)


def gem(maps: np.ndarray, p: float) -> np.ndarray:
    """GeM pooling ``(n, c, h, w) -> (n, c)``: ``(mean over cells of x^p)^(1/p)``."""
    x = np.maximum(maps.astype(np.float32), 1e-6)
    return np.power(np.power(x, p).mean(axis=(2, 3)), 1.0 / p)


def rmac(maps: np.ndarray, scales: int = RMAC_SCALES) -> np.ndarray:
    """R-MAC without whitening ``(n, c, h, w) -> (n, c)``: the sum of L2-normalised
    max-pooled square regions, ``l`` x ``l`` regions of side ``2 min(h, w) / (l + 1)``
    at scale ``l`` (evenly spread, overlapping)."""
    x = maps.astype(np.float32)
    n, c, h, w = x.shape
    out = np.zeros((n, c), np.float32)
    for level in range(1, scales + 1):
        side = max(1, int(2 * min(h, w) / (level + 1)))
        ys = np.linspace(0, h - side, level).round().astype(int) if level > 1 else [(h - side) // 2]
        xs = np.linspace(0, w - side, level).round().astype(int) if level > 1 else [(w - side) // 2]
        for y in ys:
            for x0 in xs:
                out += l2_normalise(x[:, :, y : y + side, x0 : x0 + side].max(axis=(2, 3)))
    return out


def nn_recall(X: np.ndarray, truth: np.ndarray) -> float | None:
    """Nearest-neighbour recall@1 of unit rows ``X`` by exact search, as a run's bench computes it."""
    return recall_at_1(exact_knn(X, X, 2)[0], truth)


def measure(name: str, weights: list[float]) -> dict:
    """Every pooling's scores on one labelled set."""
    root = BENCH / name
    dedup = Deduplicator(
        backbones="efficientnet-lite0", cache=ROOT / "benchmarks" / ".cache" / f"{name}.sqlite", progress=False
    )
    inputs = dedup.embed(root)
    labels = pd.read_csv(root / "labels.csv").set_index("path")
    truth = labels.loc[inputs.paths, "group"].astype(str).to_numpy()
    net = make_backbone("efficientnet-lite0")
    net.check_weights()
    maps = conv_maps([str(p) for p in inputs.files], net)
    variants = {"average": maps.astype(np.float32).mean(axis=(2, 3))}
    variants.update({f"gem p={p:g}": gem(maps, p) for p in GEM_P})
    variants["max"] = maps.max(axis=(2, 3)).astype(np.float32)
    variants["r-mac"] = rmac(maps)
    cached = l2_normalise(inputs.embeddings["efficientnet-lite0"])
    rows = []
    for pooling, V in variants.items():
        V = l2_normalise(V)
        rows.append(
            {
                "set": name,
                "pooling": pooling,
                "recall_at_1_embedding": nn_recall(V, truth),
                "ns_embedding": round(ns_score(V, truth), 4),
                **{
                    f"recall_at_1_fused_w{w:.2f}": nn_recall(fused_vectors([V], inputs.colours, w), truth)
                    for w in weights
                },
            }
        )
    check = float((cached * l2_normalise(variants["average"])).sum(axis=1).min())
    return {"rows": rows, "images": len(truth), "smallest_cosine_average_to_run": round(check, 6)}


def report(data: dict) -> str:
    """The Markdown table of :func:`main`'s results (``data`` as written to ``pooling.json``)."""
    weights, default = data["colour_weights"], data["default_colour_weight"]
    checks = ", ".join(f"{n} {f['smallest_cosine_average_to_run']:.4f}" for n, f in data["sets"].items())
    lines = [
        "# Pooling of EfficientNet-Lite0's last convolutional map",
        "",
        f"Machine: {data['machine']}. Produced by `python benchmarks/pooling.py`. Nearest-neighbour R@1 by exact "
        f"search; *fused*: the colour-fused search of a run at colour weight w (default {default:g}). N-S: the "
        "UKBench score of the embedding alone (max 4). *average* is the run's embedding (smallest cosine to the "
        f"run's cached embedding: {checks}).",
        "",
        "| set | pooling | R@1 embedding | N-S embedding | "
        + " | ".join(f"R@1 fused w={w:.2f}" for w in weights)
        + " |",
        "|---|---|---|---|" + "---|" * len(weights),
    ]
    for name, found in data["sets"].items():
        for r in found["rows"]:
            fused = " | ".join(f"{r[f'recall_at_1_fused_w{w:.2f}']:.4f}" for w in weights)
            lines.append(
                f"| {name} | {r['pooling']} | {r['recall_at_1_embedding']:.4f} | {r['ns_embedding']:.3f} | {fused} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    default = GroupingParams().colour_weight
    weights = sorted({round(default + d, 2) for d in (-0.1, -0.05, 0.0, 0.05, 0.1) if 0 <= default + d <= 1})
    torch.set_num_threads(2)
    data = {
        "machine": machine(),
        "default_colour_weight": default,
        "colour_weights": weights,
        "sets": {name: measure(name, weights) for name in SETS},
    }
    write("pooling", data, report(data))


if __name__ == "__main__":
    main()
