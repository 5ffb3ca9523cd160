"""Stage 2, digest: the SHA-256 of every file, reused from the cache when the
file is provably unchanged.

The digest names a file's content everywhere else (cache keys, byte-identical
duplicates, a reviewer's decisions). A stored digest is reused only while the
file's path, size, mtime, ctime and inode are all unchanged (see
:mod:`dedup.cache`); every other file is read and hashed, in threads
(``hashlib`` releases the GIL on large buffers). The decode stage hashes the
bytes it decodes again and drops a file whose content changed in between, so
a digest and the pixels stored under it always come from the same bytes.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from .cache import Cache
from .discover import is_url, read_source
from .hashing import sha256_file


def cache_key(path: Path | str) -> bytes:
    """The cache's key for a file: its resolved path as bytes (any name
    works), or a URL's text."""
    return str(path).encode("utf-8") if is_url(path) else os.fsencode(Path(path).resolve())


def _stats(paths: list, out: list) -> list[os.stat_result | None]:
    """Each local file's ``stat`` (``None`` for a URL: no stat to trust, so a
    URL is hashed from its bytes on every run); a failure goes to ``out``."""
    stats: list[os.stat_result | None] = [None] * len(paths)
    for i, p in enumerate(paths):
        if is_url(p):
            continue
        try:
            stats[i] = p.stat()
        except OSError as exc:
            out[i] = exc
    return stats


def digest_files(
    paths: list, cache: Cache | None = None, workers: int = 2, progress: bool = True
) -> list[str | OSError]:
    """SHA-256 of each file.

    Args:
        paths: the files: ``Path`` objects, or URLs as ``str`` (read through
            fsspec and hashed on every run).
        cache: where digests of unchanged files are looked up and new ones
            stored (committed at the end); ``None`` hashes everything.
        workers: hashing threads (>= 1).
        progress: show a tqdm bar.

    Returns:
        One entry per path: 64 lowercase hex characters, or the ``OSError``
        that made the file unreadable (never raised).
    """
    out: list[str | OSError | None] = [None] * len(paths)
    stats = _stats(paths, out)
    if cache is not None:
        keys = [cache_key(p) if st is not None else b"" for p, st in zip(paths, stats)]
        for i, digest in enumerate(cache.get_digests(keys, stats)):
            if digest is not None and stats[i] is not None:
                out[i] = digest
    todo = [i for i in range(len(paths)) if out[i] is None]

    def one(i: int) -> str | OSError:
        try:
            if is_url(paths[i]):
                return hashlib.sha256(read_source(paths[i])).hexdigest()
            return sha256_file(paths[i])
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max(1, workers)) as ex:
        done = tqdm(ex.map(one, todo), total=len(todo), desc="sha256", disable=not progress, unit="img")
        for i, digest in zip(todo, done):
            out[i] = digest
            if cache is not None and isinstance(digest, str) and stats[i] is not None:
                cache.put_digest(cache_key(paths[i]), stats[i], digest)  # type: ignore[arg-type]
    if cache is not None:
        cache.commit()
    return [d if d is not None else OSError("not hashed") for d in out]
