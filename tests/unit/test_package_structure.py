"""The package's shape: no import cycle, every module importable alone, no name switches.

The import graph is read from the source (``ast``): an edge A -> B for every
``import``/``from`` of an lsslib module B in module A, at any depth. A function-level
import of an lsslib module is refused too: that is how a cycle hides.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "lsslib"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """lsslib modules named by an import statement in module ``mod``."""
    out = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = mod.split(".")
        is_pkg = MODULES[mod].name == "__init__.py"
        if node.level:
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    for n in names:
        if n in MODULES and n != mod:
            out.append(n)
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    nested: list[str] = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _resolve(mod, node)
                graph[mod].update(targets)
                if targets and id(node) not in top and not _in_type_checking(tree, node):
                    nested.append(f"{mod}:{node.lineno} imports {targets}")
    return graph, nested


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for n in tree.body:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            if any(node is c for c in ast.walk(n)):
                return True
    return False


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a package's __init__ importing its own submodules is discovery, and a
            # submodule needs its package initialised: not an edge of a cycle
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                found.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_import_graph_has_no_cycle():
    graph, _ = _graph()
    assert sum(len(v) for v in graph.values()) > 20, "the graph reader found no imports"
    assert _cycles(graph) == []


def test_the_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_lsslib_import_hides_inside_a_function():
    _, nested = _graph()
    assert nested == []


IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "lsslib" or m.startswith("lsslib.")]:
        del sys.modules[m]  # third-party packages stay loaded: only lsslib's order matters
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone():
    """Each module imported first, into an interpreter with no lsslib module loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *sorted(MODULES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_no_parameterisation_name_outside_the_registry():
    """Library, notebooks and workflow ask the registry; only its package names them."""
    from lsslib import parameterisations

    names = parameterisations.names()
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(rf"""["']({alternatives})["']""")
    hits = []
    files = [p for p in PKG.rglob("*.py") if "parameterisations" not in p.parts]
    files += sorted((ROOT / "notebooks").glob("*.py")) + [ROOT / "workflow" / "Snakefile"]
    for path in files:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


#: Where a dataset may be named: its unit (``lsslib/datasets/``) and the experiment
#: profiles, which choose one (``lsslib/_profiles/``).
DATASET_HOMES = ("lsslib/datasets", "lsslib/_profiles")


def _docstring_lines(source: str) -> set[int]:
    """Line numbers covered by the module, class and function docstrings of ``source``."""
    tree = ast.parse(source)
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _name_pattern(names: tuple[str, ...]) -> str:
    """A registered name as a whole token: not inside a longer lowercase name or number
    (``cifar10`` is not found in ``cifar100``; ``_`` and ``-`` end a token)."""
    return rf"(^|[^a-z0-9])({'|'.join(map(re.escape, names))})([^a-z0-9]|$)"


def _dataset_name_hits(grep_lines: list[str], sources: dict[str, str]) -> list[str]:
    """``path:line:text`` lines of ``git grep -n`` that are not inside a docstring."""
    hits, docs = [], {}
    for hit in grep_lines:
        path, lineno, text = hit.split(":", 2)
        if path not in docs:
            docs[path] = _docstring_lines(sources[path]) if path.endswith(".py") else set()
        if int(lineno) not in docs[path]:
            hits.append(f"{path}:{lineno}: {text.strip()}")
    return hits


def test_the_dataset_name_rule_tells_code_from_docstrings():
    source = '''"""A module about ``cifar10``."""
x = "cifar10"  # code
def f():
    """Example: ``DataConfig(dataset="svhn")``."""
    return 1  # e.g. svhn
y = "cifar100_a"
'''
    lines = source.splitlines()
    pat = re.compile(_name_pattern(("cifar10", "svhn")))
    grep = [f"m.py:{i}:{t}" for i, t in enumerate(lines, 1) if pat.search(t)]
    assert [h.split(":")[1] for h in _dataset_name_hits(grep, {"m.py": source})] == ["2", "5"]


def test_no_dataset_name_outside_the_registry():
    """Rule: a registered dataset name (exactly as registered, lowercase, as a whole token)
    occurs in ``lsslib/`` only in its unit (``lsslib/datasets/``), in the profiles
    (``lsslib/_profiles/``, which choose one) or in a docstring, where it names an example
    (``DataConfig(dataset=...)``); never in code, a string literal or a comment: the
    library asks :mod:`lsslib.datasets` instead. Spelled titles (``CIFAR-10`` in prose)
    are not names. Tracked and untracked (not ignored) files, through ``git grep``.
    """
    from lsslib import datasets

    names = datasets.names()
    assert {"cifar10", "cifar100", "svhn"} <= set(names)
    excludes = [f":(exclude){home}" for home in DATASET_HOMES]
    proc = subprocess.run(
        ["git", "grep", "--untracked", "-n", "-E", _name_pattern(names), "--", "lsslib", *excludes],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if proc.returncode not in (0, 1):  # 1: no match
        raise AssertionError(f"git grep failed: {proc.stderr}")
    lines = proc.stdout.splitlines()
    sources = {p: (ROOT / p).read_text() for p in {h.split(":", 1)[0] for h in lines}}
    assert _dataset_name_hits(lines, sources) == []
    # the homes do name them (the pattern finds what it is meant to find)
    inside = subprocess.run(
        ["git", "grep", "--untracked", "-l", "-E", _name_pattern(names), "--", *DATASET_HOMES],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert "lsslib/datasets/cifar10.py" in inside.stdout.split()
