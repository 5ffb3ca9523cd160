"""The peers that speed.py measures side by side with dedup, each in its own
virtual environment (its dependencies never touch dedup's).

* imagededup's CNN method (idealo/imagededup; MobileNetV3-Small through
  torchvision, features from the global average pool), ``encode_images``.
* fastdup's feature extraction (visual-layer/fastdup; its bundled ONNX model),
  ``fastdup.run(run_mode=1)``.

``setup(name)`` makes ``benchmarks/.cache/venvs/NAME`` with ``pip install`` of
the pinned release the first time (a ``.ready`` marker is written last, so an
interrupted install is redone); ``measure(name, files, threads)`` runs the
peer there on the given files and returns its images/second. Where a peer
cannot run as its authors intend on this offline machine, the result says
so: imagededup downloads its ImageNet weights on first use, so here it runs
MobileNetV3's random initialisation (the same computation, hence the same
speed) and reports ``weights: random-init``.

    python benchmarks/peers.py            # set up both and measure them on 600 ukbench-dev photos
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from _common import BENCH, ROOT

VENVS = ROOT / "benchmarks" / ".cache" / "venvs"

_IMAGEDEDUP = r"""
import json, os, sys, tempfile, time
files, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
import torch
torch.set_num_threads(threads)
from imagededup.methods import CNN
weights, note = "ImageNet", ""
try:
    cnn = CNN(verbose=False)
except Exception as exc:  # no network: the weights cannot be downloaded
    import torchvision.models as tm
    import imagededup.utils.models as um
    real = tm.mobilenet_v3_small
    um.models.mobilenet_v3_small = lambda *a, **k: real(weights=None)
    cnn = CNN(verbose=False)
    weights = "random-init"
    note = "its ImageNet weights download failed offline (%s)" % type(exc).__name__
folder = tempfile.mkdtemp()
for i, f in enumerate(files):
    os.symlink(f, os.path.join(folder, "%06d%s" % (i, os.path.splitext(f)[1])))
t = time.perf_counter()
enc = cnn.encode_images(image_dir=folder, num_enc_workers=0)
dt = time.perf_counter() - t
print(json.dumps({"images": len(enc), "seconds": dt, "weights": weights, "note": note}))
"""

_FASTDUP = r"""
import json, os, sys, tempfile, time
os.environ["SENTRY_OPT_OUT"] = "1"
files, threads = json.load(open(sys.argv[1])), int(sys.argv[2])
import fastdup
work = tempfile.mkdtemp()
t = time.perf_counter()
rc = fastdup.run(input_dir=files, work_dir=work, num_threads=threads, run_mode=1, verbose=False)
dt = time.perf_counter() - t
n = sum(1 for _ in open(os.path.join(work, "atrain_features.dat.csv"))) - 1
note = "" if rc == 0 else "rc %s" % rc
print(json.dumps({"images": n, "seconds": dt, "weights": "bundled with the wheel", "note": note}))
"""

#: name -> (pip requirements, measuring script, what is measured)
PEERS: dict[str, tuple[list[str], str, str]] = {
    "imagededup": (["imagededup==0.3.3.post2"], _IMAGEDEDUP, "CNN (MobileNetV3-Small) encode_images"),
    "fastdup": (["fastdup==2.54"], _FASTDUP, "fastdup.run(run_mode=1): feature extraction"),
}


def setup(name: str) -> Path:
    """The peer's Python interpreter, installing its virtual environment first if needed.

    Raises:
        subprocess.CalledProcessError: pip failed (the output says why).
    """
    env = VENVS / name
    python = env / "bin" / "python"
    if not (env / ".ready").exists():
        venv.create(env, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name][0]], check=True)
        (env / ".ready").write_text(" ".join(PEERS[name][0]) + "\n")
    return python


def measure(name: str, files: list[Path], threads: int, repeats: int = 2) -> dict:
    """Run peer ``name`` on ``files`` with ``threads`` threads, ``repeats``
    times (each in a new process); the fastest run counts (as for dedup's
    own rates in ``speed.py``: the least disturbed by other load).

    Returns:
        ``{"peer", "what", "images", "seconds", "images_per_second",
        "images_per_second_per_core", "threads", "weights", "note"}``, or
        ``{"peer", "what", "error"}`` when it could not run.
    """
    what = PEERS[name][2]
    try:
        python = setup(name)
    except subprocess.CalledProcessError as exc:
        return {"peer": name, "what": what, "error": f"install failed: {exc}"}
    runs = []
    for _ in range(max(1, repeats)):
        with tempfile.TemporaryDirectory() as tmp:
            listing = Path(tmp) / "files.json"
            listing.write_text(json.dumps([str(f) for f in files]))
            script = Path(tmp) / "peer.py"
            script.write_text(PEERS[name][1])
            proc = subprocess.run(
                [str(python), str(script), str(listing), str(threads)], capture_output=True, text=True, cwd=tmp
            )
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"peer": name, "what": what, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        runs.append(json.loads(lines[-1]))
    got = min(runs, key=lambda r: r["seconds"])
    rate = got["images"] / got["seconds"]
    return {
        "peer": name,
        "what": what,
        **got,
        "threads": threads,
        "images_per_second": rate,
        "images_per_second_per_core": rate / threads,
        "repeats": len(runs),
    }


if __name__ == "__main__":
    photos = sorted((BENCH / "ukbench-dev" / "images").glob("*.jpg"))[:600]
    for peer in PEERS:
        print(measure(peer, photos, 2), flush=True)
    sys.exit(0)
