"""Shared helpers for the book tests: find the tools, build a throw-away copy of the book."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def jupyter_book_exe() -> str:
    """The jupyter-book next to the running interpreter, else the one on PATH."""
    candidate = Path(sys.executable).parent / "jupyter-book"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed (pip install 'jupyter-book>=1.0.4.post1,<2')")
    return found


def copy_book(dest: Path) -> Path:
    """Copy _config.yml and book/ (without results or build output) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "_config.yml", dest / "_config.yml")
    shutil.copytree(
        REPO / "book",
        dest / "book",
        ignore=shutil.ignore_patterns("_generated", "_build", "__pycache__"),
    )
    return dest


def build_copy(root: Path, timeout: int = 170) -> subprocess.CompletedProcess:
    env = dict(os.environ, JUPYTER_BOOK=jupyter_book_exe(), LSS_BOOK_ALLOW_PLACEHOLDERS="1")
    return subprocess.run(
        ["bash", str(root / "book" / "build.sh")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
