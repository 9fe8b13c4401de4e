"""Papermill parameters a stage notebook does not declare are errors, not warnings.

Papermill runs a notebook with ``-p NAME VALUE`` by inserting, right after the cell
tagged ``parameters``, a cell of assignments that starts with the comment
``# Parameters``. A name that the parameters cell does not declare (a typo such as
``num_evals`` for ``num_eval``) only draws papermill's warning, and the run would go
on with the default. :func:`refuse_unknown` reads both cells from the kernel's input
history (IPython's ``In``) and refuses such names, naming the closest declared one,
before the notebook does any work.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["INJECTED_MARK", "assigned_names", "check_names", "refuse_unknown"]

#: The first line of the cell papermill injects (its Python translator's comment).
INJECTED_MARK = "# Parameters"


def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at its top level (``x = ...``, ``x: T = ...``), in order.

    Raises:
        SyntaxError: ``source`` is not Python.
    """
    names: list[str] = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def check_names(given: Iterable[str], declared: Sequence[str]) -> None:
    """Refuse every name of ``given`` that ``declared`` lacks.

    Raises:
        ValueError: the first unknown name, the closest declared one ("did you mean")
            and the declared names.
    """
    for name in given:
        if name in declared:
            continue
        close = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown parameter {name!r}: {hint}this notebook declares "
            + ", ".join(sorted(declared))
        )


def refuse_unknown(namespace: Mapping[str, Any]) -> None:
    """Check the parameters papermill injected into a notebook against the ones its
    ``parameters`` cell declares. Does nothing outside IPython or when nothing was
    injected (a notebook run by hand, or in Colab).

    Args:
        namespace: the notebook's ``globals()``; its ``In`` is IPython's input history.

    Raises:
        ValueError: an injected name that the parameters cell does not declare.
    """
    history = namespace.get("In")
    if not isinstance(history, list):
        return
    for k in range(len(history) - 1, 0, -1):
        cell = history[k]
        if isinstance(cell, str) and cell.lstrip().startswith(INJECTED_MARK):
            check_names(assigned_names(cell), assigned_names(history[k - 1]))
            return
