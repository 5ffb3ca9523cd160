"""Acting on duplicates: opt-in, reversible.

``move_duplicates`` moves all but one image of each group out of the input
folder into a quarantine folder (keeping relative paths), and writes a
manifest; ``undo`` reads the manifest and puts every file back. Nothing is
ever deleted or overwritten: a move whose target exists is refused and
reported, and undo checks each file's SHA-256 before moving it back.

Which image is kept: a file that lies in the input folder before one
reached through a symbolic link to a folder outside it, a regular file before
a symbolic link, then the largest resolution (width x height in pixels), then
the largest file (bytes), then the first path in sort order. A file reached
through a link to an outside folder is never moved: it belongs to that
folder, which the user did not point at.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path

import pandas as pd

from .discover import is_url, printable, row_files
from .hashing import sha256_file

MANIFEST = "moved-manifest.jsonl"


def outside_root(sources: list, root: str | os.PathLike) -> list[bool]:
    """Which local files really lie outside the input folder ``root``: their
    folder, with every symbolic link on the way resolved, is not under the
    resolved ``root``. A symbolic link file inside the folder is inside,
    whatever it points to; a URL is not local (False). Each distinct folder
    is resolved once."""
    root_real = Path(os.path.realpath(root))
    real: dict[Path, bool] = {}
    out = []
    for src in sources:
        if is_url(src):
            out.append(False)
            continue
        parent = Path(src).parent
        if parent not in real:
            folder = Path(os.path.realpath(parent))
            real[parent] = folder != root_real and root_real not in folder.parents
        out.append(real[parent])
    return out


def choose_keepers(groups: pd.DataFrame, root: str | os.PathLike, files: list | None = None) -> pd.Series:
    """Which row of each group is kept.

    Args:
        groups: a run's groups DataFrame (``path, group, width, height``).
        root: the folder the paths are relative to.
        files: the real path of each row (``Result.files``); default ``root / path``.

    Returns:
        Boolean Series aligned with ``groups``: True for the one kept image of
        each group (and for every singleton). A file in the input folder is
        kept before one reached through a symbolic link to a folder outside
        it (that one is never moved, so the folder keeps its own copy), a
        regular file before a symbolic link (moving the file a kept link
        points to would break it), then the largest resolution, the largest
        file, the first path.
    """
    df = groups.copy()
    sources = row_files(groups.path, root, files)
    df["_outside"] = outside_root(sources, root)
    df["_link"] = [not is_url(f) and f.is_symlink() for f in sources]
    df["_pixels"] = df.width.astype("int64") * df.height.astype("int64")
    df["_bytes"] = [f.stat().st_size if not is_url(f) and f.exists() else -1 for f in sources]
    df = df.sort_values(
        ["group", "_outside", "_link", "_pixels", "_bytes", "path"], ascending=[True, True, True, False, False, True]
    )
    keep = ~df.duplicated("group", keep="first")
    return keep.reindex(groups.index)


#: Why a file reached through a symbolic link to an outside folder is not moved.
OUTSIDE = "refused: in a folder outside the input folder (reached through a symbolic link)"


def _plan_one(src: Path | str, root: Path, dest: Path, dest_dev: int, outside: bool) -> tuple[Path | None, str, int]:
    """Where ``src`` goes and whether it may: ``(target, problem, bytes to
    copy)``; ``outside``: it lies in a folder outside ``root`` (:func:`outside_root`)."""
    if is_url(src):
        return None, "refused: a URL, not a local file", 0
    src = Path(src)
    try:
        rel = src.relative_to(root)
    except ValueError:
        return None, "refused: not under the input folder", 0
    target = dest / rel
    if outside:
        return target, OUTSIDE, 0
    if not os.path.lexists(src):
        return target, "source missing", 0
    if os.path.lexists(target):
        return target, "refused: target exists", 0
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        return target, "", 0  # the link itself moves; what it points to is never touched
    if not stat.S_ISREG(st.st_mode):
        return target, "refused: not a regular file", 0
    return target, "", 0 if st.st_dev == dest_dev else st.st_size


def plan_moves(
    groups: pd.DataFrame, root: str | os.PathLike, dest: str | os.PathLike, files: list | None = None
) -> pd.DataFrame:
    """Every move :func:`move_duplicates` would make, checked, nothing moved.

    Each non-kept image of a group of 2+ is planned: a symbolic link is moved
    as a link (its target, often the kept image, stays where it is); a target
    that exists, a missing source, a non-regular file, or a file reached
    through a symbolic link to a folder outside ``root`` (:data:`OUTSIDE`) is
    refused.

    Args:
        groups: a run's duplicate groups (``path, group, width, height, sha256``).
        root: the input folder; dest: the quarantine folder.
        files: the real path of each row (``Result.files``); default ``root / path``.

    Returns:
        DataFrame ``path, source, target, kept, group, sha256, link, bytes,
        status`` (``status`` empty when the move may go ahead; ``source`` and
        ``target`` are :class:`~pathlib.Path`, ``link`` the symlink's target
        or ``""``, ``bytes`` what must be copied across file systems).
    """
    root = Path(root).absolute()
    dest = Path(dest).absolute()
    sources = [f if is_url(f) else Path(f).absolute() for f in row_files(groups.path, root, files)]
    keep = choose_keepers(groups, root, sources)
    kept_of = {g: p for g, p, k in zip(groups.group, groups.path, keep) if k}
    dest_dev = os.stat(dest).st_dev
    outside = outside_root(sources, root)
    rows = []
    for (_, r), k, src, away in zip(groups.iterrows(), keep, sources, outside):
        if k:
            continue
        target, problem, size = _plan_one(src, root, dest, dest_dev, away)
        link = os.readlink(src) if not is_url(src) and os.path.islink(src) else ""
        rows.append(
            {
                "path": r.path,
                "source": src,
                "target": target,
                "kept": kept_of[r.group],
                "group": r.group,
                "sha256": r.sha256,
                "link": link,
                "bytes": size,
                "status": problem,
            }
        )
    return pd.DataFrame(
        rows, columns=["path", "source", "target", "kept", "group", "sha256", "link", "bytes", "status"]
    )


def _log(fh, entry: dict) -> None:
    """Append one manifest line and make it durable before going on."""
    fh.write(json.dumps(entry) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def move_duplicates(
    groups: pd.DataFrame,
    root: str | os.PathLike,
    dest: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    files: list | None = None,
) -> pd.DataFrame:
    """Move every non-kept image of each group from ``root`` to ``dest``, as a transaction.

    First every move is planned and checked (:func:`plan_moves`) and the room
    on ``dest`` is checked for what must be copied across file systems; then
    the whole plan is written to the manifest (each line flushed and synced)
    before the first file moves, and each move is confirmed by a line of its
    own. An interruption at any point therefore leaves a manifest from which
    :func:`undo` restores everything that moved.

    Args:
        groups: a run's duplicate groups (``path, group, width, height, sha256``);
            never a view's clusters.
        root: the input folder.
        dest: the quarantine folder (created; must not lie inside ``root``).
        manifest: the manifest file (JSON lines); default ``dest/moved-manifest.jsonl``.
        files: the real path of each row (``Result.files``); default ``root / path``.

    Returns:
        DataFrame ``path, moved_to, kept, status`` for every planned file
        (``moved``, ``source missing``, ``refused: ...``, ``failed: ...``).

    Raises:
        ValueError: ``dest`` lies inside ``root``.
        OSError: ``dest`` lacks the room for the files to copy (nothing moved),
            or the manifest cannot be written (nothing moved).
    """
    root_r, dest_r = Path(root).resolve(), Path(dest).resolve()
    if dest_r == root_r or root_r in dest_r.parents:
        raise ValueError(f"{dest} lies inside the input folder {root}; choose a folder outside it")
    Path(dest).mkdir(parents=True, exist_ok=True)
    manifest = Path(manifest) if manifest else Path(dest) / MANIFEST
    plan = plan_moves(groups, root, dest, files)
    go = plan[plan.status == ""]
    need, free = int(go.bytes.sum()), shutil.disk_usage(dest).free
    if need > free:
        raise OSError(errno.ENOSPC, f"{need} bytes to copy but {free} free; nothing was moved", str(dest))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    entries = {
        i: {
            "time": stamp,
            "original": str(r.source),
            "moved_to": str(r.target),
            "sha256": r.sha256,
            "link": r.link,
            "kept": str(Path(root).absolute() / r.kept),
            "group": r.group,
        }
        for i, r in go.iterrows()
    }
    status = dict(zip(plan.index, plan.status))
    with open(manifest, "a", encoding="utf-8") as fh:
        for e in entries.values():
            _log(fh, {**e, "done": False})
        for i, e in entries.items():
            src, target = Path(e["original"]), Path(e["moved_to"])
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, target)
            except OSError as exc:
                status[i] = f"failed: {exc.strerror or exc}"
                continue
            _log(fh, {**e, "done": True})
            status[i] = "moved"
    return pd.DataFrame(
        {
            "path": plan.path,
            "moved_to": [printable(t) if t is not None else "" for t in plan.target],
            "kept": plan.kept,
            "status": [status[i] for i in plan.index],
        },
        columns=["path", "moved_to", "kept", "status"],
    )


def read_manifest(manifest: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """The entries of a manifest, the last word on each file winning.

    Returns:
        ``({original: entry}, torn)``: ``torn`` counts lines that are not
        whole JSON objects (an interrupted write leaves at most the last one);
        they are ignored.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``manifest`` is a folder.
        ValueError: no line of the file is a dedup manifest entry.
    """
    path = Path(manifest)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a folder; give the {MANIFEST} file in it", str(path))
    entries: dict[str, dict] = {}
    torn = 0
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                e = json.loads(raw)
            except ValueError:
                torn += 1
                continue
            if isinstance(e, dict) and {"original", "moved_to", "sha256"} <= set(e):
                entries[e["original"]] = e
            else:
                torn += 1
    if not entries and torn:
        raise ValueError(f"{path} is not a dedup move manifest (no line names a moved file)")
    return entries, torn


def _restore_problem(e: dict) -> str:
    """Why one manifest entry cannot be moved back ("" when it can)."""
    src, target = Path(e["moved_to"]), Path(e["original"])
    if os.path.lexists(target) and not os.path.lexists(src):
        return "already in place"
    if not os.path.lexists(src):
        return "refused: moved file not found"
    if os.path.lexists(target):
        return "refused: original path is occupied"
    if e.get("link"):
        if not os.path.islink(src) or os.readlink(src) != e["link"]:
            return "refused: link changed since it was moved"
    elif sha256_file(src) != e["sha256"]:
        return "refused: file changed since it was moved"
    return ""


def undo(manifest: str | os.PathLike) -> pd.DataFrame:
    """Put every file listed in a manifest back where it was.

    A file is moved back only when it is still at ``moved_to``, its SHA-256
    (for a moved symlink: its target) matches the manifest, and nothing
    occupies the original path. A torn last line (an interrupted move) is
    ignored and reported.

    Returns:
        DataFrame ``original, status`` (``restored``, ``already in place``,
        ``refused: ...``, ``failed: ...``), plus one ``status`` row
        ``ignored: N torn manifest lines`` when there were any.

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: see :func:`read_manifest`.
    """
    entries, torn = read_manifest(manifest)
    rows = []
    for original, e in entries.items():
        status = _restore_problem(e)
        if not status:
            try:
                Path(original).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(e["moved_to"], original)
                status = "restored"
            except OSError as exc:
                status = f"failed: {exc.strerror or exc}"
        rows.append({"original": printable(original), "status": status})
    if torn:
        rows.append({"original": str(manifest), "status": f"ignored: {torn} torn manifest lines"})
    return pd.DataFrame(rows, columns=["original", "status"])
