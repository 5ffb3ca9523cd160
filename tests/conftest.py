"""Shared fixtures: the labelled benchmark sets in ../shared/bench and
session-scoped runs of the main job on them (each run once per test session)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_set(name: str) -> Path:
    path = BENCH / name
    assert (path / "labels.csv").is_file(), f"benchmark set missing: {path} (../shared must sit beside the repo)"
    return path


def labels_of(name: str) -> pd.DataFrame:
    return pd.read_csv(bench_set(name) / "labels.csv")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m dedup ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dedup", *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> digest)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def http_images():
    """products-flipkart/images served over HTTP on localhost (a thread of
    Python's http.server): ``(base URL, folder)``; a remote catalogue for
    manifests of URLs, read through fsspec (aiohttp) as s3:// or https:// is.
    Yields ``(base URL, folder, downloads)``: ``downloads`` counts the GET
    requests answered per URL path (a ``collections.Counter``; clear it first)."""
    import functools
    import threading
    from collections import Counter
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = bench_set("products-flipkart") / "images"
    downloads: Counter = Counter()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: D401 - keep the test output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            downloads[self.path] += 1
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder, downloads
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def flipkart_run(tmp_path_factory):
    """The CLI run on products-flipkart/images: (completed process, out folder)."""
    out = tmp_path_factory.mktemp("flipkart-out")
    proc = run_cli("run", str(bench_set("products-flipkart") / "images"), "--out", str(out), "--quiet")
    return proc, out


@pytest.fixture(scope="session")
def robustness_run(tmp_path_factory):
    """The CLI run on robustness/images: (completed process, out folder)."""
    out = tmp_path_factory.mktemp("robustness-out")
    proc = run_cli("run", str(bench_set("robustness") / "images"), "--out", str(out), "--quiet")
    return proc, out
