"""Sphinx hook of the book's GPU page (``gpu.md``): the last GPU suite run, or "not measured yet".

The page holds the line ``% gpu-results-block`` (a MyST comment, so it shows
nothing without this extension). Before the page is parsed, the line is
replaced by ``records/gpu/summary.md`` -- written by
``python benchmarks/gpu_suite.py --unpack DIR`` from a GPU run's output, with
the device, driver, versions and date -- or, when no GPU run has been
unpacked, by a "not measured yet" admonition. Either way the page builds
without warnings, so the strict ``-W`` build holds with or without GPU records.
The repository root is the folder above the book's source folder (temporary
book copies of the tests have no ``records/`` and get the admonition).
"""

from __future__ import annotations

from pathlib import Path

MARKER = "% gpu-results-block"
PAGE = "gpu"

NOT_MEASURED = (
    ":::{admonition} GPU results: not measured yet\n"
    ":class: warning\n"
    "No run of the GPU suite has been unpacked into this repository "
    "(`records/gpu/summary.md` is absent), so this page has no GPU figures yet. "
    "On an H100 or H200, `bash benchmarks/gpu_suite.sh` writes its output folder; "
    "`python benchmarks/gpu_suite.py --unpack DIR` then copies it into "
    "`benchmarks/records/gpu_*.json` and `records/gpu/`, and the next book build "
    "shows it here.\n"
    ":::\n"
)


def render(root: str | Path) -> str:
    """The Markdown that replaces the marker: ``ROOT/records/gpu/summary.md`` or :data:`NOT_MEASURED`."""
    summary = Path(root) / "records" / "gpu" / "summary.md"
    if summary.is_file():
        return summary.read_text(encoding="utf-8")
    return NOT_MEASURED


def _source_read(app, docname: str, source: list[str]) -> None:
    if docname == PAGE and MARKER in source[0]:
        source[0] = source[0].replace(MARKER, render(Path(app.srcdir).parent))


def setup(app):
    app.connect("source-read", _source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
