"""The strict book build must fail when a figure from the pipeline is missing.

Builds a temporary copy of the book against placeholder results (never the real
book/_generated): once complete, as a control, and once with one figure removed.
"""

from __future__ import annotations

from bookhelpers import build_copy, copy_book
from make_placeholder_generated import FIGURES, write_placeholders


def _tail(proc) -> str:
    return (proc.stdout + proc.stderr)[-3000:]


def test_build_fails_on_missing_figure(tmp_path):
    root = copy_book(tmp_path / "book_copy")
    generated = root / "book" / "_generated"
    write_placeholders(generated)

    ok = build_copy(root)
    assert ok.returncode == 0, "control build with every placeholder failed:\n" + _tail(ok)
    assert (root / "_build" / "html" / "results.html").is_file()

    missing = generated / "figures" / f"{FIGURES[-1]}.png"
    missing.unlink()
    broken = build_copy(root)
    out = broken.stdout + broken.stderr
    assert broken.returncode != 0, "build passed with a missing figure:\n" + _tail(broken)
    assert "image file not readable" in out and missing.name in out, _tail(broken)


def test_build_refuses_missing_results(tmp_path):
    """No _generated/ at all: build.sh stops early with a clear message."""
    root = copy_book(tmp_path / "book_copy")
    proc = build_copy(root, timeout=60)
    assert proc.returncode != 0
    assert "holds no results" in proc.stderr
