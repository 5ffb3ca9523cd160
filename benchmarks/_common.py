"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    import os

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename: never a half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(name: str, data: dict, markdown: str) -> None:
    """Write ``results/NAME.json`` and ``results/NAME.md`` (each whole or not at all)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write_whole(RESULTS / f"{name}.json", json.dumps(data, indent=2, default=str))
    _write_whole(RESULTS / f"{name}.md", markdown)
    print(markdown)


def replace_readme_block(name: str, text: str) -> None:
    """Replace the text between ``<!-- NAME:START -->`` and ``<!-- NAME:END -->`` in README.md."""
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    path = ROOT / "README.md"
    content = path.read_text()
    if start in content and end in content:
        head, rest = content.split(start, 1)
        _, tail = rest.split(end, 1)
        _write_whole(path, f"{head}{start}\n{text}\n{end}{tail}")
