"""The whole job of ``python -m dedup run``, as one library call.

:func:`run_job` does, in order: the guards (nothing is ever written inside
the input folder), an exclusive lock on the output folder, the run
(:meth:`dedup.pipeline.Deduplicator.run`), the optional view (hierarchical or
k-means clusters in place of the duplicate groups, for browsing), the report
(:func:`dedup.report.write_report`), the gallery, map and link folders, and
the optional move of duplicates (:func:`dedup.actions.move_duplicates`).

Moving duplicates always follows the duplicate groups of the run, never a
view's clusters: ``--method kmeans --k 1 --move-duplicates`` moves exactly
what ``--method group`` would.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .discover import download_spool, is_url
from .lock import Lock

if TYPE_CHECKING:
    from .pipeline import Result

#: Name of the lock file a run holds in its output folder.
OUT_LOCK = ".dedup.lock"


@dataclass
class ViewOptions:
    """How to present a run's images, on top of the duplicate groups.

    Attributes:
        method: ``"group"`` (the duplicate groups), ``"hierarchical"``
            (average linkage cut at ``sim``) or ``"kmeans"`` (``k`` clusters).
        sim: similarity level of the hierarchical cut, in [0, 1].
        k: number of k-means clusters, >= 1.
        min_size: smallest cluster reported, >= 1.
        pca: reduce embeddings to this many principal components first (>= 1), or ``None``.
        time_weight: ALPHA >= 0 of the capture-time term (see :mod:`dedup.views`).
        link_dir: write symlink cluster folders here (``None``: none).
        map: write ``map.png`` (t-SNE).
        gallery: write ``gallery.html``.

    Raises:
        ValueError: from :meth:`validate`, one line naming the option and its range.
    """

    method: str = "group"
    sim: float = 0.5
    k: int = 8
    min_size: int = 1
    pca: int | None = None
    time_weight: float = 0.0
    link_dir: str | os.PathLike | None = None
    map: bool = False
    gallery: bool = True

    def validate(self) -> "ViewOptions":
        """Check every value; returns ``self``."""
        if self.method not in ("group", "hierarchical", "kmeans"):
            raise ValueError(f"method must be group, hierarchical or kmeans, got {self.method!r}")
        checks = [("sim", self.sim, 0.0, 1.0), ("time_weight", self.time_weight, 0.0, math.inf)]
        for name, number, lo, hi in checks:
            if not (isinstance(number, (int, float)) and lo <= number <= hi):
                raise ValueError(f"{name} must lie in [{lo}, {hi}], got {number!r}")
        for name, count in (("k", self.k), ("min_size", self.min_size), ("pca", self.pca)):
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        return self


@dataclass
class JobResult:
    """What :func:`run_job` did.

    Attributes:
        result: the run's :class:`dedup.pipeline.Result` (``groups`` as
            written to groups.csv: the view's clusters when a view was asked for).
        out: the output folder.
        duplicate_groups: the duplicate groups (what moves follow).
        links: symlinks made under ``link_dir`` (0 when none).
        moved: :func:`dedup.actions.move_duplicates`'s table, or ``None``.
    """

    result: Result
    out: Path
    duplicate_groups: pd.DataFrame
    links: int = 0
    moved: pd.DataFrame | None = None


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_outside(root: str | os.PathLike, **targets: str | os.PathLike | None) -> None:
    """Refuse any output location inside the input folder.

    Args:
        root: the input folder.
        targets: option name -> path (``None`` skipped), e.g. ``out=...``.

    Raises:
        ValueError: one line naming the option, e.g. ``--out X lies inside DIR``.
    """
    for name, value in targets.items():
        if value and _inside(Path(value), Path(root)):
            raise ValueError(
                f"--{name.replace('_', '-')} {value} lies inside {root}; dedup never writes inside the input folder"
            )


def input_folders(root: str | os.PathLike, files: list | None = None) -> list[Path]:
    """The folders a run reads: ``root`` when it walks it, or with ``files``
    (a glob's or a manifest's; absolute or relative to ``root``) every folder
    holding one of them (URLs are not folders of this machine and are left
    out). No output may lie inside any of them."""
    root = Path(root)
    if not files:
        return [root]
    local = [f for f in files if not is_url(f)]
    return sorted({Path(f).parent if Path(f).is_absolute() else (root / f).parent for f in local})


def run_job(
    dedup,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    view: ViewOptions | None = None,
    move_duplicates: str | os.PathLike | None = None,
    backbones=None,
    files: list | None = None,
) -> JobResult:
    """Run, report and optionally act, as ``python -m dedup run`` does.

    Args:
        dedup: a configured :class:`dedup.pipeline.Deduplicator`.
        root: the input folder (only ever read).
        out: the output folder (created; locked for the job's duration).
        view: how to present the images (default: the duplicate groups, with a gallery).
        move_duplicates: a quarantine folder outside ``root``: all but one
            image of each duplicate group are moved there, reversibly.
        backbones: the output of ``dedup.check()`` when already called.
        files: run on these files only (absolute or relative to ``root``;
            from a glob or a manifest, :func:`dedup.discover.resolve_source`)
            instead of walking ``root``.

    Returns:
        :class:`JobResult`.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        ValueError: an output location inside ``root``, or a bad option.
        FileExistsError: ``view.link_dir`` exists and is not empty, or ``out``
            holds a file under an output name that dedup did not write
            (:func:`dedup.report.claim_output_folder`); both checked first.
        dedup.lock.BusyError: another run holds ``out`` (or the cache).
        OSError: the output folder cannot be written.
    """
    from . import report

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    view = (view or ViewOptions()).validate()
    cache = dedup.cache if dedup.cache not in (None, False) else None
    features = getattr(dedup, "features", None)
    targets = dict(out=out, cache=cache, features=features, link_dir=view.link_dir, move_duplicates=move_duplicates)
    for folder in input_folders(root, files):
        check_outside(folder, **targets)
    if view.link_dir and Path(view.link_dir).is_dir() and any(Path(view.link_dir).iterdir()):
        raise FileExistsError(f"--link-dir {view.link_dir} exists and is not empty; choose a new folder")
    report.claim_output_folder(out)  # before any work: a file of the user's under an output name stops the run
    urls = any(is_url(f) for f in files or ())
    with Lock(out / OUT_LOCK, f"output folder {out}"), download_spool() if urls else nullcontext():
        result = dedup.run(root, files=files, backbones=backbones)
        duplicates = result.groups
        report.retract(out)  # from here until run.json is rewritten, OUT holds no complete run
        _apply_view(result, view, out)
        job = JobResult(result, out, duplicates)
        _write_pictures(job, view, root)
        report.write_report(result, out)
        if move_duplicates is not None:
            from .actions import move_duplicates as move

            moved = move(duplicates, root, move_duplicates, files=result.files)
            report.atomic_write(out / report.MOVED_CSV, lambda p: moved.to_csv(p, index=False))
            job.moved = moved
    return job


def _apply_view(result, view: ViewOptions, out: Path) -> None:
    """Replace ``result.groups`` by the view's clusters (a copy; moves never see it)."""
    from . import views
    from .decode import capture_times
    from .pipeline import group_counts
    from .report import DENDROGRAM_PNG, plot_dendrogram

    if view.method == "group":
        return
    times = capture_times(result.files) if view.time_weight > 0 else None
    labels, Z = views.cluster(
        result.ensemble_embeddings(),
        method=view.method,
        sim=view.sim,
        k=view.k,
        min_size=view.min_size,
        pca=view.pca,
        times=times,
        time_weight=view.time_weight,
    )
    result.groups = views.relabel(result.groups, labels, view.method)
    result.meta["views"] = {
        "method": view.method,
        "sim": view.sim,
        "k": view.k,
        "min_size": view.min_size,
        "pca": view.pca,
        "time_weight": view.time_weight,
        "time_scale_s": views.TIME_SCALE_S,
        "linkage": "average (UPGMA), cosine",
    }
    result.meta["counts"].update(group_counts(result.groups))
    if Z is not None:
        plot_dendrogram(Z, out / DENDROGRAM_PNG, cut=1 - view.sim)


def _write_pictures(job: JobResult, view: ViewOptions, root: Path) -> None:
    """The gallery (thumbnails cached), the t-SNE map and the symlink folders."""
    from .cache import Cache
    from .links import link_clusters
    from .report import GALLERY_HTML, MAP_PNG, plot_map, write_gallery

    result = job.result
    if view.gallery:
        path = result.meta["settings"].get("cache")
        cache = Cache(path) if path else None
        try:
            write_gallery(
                result.groups,
                root,
                job.out / GALLERY_HTML,
                title=f"dedup: {root}",
                files=result.files,
                cache=cache,
                review=result.review,
            )
        finally:
            if cache is not None:
                cache.close()
    if view.map:
        plot_map(result.ensemble_embeddings(), result.groups.group.to_numpy(), job.out / MAP_PNG)
    if view.link_dir:
        job.links = link_clusters(result.groups, root, view.link_dir, files=result.files)
