"""The run's files in its output folder: CSV and JSON, written whole or not at all.

Fixed names, so that a later ``query``, ``bench`` or ``evaluate`` finds them:

* ``groups.csv``: ``path,group`` first (paths relative to the input folder,
  every decoded image exactly once), then ``group_size, stage, distance,
  matched, width, height, note, sha256``.
* ``groups.parquet`` (runs on the Spark engine): the same table as Parquet,
  the form a data lake's next job reads.
* ``skipped.csv``: ``path,reason`` for every file not used.
* ``review.csv``: doubtful pairs left apart, for a person: ``path_a, path_b,
  confidence`` and the evidence that decided (``distance, colour_distance,
  layout_mean, layout_max, context, rank, inliers, aligned_colour_mismatch,
  phash_bits``), strongest first.
* ``run.json``: settings, backbones with weights provenance, counts, seconds
  per stage, a ``run_id`` and the size and SHA-256 of every other file of
  the run (``files``).
* ``index-<backbone>.ann`` and ``embeddings-<backbone>.npy``: one Annoy index
  and one ``(n, d)`` float32 matrix per backbone, rows in ``groups.csv`` order.
  A run of more than ``exact_knn_max`` images writes no index; the first
  ``query`` builds it and keeps it with an ``index-<backbone>.ann.record``
  (its SHA-256 and the run's ``run_id``) instead of a ``files`` entry.
* ``colours.npy``: the ``(n, dedup.colour.DIM)`` float32 colour descriptors,
  rows in ``groups.csv`` order, so that ``query`` ranks in the run's
  colour-fused space.
* ``neighbours.npy`` and ``neighbour-confidence.npy``: ``(n, k)`` int64 rows
  and float32 confidences of each image's neighbours, the most probable
  same product first (``Result.neighbours``; ``-1`` and NaN pad), so that
  ``query`` answers a catalogue photo with them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..hashing import sha256_file

GROUPS_CSV = "groups.csv"
GROUPS_PARQUET = "groups.parquet"
SKIPPED_CSV = "skipped.csv"
RUN_JSON = "run.json"
REVIEW_CSV = "review.csv"
#: The run's colour descriptors (rows in groups.csv order), for ``query``.
COLOURS_NPY = "colours.npy"
#: Each image's neighbours re-ranked by pair confidence, and those confidences.
NEIGHBOURS_NPY = "neighbours.npy"
NEIGHBOUR_CONFIDENCE_NPY = "neighbour-confidence.npy"


#: Written into an output folder before any file of a run, and never removed:
#: the folder is dedup's, and a later run may replace the files it wrote there.
OUT_MARKER = ".dedup-out"
#: The gallery's first page (more pages: ``gallery-<n>.html``), the t-SNE
#: map, the dendrogram, the moves of ``--move-duplicates``, and ``query``'s
#: default answer file.
GALLERY_HTML, MAP_PNG, DENDROGRAM_PNG, MOVED_CSV, QUERY_CSV = (
    "gallery.html",
    "map.png",
    "dendrogram.png",
    "moved.csv",
    "query.csv",
)
#: The fixed names ``run`` writes into an output folder besides the report
#: files above (and ``index-<backbone>.ann``, ``embeddings-<backbone>.npy``).
RUN_EXTRA_NAMES = (GALLERY_HTML, MAP_PNG, DENDROGRAM_PNG, MOVED_CSV, QUERY_CSV)


def claim_output_folder(out: str | os.PathLike) -> Path:
    """Make ``out`` (created if missing) a dedup output folder, or refuse it.

    A folder holding :data:`OUT_MARKER`, or a ``run.json`` with a ``run_id``
    (a run of a dedup version from before the marker), is dedup's already.
    Any other folder is claimed (the marker written) unless it holds a file
    under one of dedup's output names (the report's, ``bench``'s,
    :data:`RUN_EXTRA_NAMES`, ``index-*.ann``, ``embeddings-*.npy``, the
    gallery's further pages ``gallery-*.html``): that
    file is someone else's, and a run would replace it. Other files in the
    folder are never touched.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: naming the first such file (nothing written).
        OSError: the folder cannot be created or written.
    """
    out = Path(out)
    if (out / OUT_MARKER).exists():
        return out
    from .bench import BENCH_JSON, BENCH_MD, SWEEP_PNG  # bench imports this module

    try:
        record = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    ours = isinstance(record, dict) and "run_id" in record
    if not ours and out.is_dir():
        names = {
            GROUPS_CSV,
            GROUPS_PARQUET,
            SKIPPED_CSV,
            RUN_JSON,
            REVIEW_CSV,
            COLOURS_NPY,
            NEIGHBOURS_NPY,
            NEIGHBOUR_CONFIDENCE_NPY,
            BENCH_JSON,
            BENCH_MD,
            SWEEP_PNG,
            *RUN_EXTRA_NAMES,
        }
        for f in sorted(out.iterdir()):
            stem, suffix = os.path.splitext(f.name)
            patterned = (
                (stem.startswith("index-") and suffix == ".ann")
                or (stem.startswith("embeddings-") and suffix == ".npy")
                or (stem.startswith("gallery") and suffix == ".html")
            )
            if f.name in names or patterned:
                raise FileExistsError(
                    f"{out} holds {f.name}, which dedup did not write and a run would replace; "
                    "choose a new or empty output folder"
                )
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).touch()
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file whole or not at all: ``write(tmp)`` fills a temporary file
    beside ``path`` (named ``.NAME.<pid>.tmp``, so concurrent writers never
    share one), which is then renamed over ``path`` (``os.replace``, atomic on
    one file system). On error the temporary file is removed and ``path`` is
    left as it was.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: naming ``path`` when the write itself did not name a file
            (a full disk); or whatever else ``write`` raises.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def retract(out: str | os.PathLike) -> None:
    """Withdraw the commit record (``run.json``) of the run in ``out``, if
    any, before its files are replaced."""
    (Path(out) / RUN_JSON).unlink(missing_ok=True)


def write_report(result, out: str | os.PathLike) -> Path:
    """Write a :class:`dedup.pipeline.Result` into folder ``out`` (created).

    Every file is written to a temporary name and renamed; ``run.json`` is
    withdrawn first and written last with the SHA-256 of every file written
    for this run (see the module's docstring).

    Returns:
        The output folder.

    Raises:
        FileExistsError: ``out`` holds a file under one of dedup's output
            names that dedup did not write (:func:`claim_output_folder`).
        OSError: the folder cannot be written.
    """
    out = claim_output_folder(out)
    retract(out)
    written: list[str] = []

    def atomic(name: str, write) -> None:
        atomic_write(out / name, write)
        written.append(name)

    atomic(GROUPS_CSV, lambda p: result.groups.to_csv(p, index=False))
    if result.meta.get("engine", {}).get("name") == "spark":
        atomic(GROUPS_PARQUET, lambda p: result.groups.to_parquet(p, index=False))
    else:  # an earlier Spark run's table is not this run's
        (out / GROUPS_PARQUET).unlink(missing_ok=True)
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
    if len(result.colours) == len(result.groups):
        atomic(COLOURS_NPY, lambda p: save_npy(p, np.asarray(result.colours, np.float32)))
    if result.fused_ids.ndim == 2 and len(result.fused_ids) == len(result.groups) and result.fused_ids.shape[1]:
        ids, conf = result.neighbours(with_confidence=True)
        atomic(NEIGHBOURS_NPY, lambda p: save_npy(p, ids))
        atomic(NEIGHBOUR_CONFIDENCE_NPY, lambda p: save_npy(p, conf))
    pages = sorted(f.name for f in out.glob("gallery*.html"))
    extra = pages + [n for n in ("map.png", "dendrogram.png") if (out / n).is_file()]
    meta = {
        **result.meta,
        "run_id": uuid.uuid4().hex,
        "files": file_records(out, sorted(written + extra)),
    }
    atomic(RUN_JSON, lambda p: p.write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8"))
    return out


def read_run(out: str | os.PathLike, check: tuple[str, ...] = ()) -> dict:
    """The ``run.json`` of a complete run in ``out``, its files checked.

    Args:
        out: a run's output folder.
        check: names of files that must be listed in ``run.json`` and match
            their recorded size and SHA-256 (the files a reader will use).

    Returns:
        The parsed ``run.json``.

    Raises:
        FileNotFoundError: no ``run.json`` (no run, or one that did not finish writing).
        ValueError: ``run.json`` unreadable, or a checked file missing, or
            changed since the run wrote it (another run half-replaced it).
    """
    out = Path(out)
    path = out / RUN_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{out} holds no complete run ({RUN_JSON} missing): give the --out folder of a `dedup run` that finished"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({exc}); run `dedup run` again") from None
    check_files(out, meta, check)
    return meta


def file_records(out: str | os.PathLike, names: list[str]) -> dict:
    """run.json's ``files`` entries of files in ``out``: name -> ``{"bytes": size,
    "sha256": hex digest}`` (what :func:`check_files` checks).

    Raises:
        OSError: a file cannot be read.
    """
    return {
        name: {"bytes": (Path(out) / name).stat().st_size, "sha256": sha256_file(Path(out) / name)} for name in names
    }


def check_files(out: str | os.PathLike, meta: dict, names: tuple[str, ...] | list[str]) -> None:
    """Check that files of ``out`` are those its ``run.json`` (parsed: ``meta``) recorded.

    Raises:
        ValueError: a file not listed, missing, or of another size or SHA-256
            than recorded (another run half-replaced it).
    """
    files = meta.get("files")
    for name in names:
        rec = files.get(name) if isinstance(files, dict) else None
        f = Path(out) / name
        if rec is None or not f.is_file() or f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
            raise ValueError(
                f"{f} does not belong to the run recorded in {Path(out) / RUN_JSON} (missing or changed since); "
                "run `dedup run` again"
            )


def summary(result, out: str | os.PathLike | None = None) -> str:
    """A few lines for a person: what was used, what was found, where it is."""
    c = result.meta["counts"]
    nets = ", ".join(f"{b['name']} [{b['weights_id']}]" for b in result.meta["backbones"])
    lines = [
        f"backbones: {nets}",
        f"images: {c['images']} read, {c['skipped']} skipped, {c['from_cache']} from cache, {c['embedded']} embedded",
        f"groups: {c['groups_of_2_or_more']} groups of 2+ holding {c['images_in_groups']} images; "
        f"{c['singletons']} singletons; {c.get('pairs_to_review', 0)} doubtful pairs to review",
        "joined by: " + ", ".join(f"{k} {v}" for k, v in c["joined_by_stage"].items()),
        f"time: {result.meta['seconds']['total']:.1f} s",
    ]
    adapted = result.meta.get("adapted_model")
    if adapted:
        share = f"{100 * adapted['out_of_domain_share']:.0f}% of the images outside its domain"
        lines.append(
            f"adapted model: {adapted['path']} ({adapted['mode']}) "
            + (f"used; {share}" if adapted["applied"] else f"NOT used: {share} (--force-model applies it)")
        )
    if out is not None:
        lines.append(
            f"report: {Path(out) / GROUPS_CSV}, {Path(out) / REVIEW_CSV}, {Path(out) / SKIPPED_CSV}, "
            f"{Path(out) / RUN_JSON}"
        )
    return "\n".join(lines)
