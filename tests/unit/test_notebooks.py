"""The stage notebooks: defaults equal the cpu profile, bad parameters fail fast."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import pytest

from lsslib import config, profiles, stages

ROOT = Path(__file__).resolve().parents[2]
NB = ROOT / "notebooks"
STAGES = {"01_buffers": "buffers", "02_distill": "distill", "03_evaluate": "evaluate"}


def _defaults(notebook: Path) -> dict:
    return {
        k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(notebook)).items()
    }


@pytest.mark.parametrize("stem,stage", sorted(STAGES.items()))
def test_notebook_parameters_default_to_the_profile(stem: str, stage: str) -> None:
    """Every stage parameter is in the cell with default None (= the profile's value),
    so defaults are written once, in the profile; resolved, they are the cpu profile."""
    got = _defaults(NB / f"{stem}.ipynb")
    names = {n for cls in config.STAGE_CONFIGS[stage] for n in cls.names()}
    missing = names - set(got)
    assert not missing, f"{stem} lacks parameters {sorted(missing)}"
    not_none = {k: got[k] for k in names if got[k] is not None}
    assert not not_none, f"{stem} writes defaults that belong to the profile: {not_none}"
    assert got["profile"] == "cpu"
    prof = profiles.load_profile("cpu")
    run = None if stage == "buffers" else prof["main"]["lss"]
    resolved = stages.stage_parameters(stage, got, "cpu")
    expected = {}
    for cls in config.STAGE_CONFIGS[stage]:
        expected.update(cls().to_dict())
    expected.update(profiles.stage_parameters(prof, stage, run))
    assert resolved == expected


def test_colab_cell_is_the_generated_one() -> None:
    """The Colab install cell is written once (workflow/scripts/sync_colab_cell.py)."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    import sync_colab_cell

    for py in sorted(NB.glob("0*.py")):
        text = py.read_text()
        assert sync_colab_cell.cell() in text, (
            f"{py.name}: run python workflow/scripts/sync_colab_cell.py"
        )


def test_every_stage_notebook_has_a_typed_parameters_cell() -> None:
    for nb in sorted(NB.glob("0*.ipynb")):
        params = pm.inspect_notebook(str(nb))
        assert params, f"{nb.name} has no cell tagged 'parameters'"
        untyped = [k for k, v in params.items() if v["inferred_type_name"] == "None"]
        assert not untyped, f"{nb.name}: parameters without a type annotation: {untyped}"


def test_papermill_bad_parameter_fails_fast_with_lsslib_message(tmp_path: Path) -> None:
    papermill = Path(sys.executable).parent / "papermill"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            str(papermill),
            str(NB / "02_distill.ipynb"),
            str(tmp_path / "out.ipynb"),
            "-p",
            "rank",
            "40",
            "-p",
            "out_dir",
            str(tmp_path / "run"),
            "-p",
            "buffer_dir",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "invalid parameter rank=40" in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists(), "nothing may be written before validation"
    assert elapsed < 90, f"took {elapsed:.0f} s"
