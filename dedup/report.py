"""Stage 7, report: the files a run leaves in its output folder.

Fixed names, so that a later ``query``, ``bench`` or ``evaluate`` finds them:

* ``groups.csv``: ``path,group`` first (paths relative to the input folder,
  every decoded image exactly once), then ``group_size, stage, distance,
  matched, width, height, note, sha256``.
* ``skipped.csv``: ``path,reason`` for every file not used.
* ``review.csv``: doubtful pairs left apart, for a person: ``path_a, path_b,
  confidence`` and the evidence that decided (``distance, colour_distance,
  context, rank, inliers, phash_bits``), strongest first.
* ``run.json``: settings, backbones with weights provenance, counts, seconds
  per stage.
* ``index-<backbone>.ann`` and ``embeddings-<backbone>.npy``: one Annoy index
  and one ``(n, d)`` float32 matrix per backbone, rows in ``groups.csv`` order.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

GROUPS_CSV = "groups.csv"
SKIPPED_CSV = "skipped.csv"
RUN_JSON = "run.json"
REVIEW_CSV = "review.csv"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file whole or not at all: ``write(tmp)`` fills a temporary file
    beside ``path`` (named ``.NAME.<pid>.tmp``, so concurrent writers never
    share one), which is then renamed over ``path`` (``os.replace``, atomic on
    one file system). On error the temporary file is removed and ``path`` is
    left as it was.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: or whatever ``write`` raises.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_report(result, out: str | os.PathLike) -> Path:
    """Write a :class:`dedup.pipeline.Result` into folder ``out`` (created).

    Every file is written to a temporary name and renamed, so an interrupted
    write never leaves a half file under a final name.

    Returns:
        The output folder.

    Raises:
        OSError: the folder cannot be written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def atomic(name: str, write) -> None:
        atomic_write(out / name, write)

    atomic(GROUPS_CSV, lambda p: result.groups.to_csv(p, index=False))
    atomic(SKIPPED_CSV, lambda p: result.skipped.to_csv(p, index=False))
    review = result.review if len(result.review.columns) else pd.DataFrame(columns=["path_a", "path_b", "confidence"])
    atomic(REVIEW_CSV, lambda p: review.to_csv(p, index=False))

    def save_npy(path: Path, X: np.ndarray) -> None:
        with open(path, "wb") as fh:
            np.save(fh, X)

    for name, X in result.embeddings.items():
        atomic(f"embeddings-{name}.npy", lambda p, X=X: save_npy(p, X))
    for name, idx in result.indexes.items():
        atomic(f"index-{name}.ann", lambda p, idx=idx: idx.save(p))
    meta = dict(result.meta)
    meta["files"] = sorted(f.name for f in out.iterdir() if not f.name.endswith(".tmp"))
    atomic(RUN_JSON, lambda p: p.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8"))
    return out


def summary(result, out: str | os.PathLike | None = None) -> str:
    """A few lines for a person: what was used, what was found, where it is."""
    c = result.meta["counts"]
    nets = ", ".join(f"{b['name']} [{b['weights_id']}]" for b in result.meta["backbones"])
    lines = [
        f"backbones: {nets}",
        f"images: {c['images']} read, {c['skipped']} skipped, {c['from_cache']} from cache, "
        f"{c['embedded']} embedded",
        f"groups: {c['groups_of_2_or_more']} groups of 2+ holding {c['images_in_groups']} images; "
        f"{c['singletons']} singletons; {c.get('pairs_to_review', 0)} doubtful pairs to review",
        "joined by: " + ", ".join(f"{k} {v}" for k, v in c["joined_by_stage"].items()),
        f"time: {result.meta['seconds']['total']:.1f} s",
    ]
    if out is not None:
        lines.append(f"report: {Path(out) / GROUPS_CSV}, {Path(out) / REVIEW_CSV}, {Path(out) / SKIPPED_CSV}, "
                     f"{Path(out) / RUN_JSON}")
    return "\n".join(lines)
