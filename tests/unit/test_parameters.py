"""Parameters papermill injects that a notebook does not declare are refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lsslib import parameters

REPO = Path(__file__).resolve().parents[2]

DECLARED = """from typing import Optional

profile: Optional[str] = "cpu"
num_eval: Optional[int] = None
baseline: str = "synset"
"""


def test_assigned_names_reads_plain_and_annotated_assignments():
    assert parameters.assigned_names(DECLARED) == ["profile", "num_eval", "baseline"]
    assert parameters.assigned_names("# Parameters\nnum_evals = 3\nx, y = 1, 2\n") == ["num_evals"]


def test_a_typo_is_refused_with_the_closest_declared_name():
    history = ["", "import os", DECLARED, '# Parameters\nprofile = "smoke"\nnum_evals = 3\n']
    with pytest.raises(ValueError, match=r"unknown parameter 'num_evals': did you mean 'num_eval'"):
        parameters.refuse_unknown({"In": history})


def test_declared_names_pass_and_no_injection_is_no_check():
    ok = ["", DECLARED, '# Parameters\nprofile = "smoke"\nnum_eval = 3\n', "print(1)"]
    parameters.refuse_unknown({"In": ok})
    parameters.refuse_unknown({"In": ["", DECLARED, "num_evals = 3"]})  # by hand: no check
    parameters.refuse_unknown({})  # outside IPython


def test_a_name_far_from_every_declared_one_lists_them():
    with pytest.raises(ValueError, match=r"unknown parameter 'zzz': this notebook declares "):
        parameters.check_names(["zzz"], ["num_eval", "profile"])


@pytest.mark.parametrize("stem", ["03_evaluate", "04_ablation_rank"])
def test_papermill_with_a_misspelled_parameter_fails_before_any_work(stem, tmp_path):
    papermill = Path(sys.executable).parent / "papermill"
    cmd = [str(papermill), str(REPO / "notebooks" / f"{stem}.ipynb"), "out.ipynb"]
    cmd += ["--kernel", "python3", "-p", "profile", "smoke", "-p", "num_evals", "3"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "unknown parameter 'num_evals'" in out.stdout + out.stderr
    written = [p for p in tmp_path.rglob("*") if p.name != "out.ipynb"]
    assert written == [], f"wrote {written} before refusing"
