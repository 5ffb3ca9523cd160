"""Stage 1, discover: find the image files under a folder, by content.

A file is an image candidate when its first bytes carry a known image
signature (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM/PGM/PBM, HEIF/AVIF) or, failing
that, when Pillow recognises it; its extension is never trusted (a JPEG named
``.svg`` is found, a text file named ``.jpg`` is skipped).

Everything that is not taken is returned as a :class:`Skipped` record with a
reason, so that the report can list it; nothing here raises for a bad file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Magic numbers from each format's specification (JPEG/JFIF, PNG, GIF87a/89a,
# BMP, TIFF 6.0, RIFF WebP, Netpbm, ISO-BMFF 'ftyp' brands for HEIF/AVIF).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WEBP"),
)
_NETPBM = {b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}


@dataclass(frozen=True)
class Skipped:
    """A file the run did not use, and why.

    Attributes:
        path: the file's path as found (absolute or as given).
        reason: one line a person can act on, e.g. ``"empty file (0 bytes)"``.
    """

    path: Path
    reason: str


def printable(path: str | os.PathLike) -> str:
    """A path as a string that can always be written as UTF-8: bytes of a
    name that is not valid UTF-8 (surrogate-escaped by ``os.fsdecode``) are
    shown as backslash escapes. For reports only; act on files through the
    original ``Path``."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def is_url(path) -> bool:
    """Whether a source entry is a URL read through fsspec (``s3://``,
    ``https://``, ...) rather than a local path; ``file://`` URIs count as
    local. Only a ``str`` can be a URL (``Path`` collapses the ``//``)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def row_files(paths, root: str | os.PathLike, files: list | None = None) -> list:
    """Each report row's source: ``files[i]`` when the run's files are given
    (``Result.files``: a ``Path``, or a URL kept as its ``str``), else
    ``root / paths[i]``.

    Args:
        paths: the rows' paths relative to ``root`` (``groups.csv``'s ``path``).
        root: the catalogue folder; files: the run's files, one per row, or ``None``.

    Returns:
        A list of ``Path`` or URL ``str``, one per row.
    """
    if files is not None:
        return [f if is_url(f) else Path(f) for f in files]
    return [Path(root) / p for p in paths]


#: Environment variable naming the folder of the running job's download
#: spool (:func:`download_spool`); an environment variable, so that decoding
#: worker processes share the spool of the run that started them.
SPOOL_ENV = "DEDUP_DOWNLOAD_SPOOL"
#: A download is kept in the spool only while its file system keeps at least
#: this many bytes free, and a tenth of its size, so a spool never fills a disk.
SPOOL_MIN_FREE = 2 * 2**30


@contextmanager
def download_spool(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """For its duration, each URL that :func:`read_source` reads is
    downloaded once: the bytes are kept in a temporary folder and read from
    there by every later stage (the SHA-256 pass, decoding, geometric
    verification and the gallery each read a URL's image). The folder and
    everything in it is removed on exit. Nested spools share the outer one.

    Args:
        parent: where the temporary folder is made (default: the system's
            temporary folder).

    Yields:
        The spool folder.
    """
    import tempfile

    if os.environ.get(SPOOL_ENV):
        yield Path(os.environ[SPOOL_ENV])
        return
    with tempfile.TemporaryDirectory(prefix="dedup-downloads-", dir=parent) as folder:
        os.environ[SPOOL_ENV] = folder
        try:
            yield Path(folder)
        finally:
            os.environ.pop(SPOOL_ENV, None)


def _spooled(url: str) -> Path | None:
    """The spool file of ``url`` in the active spool, or ``None`` without one."""
    import hashlib

    folder = os.environ.get(SPOOL_ENV)
    return Path(folder) / hashlib.sha256(url.encode("utf-8")).hexdigest() if folder else None


def _keep(spooled: Path, data: bytes) -> None:
    """Keep a download in the spool (atomically: a complete file or none),
    unless the disk is nearly full or the spool is gone."""
    import shutil

    try:
        disk = shutil.disk_usage(spooled.parent)
        if disk.free - len(data) < max(SPOOL_MIN_FREE, disk.total // 10):
            return
        part = spooled.with_name(f"{spooled.name}.{os.getpid()}.{threading.get_ident()}.part")
        part.write_bytes(data)
        os.replace(part, spooled)
    except OSError:  # a spool that cannot keep a file only costs a second download
        pass


def read_source(path) -> bytes:
    """A source file's bytes: a local path, a ``file://`` URI, or any URL
    fsspec opens (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``,
    ``https://``, with that protocol's fsspec package installed, e.g.
    ``s3fs``, or ``aiohttp`` for HTTP). Within :func:`download_spool`, a URL
    is downloaded once and read from the spool afterwards.

    Raises:
        OSError: the file cannot be read (for a URL, any error of fsspec or
            of its protocol package, the message naming it).
    """
    if not is_url(path):
        with open(str(path).removeprefix("file://") if isinstance(path, str) else path, "rb") as f:
            return f.read()
    spooled = _spooled(path)
    if spooled is not None:
        try:
            return spooled.read_bytes()
        except OSError:
            pass  # not downloaded yet
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing protocol package or a remote error is an unreadable file
        raise OSError(f"{type(exc).__name__}: {exc}") from None
    if spooled is not None:
        _keep(spooled, data)
    return data


def sniff_format(head: bytes) -> str | None:
    """Name the image format of a file from its first bytes, or ``None``.

    Args:
        head: the file's first 32 bytes (fewer for a short file).

    Returns:
        ``"JPEG"``, ``"PNG"``, ``"GIF"``, ``"BMP"``, ``"TIFF"``, ``"WEBP"``,
        ``"PNM"`` or ``"HEIF"``; ``None`` when no signature matches.
    """
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    if head[:2] in _NETPBM and len(head) > 2 and head[2:3].isspace():
        return "PNM"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def _classify(path: Path) -> str | None:
    """Return ``None`` when ``path`` looks like an image, else a skip reason."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if sniff_format(head) is not None:
        return None
    # Last resort: let Pillow's plugins look (ICO, TGA, ...); header only.
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.format  # noqa: B018 - identifying is enough
        return None
    except Exception:  # any failure means: not an image we can read
        return "not an image: content matches no known image format"


def _keep_dirs(here: Path, dirnames: list[str], include_hidden: bool, skipped: list[Skipped]) -> list[str]:
    """The sub-folders to walk, sorted; hidden ones are listed as skipped."""
    kept = []
    for d in sorted(dirnames):
        if d.startswith(".") and not include_hidden:
            skipped.append(Skipped(here / d, "hidden folder (name starts with '.'): not searched"))
        else:
            kept.append(d)
    return kept


def _file_reason(path: Path, name: str, include_hidden: bool) -> str | None:
    """Why a file found by the walk is not taken, or ``None`` when it is an image."""
    if name.startswith(".") and not include_hidden:
        return "hidden file"
    if path.is_symlink() and not path.exists():
        return "broken symlink"
    if not path.is_file():
        return "not a regular file"
    return _classify(path)


def discover(
    root: str | os.PathLike, *, include_hidden: bool = False, workers: int = 8
) -> tuple[list[Path], list[Skipped]]:
    """Walk ``root`` recursively and split its files into images and skips.

    Symlinked folders are followed once; a folder reached again through a
    symlink loop is skipped with a reason. Hidden files and folders (name
    starting with ``.``) are skipped unless ``include_hidden``. The walk
    lists folders in one thread; each file's checks (stat, open, the first
    bytes) run in ``workers`` threads, which is what a network file system
    needs (the calls wait on I/O, not the CPU). The result does not depend on
    ``workers``.

    Args:
        root: the folder to walk (a single file is also accepted).
        include_hidden: take hidden files and folders too.
        workers: threads checking files (>= 1).

    Returns:
        ``(images, skipped)``: image paths sorted by their path relative to
        ``root``, and the files not taken with their reasons.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is neither a folder nor a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such folder: {root}")
    if root.is_file():
        reason = _classify(root)
        return ([root], []) if reason is None else ([], [Skipped(root, reason)])
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")

    files: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    seen_dirs: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        skipped.append(Skipped(Path(exc.filename or root), f"unreadable folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        here = Path(dirpath)
        try:
            st = here.stat()
        except OSError as exc:
            skipped.append(Skipped(here, f"unreadable folder: {exc.strerror or exc}"))
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            skipped.append(Skipped(here, "folder already visited (symlink loop or duplicate link)"))
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        dirnames[:] = _keep_dirs(here, dirnames, include_hidden, skipped)
        files += [(here / name, name) for name in sorted(filenames)]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        reasons = list(ex.map(lambda f: _file_reason(f[0], f[1], include_hidden), files))
    images = [path for (path, _), reason in zip(files, reasons) if reason is None]
    skipped += [Skipped(path, reason) for (path, _), reason in zip(files, reasons) if reason is not None]
    images.sort(key=lambda p: p.relative_to(root).as_posix())
    log.info("discovered %d image files, skipped %d", len(images), len(skipped))
    return images, skipped


_GLOB_CHARS = ("*", "?", "[")


def resolve_source(
    source: str | os.PathLike | None, manifest: str | os.PathLike | None = None, image_col: str = "path"
) -> tuple[Path, list[Path | str] | None]:
    """What a run reads: a folder, a glob, or a manifest table of image paths.

    Args:
        source: a folder (walked recursively), or a glob pattern (``**``
            recursive, as :func:`glob.glob`); ignored with ``manifest``.
        manifest: a Parquet (``.parquet``, ``.pq``) or CSV table with one
            row per image, read by pandas (so any fsspec URL pandas reads,
            ``s3://`` included, with that protocol's package installed).
        image_col: the manifest's column of image paths: absolute, or
            relative to the manifest's folder (to the current folder when
            the manifest itself is remote); ``file://`` URIs are taken as
            local paths. A row with no path (empty or missing) is skipped
            with a logged warning that counts such rows.

    Returns:
        ``(root, files)``: the folder paths are reported relative to, and
        the files to run on (``None``: walk ``root``): ``Path`` objects, and
        URLs as ``str`` (reported as they are).

    Raises:
        NotADirectoryError: ``source`` is neither a folder nor a glob.
        FileNotFoundError: the manifest does not exist, or a glob matches
            no file.
        ValueError: ``image_col`` is not a column of the manifest.

    A manifest's entries may be URLs (``s3://...``, ``https://...``): they
    are kept as ``str`` and read through fsspec (:func:`read_source`) by
    every stage that needs their bytes: hashing, decoding, verification and
    the gallery (each reads the file again; with the Spark engine the
    executors do the first two).
    """
    import glob

    if manifest is not None:
        import pandas as pd

        text = str(manifest)
        remote = "://" in text and not text.startswith("file://")
        if not remote and not Path(text.removeprefix("file://")).is_file():
            raise FileNotFoundError(f"no such manifest: {manifest}")
        table = pd.read_parquet(text) if text.lower().endswith((".parquet", ".pq")) else pd.read_csv(text)
        if image_col not in table.columns:
            raise ValueError(
                f"manifest {manifest} has no column {image_col!r}; its columns: {', '.join(table.columns)}"
            )
        root = Path(".") if remote else Path(text.removeprefix("file://")).resolve().parent
        values = table[image_col].astype("string")
        blank = (values.isna() | (values.str.strip() == "")).to_numpy(bool)
        if blank.any():
            log.warning(
                "manifest %s: %d rows have no image path in column %r (first: row %d of the table); skipped",
                manifest,
                int(blank.sum()),
                image_col,
                int(blank.argmax()) + 1,
            )
        files: list[Path | str] = []
        for value in values[~blank]:
            if is_url(value):
                files.append(value)
                continue
            p = Path(value.removeprefix("file://"))
            files.append(p if p.is_absolute() else root / p)
        return root, files
    if source is None:
        raise ValueError("resolve_source: give a folder, a glob or a manifest")
    text = str(source)
    if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
        parts = Path(text).parts
        fixed = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        if not files:
            raise FileNotFoundError(f"no file matches {text}")
        return root, files
    root = Path(text)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root, None
