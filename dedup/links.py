"""Symlink cluster folders: ``DEST/cluster_with_N/cluster_i/`` (the
image-clustering write-up's way to browse clusters in a file manager).

Originals are never touched: each entry is a symbolic link to one.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pandas as pd

from .discover import is_url
from .report.files import atomic_write

#: Longest file name in bytes on common file systems (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


def _numbered(name: str, j: int) -> str:
    """``j_name``, its stem shortened so that it stays within :data:`NAME_MAX` bytes."""
    stem, suffix = os.path.splitext(name)
    room = NAME_MAX - len(os.fsencode(f"{j}_")) - len(os.fsencode(suffix))
    return f"{j}_" + os.fsdecode(os.fsencode(stem)[: max(room, 1)]) + suffix


def _write_lines(lines: list[str], path: Path) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def link_clusters(
    groups: pd.DataFrame, root: str | os.PathLike, dest: str | os.PathLike, files: list | None = None
) -> int:
    """Write ``dest/cluster_with_N/cluster_i/`` folders of symlinks.

    One folder per group of N >= 2 images (groups of one are not linked),
    named by size then group order; each link points at the original file
    (absolute path) and is named like it (a number is prefixed on a clash).
    Originals are never touched. ``files``: the real path of each row
    (``Result.files``); default ``root / path``. A URL (a manifest's remote
    entry) cannot be linked: it is listed in the folder's ``urls.txt``
    instead, one per line.

    Returns:
        The number of links made.

    Raises:
        FileExistsError: ``dest`` exists and is not empty.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty; choose a new folder")
    root = Path(root).resolve()
    if files is None:
        real: list = [root / p for p in groups.path]
    else:
        real = [f if is_url(f) else Path(f).resolve() for f in files]
    made = 0
    sized = pd.Series(range(len(groups)), index=groups.index).groupby(groups.group.to_numpy(), sort=False).apply(list)
    counters: dict[int, int] = {}
    for _, paths in sized.items():
        n = len(paths)
        if n < 2:
            continue
        i = counters.get(n, 0)
        counters[n] = i + 1
        folder = dest / f"cluster_with_{n}" / f"cluster_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        urls = [str(real[row]) for row in paths if is_url(real[row])]
        if urls:
            atomic_write(folder / "urls.txt", functools.partial(_write_lines, urls))
        for j, row in enumerate(paths):
            if is_url(real[row]):
                continue
            name = real[row].name
            link = folder / name
            if link.exists() or link.is_symlink():
                link = folder / _numbered(name, j)
            os.symlink(real[row], link)
            made += 1
    return made
