"""Sphinx checks for the MTT-LSS companion book.

Sphinx already warns (and `-W` fails the build) when a figure's image, an
included table or a download is missing. This extension adds two checks that
Sphinx does not make:

* every ``figure`` has a caption, so that ``numfig`` gives it a "Fig. N" label;
* the results in ``_generated/`` are not the placeholders written by
  ``tests/book/make_placeholder_generated.py``. Tests that build a temporary
  copy of the book on purpose set ``LSS_BOOK_ALLOW_PLACEHOLDERS=1``.

Both report through Sphinx's logger as warnings, so they fail a ``-W`` build.
"""

from __future__ import annotations

import os
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

logger = logging.getLogger(__name__)

PLACEHOLDER_MARK = "PLACEHOLDER"
ALLOW_ENV = "LSS_BOOK_ALLOW_PLACEHOLDERS"


def _check_placeholders(app) -> None:
    if os.environ.get(ALLOW_ENV) == "1":
        return
    run_info = Path(app.srcdir) / "_generated" / "run_info.md"
    if run_info.is_file() and PLACEHOLDER_MARK in run_info.read_text(encoding="utf8"):
        logger.warning(
            "%s holds placeholder results, not a real run; refusing to build a book "
            "from it (set %s=1 only for tests)",
            run_info,
            ALLOW_ENV,
            type="companion",
            subtype="placeholder",
        )


def _check_figures(app, doctree) -> None:
    for figure in doctree.findall(nodes.figure):
        if not any(isinstance(child, nodes.caption) for child in figure.children):
            logger.warning(
                "figure without a caption gets no 'Fig. N' number",
                location=figure,
                type="companion",
                subtype="figure",
            )


def setup(app):
    app.connect("builder-inited", _check_placeholders)
    app.connect("doctree-read", _check_figures)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
