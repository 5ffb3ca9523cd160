"""The cache: an embedded SQLite database of per-file results.

Keys are content digests (SHA-256 of the file's bytes), so a renamed or moved
file is still a hit and a changed file is a miss. Embeddings are keyed by
``(digest, backbone, weights_id)``, where the stored ``weights_id`` is the
backbone's :attr:`~dedup.backbones.base.Backbone.cache_id` (weights and
inference runtime): other weights, or another runtime, never reuse a vector.

Results are committed after every batch, so a run killed mid-way (even by
SIGKILL) keeps what it had finished, and the next run starts from there
(SQLite's write-ahead log makes each commit atomic).

What the cache trusts, and what it refuses:

* A file's digest is reused only while its path, size, mtime, inode change
  time (``st_ctime_ns``) and inode number are all unchanged. Overwriting a
  file while keeping its size and mtime (``touch -r``, ``rsync --times``, a
  restored backup) still changes its ctime, which no user tool can set back,
  so the file is hashed again.
* An SQLite database whose pages fail ``quick_check`` is moved aside to
  ``NAME.corrupt-<time>`` and rebuilt, never trusted. Anything else is left
  alone and refused with a :class:`CacheError`: a folder, a file that is not
  an SQLite database, another program's SQLite database, or a cache that
  cannot be opened or written (disk full, read-only, permissions).
* A cache of the previous schema (3) is upgraded in place: its path->digest
  table is dropped (it lacked the ctime and inode), everything keyed by
  content is kept.
* A stored vector of the wrong length is treated as a miss.
* While a :class:`Cache` is open, its process holds an exclusive
  lock (``NAME.lock``); a second run on the same cache fails at once with
  :class:`dedup.lock.BusyError` instead of interleaving with the first.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = "4"
#: Older schemas upgraded in place (tables keyed by path are rebuilt).
_UPGRADABLE = {"3": ("stats",)}
#: The first 16 bytes of every SQLite 3 database file (sqlite.org/fileformat.html).
SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (path BLOB PRIMARY KEY, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failed (digest TEXT NOT NULL, decoder TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (digest, decoder));
CREATE TABLE IF NOT EXISTS files (digest TEXT PRIMARY KEY, phash INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, colour BLOB NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verified (a TEXT NOT NULL, b TEXT NOT NULL, method TEXT NOT NULL,
    inliers INTEGER NOT NULL, mismatch REAL NOT NULL, PRIMARY KEY (a, b, method));
CREATE TABLE IF NOT EXISTS thumbs (digest TEXT NOT NULL, side INTEGER NOT NULL, jpeg BLOB NOT NULL,
    PRIMARY KEY (digest, side));
CREATE TABLE IF NOT EXISTS decisions (a TEXT NOT NULL, b TEXT NOT NULL, same INTEGER NOT NULL,
    PRIMARY KEY (a, b));
CREATE TABLE IF NOT EXISTS embeddings (digest TEXT NOT NULL, backbone TEXT NOT NULL,
    weights_id TEXT NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (digest, backbone, weights_id));
"""


def _to_signed(u: int) -> int:
    return u - (1 << 64) if u >= (1 << 63) else u


