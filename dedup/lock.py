"""Exclusive locks on a run's output folder and cache.

Two runs writing one output folder or one cache would interleave their files
(a garbled ``groups.csv``, an index of one run beside the table of the
other). Each holds an advisory ``flock`` (POSIX; the lock dies with the
process, so a run killed by SIGKILL never leaves a stale lock) on a small
lock file for its whole duration, and a second run fails at once with a
message naming the holder, rather than waiting without a word.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class BusyError(RuntimeError):
    """Another process holds the lock; ``str(err)`` is a one-line message."""


class Lock:
    """An exclusive, non-blocking lock held on ``path`` (created if missing).

    Args:
        path: the lock file; its content is the holder's process id.
        what: what is locked, for the message (``"output folder dedup-out"``).

    Raises:
        BusyError: on :meth:`acquire` when another process holds the lock.
        OSError: the lock file cannot be created (read-only folder, ...).

    Use as a context manager; re-entrant within one object.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what = Path(path), what
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> "Lock":
        """Take the lock or raise :class:`BusyError` at once."""
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise BusyError(
                    f"{self.what} is in use by another dedup run (pid {holder}); wait for it to "
                    "finish or choose another"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._fd = fd
        self._depth += 1
        return self

    def release(self) -> None:
        """Give the lock back (the lock file stays; it is harmless)."""
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
