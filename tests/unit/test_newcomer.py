"""The README's test command works for someone who sets nothing.

`make test` must find the offline data by itself, hand it on to what it starts, and
fail (not pass quietly) when a test had to skip for lack of it; `.ci/run` may set
nothing that the Makefile does not set itself, or CI would be green where a newcomer's
run is red.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


def _exports(text: str, pattern: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            names.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?:\s*[?:]?=|\s|$)", m.group(1)))
    return names


def test_ci_exports_nothing_the_makefile_does_not_set_itself():
    ci = _exports((REPO / ".ci" / "run").read_text(), r"\s*export\s+(.*)")
    make = _exports((REPO / "Makefile").read_text(), r"export\s+(.*)")
    assert make >= {"MPLBACKEND", "PYTHONUNBUFFERED"}
    assert ci <= make, f".ci/run exports {sorted(ci - make)}, which `make test` would lack"
    text = (REPO / ".ci" / "run").read_text()
    assert not re.search(r"^\s*(export\s+)?LSS_[A-Z_]+=", text, re.M), "CI sets an LSS_ variable"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_data_finds_the_offline_data_with_an_empty_environment(offline_data):
    if not (REPO / ".venv" / "bin" / "python").is_file():
        pytest.skip("no .venv yet (make setup)")
    offline_data("cifar10")  # skips (and make test then fails) if there is none at all
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    out = subprocess.run(
        ["make", "-s", "data"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("cifar10 ")]
    found = Path(line.split(None, 1)[1])
    assert found.is_dir(), line
    assert (found / "cifar10-jpeg.tar.xz").is_file() or (found / "train").is_dir(), line


def test_a_skip_for_missing_data_is_recorded_and_other_skips_are_not(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("top_conftest", REPO / "tests" / "conftest.py")
    top = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(top)
    log = tmp_path / "skips.log"
    monkeypatch.setattr(top, "SKIP_LOG", log)

    def report(reason: str) -> SimpleNamespace:
        return SimpleNamespace(skipped=True, nodeid="t::x", longrepr=("f", 1, reason))

    top.pytest_runtest_logreport(report("Skipped: needs a GPU"))
    assert not log.exists()
    top.pytest_runtest_logreport(report(f"Skipped: {top.NO_DATA} cifar10 not found; set it"))
    assert log.read_text() == f"t::x: {top.NO_DATA} cifar10 not found; set it\n"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_fails_at_its_end_when_a_test_skipped_for_lack_of_data(tmp_path):
    log = tmp_path / "skips.log"
    log.write_text("tests/colab/x.py::t: no offline data: cifar10 not found\n")
    cmd = ["make", "-s", "test-end", f"SKIP_LOG={log}"]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "tests/colab/x.py::t" in bad.stdout
    log.write_text("")
    good = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