def _to_unsigned(s: int) -> int:
    return s + (1 << 64) if s < 0 else s


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """What identifies an unchanged file: size, mtime and ctime (ns), inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class CacheError(RuntimeError):
    """The cache path cannot be used; ``str(err)`` names the path and the cause."""


class Cache:
    """SQLite store of digests, perceptual hashes, colour descriptors and embeddings.

    Args:
        path: the database file (created with its folder if missing).

    Raises:
        CacheError: ``path`` is a folder, is not an SQLite database, is
            another program's database, or cannot be opened or written
            (the message says which; nothing is moved or changed then).
        dedup.lock.BusyError: another run holds this cache.

    The object is a context manager; :meth:`close` commits and closes.
    """

    def __init__(self, path: str | os.PathLike):
        from .lock import Lock

        self.path = Path(path)
        self.rebuilt_from: Path | None = None
        if self.path.exists() and not self.path.is_file():
            raise CacheError(f"cache {self.path} is not a file; choose another --cache path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = Lock(str(self.path) + ".lock", f"cache {self.path}").acquire()
        except OSError as exc:
            raise CacheError(f"cannot use cache {self.path}: {exc.strerror or exc}") from None
        self._closed = False
        try:
            self._db = self._open()
        except BaseException:
            self._lock.release()
            raise

    # -- opening and integrity ------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.path), timeout=30)

    def _refuse_foreign_file(self) -> None:
        """A non-empty file that is not SQLite is someone's data: never touch it."""
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:
                head = fh.read(len(SQLITE_HEADER))
            if head != SQLITE_HEADER:
                raise CacheError(
                    f"{self.path} is not a dedup cache (not an SQLite database); it was left "
                    "untouched: choose another --cache path"
                )

    def _prepare(self, db: sqlite3.Connection) -> bool:
        """Check and, where needed, create or upgrade the schema.

        Returns:
            False when the pages fail ``quick_check`` (corrupt).

        Raises:
            CacheError: another program's database or an unknown schema.
        """
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return False
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            version = row[0] if row else None
        if version is None and tables:
            raise CacheError(
                f"{self.path} is an SQLite database but not a dedup cache; it was left untouched: "
                "choose another --cache path"
            )
        if version not in (None, SCHEMA_VERSION, *_UPGRADABLE):
            raise CacheError(
                f"{self.path} is a dedup cache of schema {version} (this version reads "
                f"{SCHEMA_VERSION}); choose another --cache path or remove it"
            )
        db.execute("PRAGMA journal_mode=WAL")  # only now: it rewrites the file's header
        db.execute("PRAGMA synchronous=NORMAL")
        for table in _UPGRADABLE.get(version or "", ()):
            db.execute(f"DROP TABLE IF EXISTS {table}")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        db.commit()
        return True

    def _open(self) -> sqlite3.Connection:
        self._refuse_foreign_file()
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            if self._prepare(db):
                return db
            db.close()
            reason = "failed SQLite's integrity check"
        except CacheError:
            if db is not None:
                db.close()
            raise
        except sqlite3.OperationalError as exc:  # full disk, read-only, permissions, busy: not corruption
            if db is not None:
                db.close()
            raise CacheError(f"cannot open cache {self.path}: {exc}; it was left untouched") from None
        except sqlite3.DatabaseError as exc:  # malformed pages behind a valid SQLite header
            if db is not None:
                db.close()
            reason = f"is corrupt ({exc})"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("cache %s %s; moved aside to %s and rebuilt", self.path, reason, aside)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.replace(p, Path(str(aside) + suffix))
        self.rebuilt_from = aside
        try:
            db = self._connect()
            self._prepare(db)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot create cache {self.path}: {exc}") from None
        return db

    def close(self) -> None:
        """Commit and close the database."""
        if not self._closed:
            try:
                self._db.commit()
                self._db.close()
            finally:
                self._closed = True
                self._lock.release()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def commit(self) -> None:
        """Make everything stored so far durable."""
        self._db.commit()

    # -- path -> digest --------------------------------------------------
    def get_digests(self, paths: list[bytes], stats: list[os.stat_result | None]) -> list[str | None]:
        """The SHA-256 stored for each path (``os.fsencode`` bytes, so any file
        name works) where its size, mtime, ctime (ns) and inode are all
        unchanged, else ``None`` (also where ``stats`` is); 500 paths per query."""
        stored: dict[bytes, tuple] = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start : start + 500]
            q = "SELECT path, size, mtime_ns, ctime_ns, inode, digest FROM stats WHERE path IN (%s)" % ",".join(
                "?" * len(chunk)
            )
            for row in self._db.execute(q, chunk):
                stored[bytes(row[0])] = row[1:]
        out: list[str | None] = []
        for p, st in zip(paths, stats):
            row = stored.get(p)
            out.append(row[4] if row is not None and st is not None and tuple(row[:4]) == _stat_key(st) else None)
        return out

    def put_digest(self, path: bytes, stat: os.stat_result, digest: str) -> None:
        """Remember the SHA-256 of ``path`` (bytes) for this ``os.stat`` result."""
        self._db.execute("INSERT OR REPLACE INTO stats VALUES (?,?,?,?,?,?)", (path, *_stat_key(stat), digest))

    def forget_digest(self, path: bytes) -> None:
        """Drop what is stored for ``path`` (its content changed while it was read)."""
        self._db.execute("DELETE FROM stats WHERE path=?", (path,))

    # -- files that cannot be decoded -------------------------------------
    def get_failed(self, digests: list[str], decoder: str) -> dict[str, str]:
        """Skip reasons stored for contents this ``decoder`` version failed on."""
        out: dict[str, str] = {}
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            q = "SELECT digest, reason FROM failed WHERE decoder=? AND digest IN (%s)" % ",".join("?" * len(chunk))
            out.update(dict(self._db.execute(q, (decoder, *chunk)).fetchall()))
        return out

    def put_failed(self, digest: str, decoder: str, reason: str) -> None:
        """Remember that ``decoder`` cannot decode this content (so a warm run skips it at once)."""
        self._db.execute("INSERT OR REPLACE INTO failed VALUES (?,?,?)", (digest, decoder, reason))

    # -- per-file facts ----------------------------------------------------
    def get_files(self, digests: list[str]) -> dict[str, dict]:
        """:meth:`get_file` for many digests, 500 per query (misses are absent)."""
        out: dict[str, dict] = {}
        uniq = sorted(set(digests))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start : start + 500]
            q = "SELECT digest, phash, width, height, colour, note FROM files WHERE digest IN (%s)" % ",".join(
                "?" * len(chunk)
            )
            for d, ph, w, h, colour, note in self._db.execute(q, chunk):
                out[d] = {
                    "phash": _to_unsigned(ph),
                    "width": w,
                    "height": h,
                    "colour": np.frombuffer(colour, dtype=np.float32).copy(),
                    "note": note,
                }
        return out

    def get_file(self, digest: str) -> dict | None:
        """``{"phash": int, "width", "height", "colour": (k,) float32, "note"}`` or ``None``."""
        return self.get_files([digest]).get(digest)

    def put_file(self, digest: str, phash: int, width: int, height: int, colour: np.ndarray, note: str) -> None:
        """Store one file's pHash (uint64), size in pixels, colour evidence
        (float32, the stored form of :func:`dedup.colour.pack`) and decode note."""
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
            (digest, _to_signed(int(phash)), int(width), int(height), np.asarray(colour, np.float32).tobytes(), note),
        )

    # -- embeddings ------------------------------------------------------
    def get_embeddings(self, digests: list[str], backbone: str, weights_id: str, dim: int) -> dict[str, np.ndarray]:
        """Stored ``(dim,)`` float32 vectors for those digests; misses are absent."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            q = "SELECT digest, vec FROM embeddings WHERE backbone=? AND weights_id=? AND digest IN (%s)" % ",".join(
                "?" * len(chunk)
            )
            for digest, blob in self._db.execute(q, (backbone, weights_id, *chunk)):
                if len(blob) == dim * 4:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if np.all(np.isfinite(vec)):
                        out[digest] = vec.copy()
        return out

    def put_embeddings(self, digests: list[str], backbone: str, weights_id: str, vecs: np.ndarray) -> None:
        """Store ``(n, dim)`` float32 vectors, one per digest, and commit."""
        rows = [(d, backbone, weights_id, np.asarray(v, np.float32).tobytes()) for d, v in zip(digests, vecs)]
        self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?,?,?,?)", rows)
        self._db.commit()

    # -- geometric verification and thumbnails ------------------------------
    def get_verified(self, pairs: list[tuple[str, str]], method: str) -> dict[tuple[str, str], tuple[int, float]]:
        """Stored verification results ``(inliers, colour mismatch)`` for
        ``(digest_a, digest_b)`` pairs, in the order verified (a pair and its
        reverse are two entries); misses are absent."""
        out = {}
        wanted = set(pairs)
        for start in range(0, len(pairs), 400):
            chunk = pairs[start : start + 400]
            firsts = sorted({a for a, _ in chunk})
            q = "SELECT a, b, inliers, mismatch FROM verified WHERE method=? AND a IN (%s)" % ",".join(
                "?" * len(firsts)
            )
            for a, b, v, mm in self._db.execute(q, (method, *firsts)):
                if (a, b) in wanted:
                    out[(a, b)] = (int(v), float(mm))
        return out

    def put_verified(self, values: dict[tuple[str, str], tuple[int, float]], method: str) -> None:
        """Store verification results of ordered digest pairs and commit."""
        self._db.executemany(
            "INSERT OR REPLACE INTO verified VALUES (?,?,?,?,?)",
            [(a, b, method, int(v), float(mm)) for (a, b), (v, mm) in values.items()],
        )
        self._db.commit()

    def get_decisions(self) -> dict[tuple[str, str], bool]:
        """A person's stored decisions: ``{(digest_a, digest_b): same}`` with a < b."""
        return {(a, b): bool(v) for a, b, v in self._db.execute("SELECT a, b, same FROM decisions")}

    def put_decisions(self, values: dict[tuple[str, str], bool]) -> None:
        """Store decisions on digest pairs (a < b), replacing earlier ones, and commit."""
        self._db.executemany(
            "INSERT OR REPLACE INTO decisions VALUES (?,?,?)", [(a, b, int(bool(v))) for (a, b), v in values.items()]
        )
        self._db.commit()

    def get_thumb(self, digest: str, side: int) -> bytes | None:
        """A stored JPEG thumbnail (longest side ``side`` px), or ``None``."""
        row = self._db.execute("SELECT jpeg FROM thumbs WHERE digest=? AND side=?", (digest, side)).fetchone()
        return None if row is None else bytes(row[0])

    def put_thumb(self, digest: str, side: int, jpeg: bytes) -> None:
        """Store a JPEG thumbnail."""
        self._db.execute("INSERT OR REPLACE INTO thumbs VALUES (?,?,?)", (digest, side, jpeg))
