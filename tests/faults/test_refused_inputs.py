"""Parameters that contradict their inputs, unknown parameter names, sweeps that would
change the experiment and the remaining file-versus-folder conflicts: each refused by
name (or merged, for a sweep) before any work, with nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from harness import assert_refused_cleanly, make_file, tree

from lsslib import parameters, profiles, stages, study, upstream

CPU = torch.device("cpu")


@pytest.fixture
def world(tmp_path, tiny_buffer_dir) -> Path:
    root = tmp_path / "results"
    shutil.copytree(tiny_buffer_dir, root / "buffers")
    (root / "runs").mkdir()
    return root


def test_a_training_subset_other_than_the_buffers_is_refused(world, outcome, monkeypatch):
    from lsslib import data

    monkeypatch.setattr(data, "load_data", lambda *a, **k: pytest.fail("data loaded first"))
    params = stages.stage_parameters(
        "distill",
        {"net_depth": 2, "net_width": 4, "normalisation": "none", "train_per_class": 5},
        profile=None,
    )
    before = tree(world)
    with pytest.raises(ValueError, match=r"train_per_class=5: the buffer in .* trained with"):
        stages.distill(params, world / "buffers", world / "runs" / "new", CPU, profile=None)
    assert tree(world) == before
    outcome("contradicting", "training subset other than the buffer's", "refused naming both")


def test_an_unknown_notebook_parameter_is_refused_with_the_closest_name(outcome):
    declared = 'profile = "cpu"\nnum_eval = None\n'
    history = ["", declared, "# Parameters\nnum_evals = 3\n"]
    with pytest.raises(ValueError, match=r"'num_evals': did you mean 'num_eval'"):
        parameters.refuse_unknown({"In": history})
    outcome("unknown name", "papermill -p num_evals 3", "refused: did you mean 'num_eval'")


def test_a_partial_base_is_merged_onto_the_profiles_sweep(outcome):
    plan = stages.ablation_plan(profiles.load_profile("smoke"), "schedule")
    merged = stages.merge_sweep(plan, ["fixed", "stair"], {"max_start_epoch": 2})
    assert merged["base"] == {**plan["base"], "max_start_epoch": 2}
    assert merged["overrides"]["stair"] == plan["overrides"]["stair"]
    outcome("sweep", "partial base and a custom value list", "merged key by key, printed")


def test_a_sweep_value_beyond_the_budget_is_refused_before_the_first_runs(
    tmp_path, outcome, monkeypatch
):
    monkeypatch.setattr(stages, "distill", lambda *a, **k: pytest.fail("a value ran first"))
    plan = stages.ablation_plan(profiles.load_profile("smoke"), "rank")
    with pytest.raises(ValueError, match=r"rank=40"):
        stages.sweep(
            "rank", [2, 40], plan["base"], plan["base_eval"], tmp_path / "r", tmp_path / "a", CPU
        )
    assert not (tmp_path / "a").exists()
    outcome("sweep", "a value too big for the budget", "refused before the first value runs")


CASES = {
    "evaluate synset_dir is a file": (
        lambda w: make_file(w / "runs" / "f"),
        lambda w: stages.evaluate_set(
            stages.stage_parameters("evaluate", {}, profile=None),
            "synset",
            w / "evals" / "e",
            CPU,
            synset_dir=w / "runs" / "f",
            profile=None,
        ),  # fmt: skip
        r"synset_dir=.*f': it is a file",
    ),
    "distill buffer_dir is a file": (
        lambda w: make_file(w / "bfile"),
        lambda w: stages.distill(
            stages.stage_parameters("distill", {}, profile=None),
            w / "bfile",
            w / "runs" / "n",
            CPU,
            profile=None,
        ),  # fmt: skip
        r"buffer_dir=.*bfile': it is a file",
    ),
    "summary book_dir is a file": (
        lambda w: make_file(w / "book"),
        lambda w: upstream.prepare_summary("smoke", w, w / "book"),
        r"book_dir=.*book': it is a file",
    ),
    "summary book_dir/tables is a file": (
        lambda w: make_file(w / "book" / "tables"),
        lambda w: upstream.prepare_summary("smoke", w, w / "book"),
        r"book_dir=.*: its tables is a file; allowed a folder",
    ),
    "study out_dir is a file": (
        lambda w: make_file(w / "study"),
        lambda w: study.study_tables(w, "smoke_study", w / "study"),
        r"out_dir=.*study': it is a file",
    ),
    "study results_dir missing": (
        None,
        lambda w: study.study_tables(w / "nosuch", "smoke_study", w / "s2"),
        r"results_dir=.*nosuch': no such folder",
    ),
    "ablation out_dir is a file": (
        lambda w: make_file(w / "abl"),
        lambda w: stages.sweep("rank", [1], {}, {}, w, w / "abl", CPU),
        r"out_dir=.*abl': it is a file",
    ),
    "ablation results_dir's runs is a file": (
        lambda w: (shutil.rmtree(w / "runs"), make_file(w / "runs")),
        lambda w: stages.sweep("rank", [1], {}, {}, w, w / "abl2", CPU),
        r"results_dir=.*: its runs is a file; allowed a folder",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_file_where_a_folder_belongs_is_refused_by_name(case, world, outcome):
    assert_refused_cleanly(CASES[case], world)
    outcome("file or folder", case, "refused by name before any work, nothing written")
