"""Acting on duplicates: opt-in, reversible.

``move_duplicates`` moves all but one image of each group out of the input
folder into a quarantine folder (keeping relative paths), and writes a
manifest; ``undo`` reads the manifest and puts every file back. Nothing is
ever deleted or overwritten: a move whose target exists is refused and
reported, and undo checks each file's SHA-256 before moving it back.

Which image is kept: the largest resolution (width x height in pixels), then
the largest file (bytes), then the first path in sort order.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

from .hashing import sha256_file

MANIFEST = "moved-manifest.jsonl"


def _sources(groups: pd.DataFrame, root: Path, files: list | None) -> list[Path]:
    return [Path(f) for f in files] if files is not None else [root / p for p in groups.path]


def choose_keepers(groups: pd.DataFrame, root: str | os.PathLike, files: list | None = None) -> pd.Series:
    """Which row of each group is kept.

    Args:
        groups: a run's groups DataFrame (``path, group, width, height``).
        root: the folder the paths are relative to.
        files: the real path of each row (``Result.files``); default ``root / path``.

    Returns:
        Boolean Series aligned with ``groups``: True for the one kept image of
        each group (and for every singleton).
    """
    df = groups.copy()
    df["_pixels"] = df.width.astype("int64") * df.height.astype("int64")
    df["_bytes"] = [f.stat().st_size if f.exists() else -1 for f in _sources(groups, Path(root), files)]
    df = df.sort_values(["group", "_pixels", "_bytes", "path"], ascending=[True, False, False, True])
    keep = ~df.duplicated("group", keep="first")
    return keep.reindex(groups.index)


def move_duplicates(groups: pd.DataFrame, root: str | os.PathLike, dest: str | os.PathLike,
                    manifest: str | os.PathLike | None = None, files: list | None = None) -> pd.DataFrame:
    """Move every non-kept image of each group from ``root`` to ``dest``.

    Args:
        groups: a run's groups DataFrame (``path, group, width, height, sha256``).
        root: the input folder.
        dest: the quarantine folder (created; must not lie inside ``root``).
        manifest: the manifest file (JSON lines); default ``dest/moved-manifest.jsonl``.
            Each line is written *before* its move, with ``"done": false``,
            then confirmed, so an interrupted move can still be undone.
        files: the real path of each row (``Result.files``); default ``root / path``.

    Returns:
        DataFrame ``path, moved_to, kept, status`` for every moved or refused file.

    Raises:
        ValueError: ``dest`` lies inside ``root``.
    """
    root, dest = Path(root).resolve(), Path(dest).resolve()
    try:
        dest.relative_to(root)
        raise ValueError(f"{dest} lies inside the input folder {root}; choose a folder outside it")
    except ValueError as exc:
        if "lies inside" in str(exc):
            raise
    dest.mkdir(parents=True, exist_ok=True)
    manifest = Path(manifest) if manifest else dest / MANIFEST
    sources = [f.resolve() for f in _sources(groups, root, files)]
    keep = choose_keepers(groups, root, sources)
    kept_of = {g: p for g, p, k in zip(groups.group, groups.path, keep) if k}
    rows = []
    with open(manifest, "a", encoding="utf-8", errors="surrogateescape") as fh:
        for (_, r), k, src in zip(groups.iterrows(), keep, sources):
            if k:
                continue
            target = dest / src.relative_to(root)
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "original": str(src), "moved_to": str(target),
                     "sha256": r.sha256, "kept": str(root / kept_of[r.group]), "group": r.group}
            if target.exists():
                rows.append({"path": r.path, "moved_to": str(target), "kept": kept_of[r.group],
                             "status": "refused: target exists"})
                continue
            if not src.exists():
                rows.append({"path": r.path, "moved_to": "", "kept": kept_of[r.group], "status": "source missing"})
                continue
            fh.write(json.dumps({**entry, "done": False}) + "\n")
            fh.flush()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(target))
            fh.write(json.dumps({**entry, "done": True}) + "\n")
            fh.flush()
            rows.append({"path": r.path, "moved_to": str(target), "kept": kept_of[r.group], "status": "moved"})
    return pd.DataFrame(rows, columns=["path", "moved_to", "kept", "status"])


def undo(manifest: str | os.PathLike) -> pd.DataFrame:
    """Put every file listed in a manifest back where it was.

    A file is moved back only when it is still at ``moved_to``, its SHA-256
    matches the manifest, and nothing occupies the original path.

    Returns:
        DataFrame ``original, status`` (``restored``, ``already in place``,
        ``refused: ...``).

    Raises:
        FileNotFoundError: no such manifest.
    """
    entries: dict[str, dict] = {}
    with open(manifest, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            if line.strip():
                e = json.loads(line)
                entries[e["original"]] = e  # the last word on each file wins
    rows = []
    for original, e in entries.items():
        src, target = Path(e["moved_to"]), Path(original)
        if target.exists() and not src.exists():
            rows.append({"original": original, "status": "already in place"})
            continue
        if not src.exists():
            rows.append({"original": original, "status": "refused: moved file not found"})
            continue
        if target.exists():
            rows.append({"original": original, "status": "refused: original path is occupied"})
            continue
        if sha256_file(src) != e["sha256"]:
            rows.append({"original": original, "status": "refused: file changed since it was moved"})
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(target))
        rows.append({"original": original, "status": "restored"})
    return pd.DataFrame(rows, columns=["original", "status"])
