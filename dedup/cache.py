"""The cache: an embedded SQLite database of per-file results.

Keys are content digests (SHA-256 of the file's bytes), so a renamed or moved
file is still a hit and a changed file is a miss. Embeddings are keyed by
``(digest, backbone, weights_id)``: other weights never reuse a vector.

Results are committed after every batch, so a run killed mid-way (even by
SIGKILL) keeps what it had finished, and the next run starts from there
(SQLite's write-ahead log makes each commit atomic). A cache that fails
SQLite's ``quick_check`` or has an unknown schema is moved aside to
``NAME.corrupt-<time>`` and rebuilt, never trusted; a stored vector of the
wrong length is treated as a miss.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCHEMA_VERSION = "3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stats (path BLOB PRIMARY KEY, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL);
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


class EmbeddingCache:
    """SQLite store of digests, perceptual hashes, colour descriptors and embeddings.

    Args:
        path: the database file (created with its folder if missing).

    Raises:
        sqlite3.OperationalError: the database stays locked by another
            process for more than 30 s.

    The object is a context manager; :meth:`close` commits and closes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rebuilt_from: Path | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    # -- opening and integrity ------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _healthy(self, db: sqlite3.Connection) -> bool:
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            return False
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            empty = all(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0
                        for t in ("stats", "files", "embeddings"))
            if not empty:
                return False
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.commit()
            return True
        return row[0] == SCHEMA_VERSION

    def _open(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            if self._healthy(db):
                return db
            db.close()
            reason = "failed integrity check or has an unknown schema"
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise  # another process holds it: busy is not corrupt, never move it aside
            reason = f"is not a readable SQLite database ({exc})"
        except sqlite3.DatabaseError as exc:
            reason = f"is not a readable SQLite database ({exc})"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("cache %s %s; moved aside to %s and rebuilt", self.path, reason, aside)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                os.replace(p, Path(str(aside) + suffix))
        self.rebuilt_from = aside
        db = self._connect()
        if not self._healthy(db):  # pragma: no cover - a fresh file is always healthy
            raise sqlite3.DatabaseError(f"cannot create cache at {self.path}")
        return db

    def close(self) -> None:
        """Commit and close the database."""
        if self._db is not None:
            self._db.commit()
            self._db.close()
            self._db = None

    def __enter__(self) -> "EmbeddingCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def commit(self) -> None:
        """Make everything stored so far durable."""
        self._db.commit()

    # -- path -> digest --------------------------------------------------
    def get_digest(self, path: bytes, size: int, mtime_ns: int) -> str | None:
        """The SHA-256 stored for ``path`` (``os.fsencode`` bytes, so any file
        name works) if its size and mtime (ns) are unchanged."""
        row = self._db.execute("SELECT size, mtime_ns, digest FROM stats WHERE path=?", (path,)).fetchone()
        if row and row[0] == size and row[1] == mtime_ns:
            return row[2]
        return None

    def put_digest(self, path: bytes, size: int, mtime_ns: int, digest: str) -> None:
        """Remember the SHA-256 of ``path`` (bytes) at this size and mtime (ns)."""
        self._db.execute("INSERT OR REPLACE INTO stats VALUES (?,?,?,?)", (path, size, mtime_ns, digest))

    # -- per-file facts ----------------------------------------------------
    def get_file(self, digest: str) -> dict | None:
        """``{"phash": int, "width", "height", "colour": (k,) float32, "note"}`` or ``None``."""
        row = self._db.execute("SELECT phash, width, height, colour, note FROM files WHERE digest=?",
                               (digest,)).fetchone()
        if row is None:
            return None
        return {"phash": _to_unsigned(row[0]), "width": row[1], "height": row[2],
                "colour": np.frombuffer(row[3], dtype=np.float32).copy(), "note": row[4]}

    def put_file(self, digest: str, phash: int, width: int, height: int, colour: np.ndarray, note: str) -> None:
        """Store one file's pHash (uint64), size in pixels, colour descriptor and decode note."""
        self._db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?)",
                         (digest, _to_signed(int(phash)), int(width), int(height),
                          np.asarray(colour, np.float32).tobytes(), note))

    # -- embeddings ------------------------------------------------------
    def get_embeddings(self, digests: list[str], backbone: str, weights_id: str, dim: int) -> dict[str, np.ndarray]:
        """Stored ``(dim,)`` float32 vectors for those digests; misses are absent."""
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 500):
            chunk = digests[start:start + 500]
            q = ("SELECT digest, vec FROM embeddings WHERE backbone=? AND weights_id=? AND digest IN (%s)"
                 % ",".join("?" * len(chunk)))
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
        ``(digest_a, digest_b)`` pairs (a < b); misses are absent."""
        out = {}
        wanted = set(pairs)
        for start in range(0, len(pairs), 400):
            chunk = pairs[start:start + 400]
            firsts = sorted({a for a, _ in chunk})
            q = ("SELECT a, b, inliers, mismatch FROM verified WHERE method=? AND a IN (%s)"
                 % ",".join("?" * len(firsts)))
            for a, b, v, mm in self._db.execute(q, (method, *firsts)):
                if (a, b) in wanted:
                    out[(a, b)] = (int(v), float(mm))
        return out

    def put_verified(self, values: dict[tuple[str, str], tuple[int, float]], method: str) -> None:
        """Store verification results of digest pairs (a < b) and commit."""
        self._db.executemany("INSERT OR REPLACE INTO verified VALUES (?,?,?,?,?)",
                             [(a, b, method, int(v), float(mm)) for (a, b), (v, mm) in values.items()])
        self._db.commit()

    def get_decisions(self) -> dict[tuple[str, str], bool]:
        """A person's stored decisions: ``{(digest_a, digest_b): same}`` with a < b."""
        return {(a, b): bool(v) for a, b, v in self._db.execute("SELECT a, b, same FROM decisions")}

    def put_decisions(self, values: dict[tuple[str, str], bool]) -> None:
        """Store decisions on digest pairs (a < b), replacing earlier ones, and commit."""
        self._db.executemany("INSERT OR REPLACE INTO decisions VALUES (?,?,?)",
                             [(a, b, int(bool(v))) for (a, b), v in values.items()])
        self._db.commit()

    def get_thumb(self, digest: str, side: int) -> bytes | None:
        """A stored JPEG thumbnail (longest side ``side`` px), or ``None``."""
        row = self._db.execute("SELECT jpeg FROM thumbs WHERE digest=? AND side=?", (digest, side)).fetchone()
        return None if row is None else bytes(row[0])

    def put_thumb(self, digest: str, side: int, jpeg: bytes) -> None:
        """Store a JPEG thumbnail."""
        self._db.execute("INSERT OR REPLACE INTO thumbs VALUES (?,?,?)", (digest, side, jpeg))
