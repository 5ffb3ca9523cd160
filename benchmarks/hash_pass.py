"""The hash pass (decode + pHash + Hamming search) side by side with
imagededup's PHash (encode_images + find_duplicates), on ukbench-dev.

imagededup is installed with --no-deps into benchmarks/.cache/imagededup
(its package imports torchvision, which does not load beside this machine's
torch build, so only its hashing module is loaded, by bypassing
``imagededup.methods`` and ``imagededup.utils`` package files). Both use 2 workers (this machine's cores)
and the same Hamming threshold; each is run 3 times and the best is kept.

    python benchmarks/hash_pass.py
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import types

from _common import BENCH, ROOT, machine, write

from dedup.hashing import near_duplicate_pairs, phash_files

TARGET = ROOT / "benchmarks" / ".cache" / "imagededup"
THRESHOLD = 10  # imagededup's default max_distance_threshold


def load_imagededup():
    if not (TARGET / "imagededup").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(TARGET),
                "imagededup==0.3.3.post2",
            ],
            check=True,
        )
    sys.path.insert(0, str(TARGET))
    for sub in ("methods", "utils"):  # skip these __init__ files: they import the CNN (torchvision)
        stub = types.ModuleType(f"imagededup.{sub}")
        stub.__path__ = [str(TARGET / "imagededup" / sub)]
        sys.modules[f"imagededup.{sub}"] = stub
    return importlib.import_module("imagededup.methods.hashing").PHash


def best_of(fn, reps=3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    folder = BENCH / "ukbench-dev" / "images"
    paths = sorted(folder.glob("*.jpg"))
    n = len(paths)

    def ours():
        codes, _ = phash_files(paths, workers=2)
        near_duplicate_pairs(codes, THRESHOLD)

    ours_s = best_of(ours)
    PHash = load_imagededup()
    hasher = PHash(verbose=False)

    def theirs():
        enc = hasher.encode_images(image_dir=str(folder), num_enc_workers=2)
        hasher.find_duplicates(encoding_map=enc, max_distance_threshold=THRESHOLD, num_dist_workers=2)

    theirs_s = best_of(theirs)
    data = {
        "machine": machine(),
        "images": n,
        "threshold": THRESHOLD,
        "dedup_s": ours_s,
        "dedup_img_s": n / ours_s,
        "imagededup_s": theirs_s,
        "imagededup_img_s": n / theirs_s,
        "ratio": theirs_s / ours_s,
    }
    md = (
        f"# Hash pass vs imagededup's PHash\n\nMachine: {machine()}. {n} ukbench-dev JPEGs (320x240), "
        f"Hamming threshold {THRESHOLD}, 2 workers each, best of 3. Produced by `python benchmarks/hash_pass.py`.\n\n"
        "| tool | seconds | images/s |\n|---|---|---|\n"
        f"| dedup (`phash_files` + `near_duplicate_pairs`) | {ours_s:.2f} | {n / ours_s:.0f} |\n"
        f"| imagededup 0.3.3 (`PHash.encode_images` + `find_duplicates`) | {theirs_s:.2f} | {n / theirs_s:.0f} |\n"
        f"\ndedup is {theirs_s / ours_s:.1f}x as fast.\n"
    )
    write("hash_pass", data, md)


if __name__ == "__main__":
    main()
