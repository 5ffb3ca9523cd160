"""Stage 7, report: every artefact a run or a benchmark leaves, in one package.

* :mod:`dedup.report.files`: ``groups.csv``, ``skipped.csv``, ``review.csv``,
  ``run.json`` (the commit record), indexes and embeddings; atomic writes.
* :mod:`dedup.report.gallery`: ``gallery.html`` with its review section.
* :mod:`dedup.report.plots`: ``map.png``, ``dendrogram.png``, ``sweep.png``.
* :mod:`dedup.report.bench`: ``bench.json``, ``bench.md`` of ``dedup bench``.
"""

from .bench import BENCH_JSON, BENCH_MD, SWEEP_PNG, bench_markdown, write_bench
from .files import (
    COLOURS_NPY,
    DENDROGRAM_PNG,
    GALLERY_HTML,
    GROUPS_CSV,
    MAP_PNG,
    MOVED_CSV,
    NEIGHBOUR_CONFIDENCE_NPY,
    NEIGHBOURS_NPY,
    QUERY_CSV,
    REVIEW_CSV,
    RUN_JSON,
    SKIPPED_CSV,
    atomic_write,
    check_files,
    claim_output_folder,
    read_run,
    retract,
    summary,
    write_report,
)
from .gallery import THUMB_SIDE, write_gallery
from .plots import plot_dendrogram, plot_map, plot_sweep

__all__ = [
    "BENCH_JSON",
    "BENCH_MD",
    "COLOURS_NPY",
    "DENDROGRAM_PNG",
    "GALLERY_HTML",
    "MAP_PNG",
    "MOVED_CSV",
    "QUERY_CSV",
    "SWEEP_PNG",
    "GROUPS_CSV",
    "NEIGHBOUR_CONFIDENCE_NPY",
    "NEIGHBOURS_NPY",
    "REVIEW_CSV",
    "RUN_JSON",
    "SKIPPED_CSV",
    "THUMB_SIDE",
    "atomic_write",
    "check_files",
    "claim_output_folder",
    "bench_markdown",
    "plot_dendrogram",
    "plot_map",
    "plot_sweep",
    "read_run",
    "retract",
    "summary",
    "write_bench",
    "write_gallery",
    "write_report",
]
