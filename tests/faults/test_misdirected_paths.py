"""Stage folders that point at the wrong thing are refused by name before any work,
with nothing written: a misspelled input is never rebuilt, an output never lands in
or on another artifact, and a file never stands where a folder belongs (or the
reverse)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from harness import assert_refused_cleanly, make_file, tree

from lsslib import stages
from lsslib.results import EvalRecord, Results

CPU = torch.device("cpu")


@pytest.fixture
def world(tmp_path, tiny_buffer_dir) -> Path:
    """A results folder with a finished buffer, one run with a set and its record."""
    root = tmp_path / "results"
    shutil.copytree(tiny_buffer_dir, root / "buffers")
    run = root / "runs" / "lss"
    (run / "eval").mkdir(parents=True)
    (run / "synset.json").write_text("{}")
    EvalRecord("synset", "lss", {"mean": 0.3, "std": 0.0}, {}, {}, "cpu", str(run)).write(
        run / "eval" / "metrics.json"
    )
    return root


def _distill(buffer_dir, out_dir, **kw):
    params = stages.stage_parameters("distill", {}, profile=None)
    stages.distill(params, buffer_dir, out_dir, CPU, profile=None, **kw)


def _evaluate(subject, out_dir, synset_dir=None, **kw):
    params = stages.stage_parameters("evaluate", {}, profile=None)
    stages.evaluate_set(params, subject, out_dir, CPU, synset_dir=synset_dir, profile=None, **kw)


def _buffers(w: Path, folder: Path) -> None:
    stages.buffers(stages.stage_parameters("buffers", {}, profile=None), folder, CPU)


# case -> (what sets up the conflict, the stage call, the message it must raise)
CASES = {
    "distill out_dir is the buffer folder": (
        None,
        lambda w: _distill(w / "buffers", w / "buffers"),
        r"out_dir=.*buffers': it is the buffer folder",
    ),
    "distill out_dir inside another run": (
        None,
        lambda w: _distill(w / "buffers", w / "runs" / "lss" / "again"),
        r"out_dir=.*: it lies inside a distillation run",
    ),
    "distill buffer_dir misspelled": (
        None,
        lambda w: _distill(w / "bufers", w / "runs" / "new"),
        r"buffer_dir=.*bufers': no buffer.json there; did you mean .*buffers'",
    ),
    "evaluate out_dir inside another run": (
        None,
        lambda w: _evaluate("synset", w / "runs" / "lss" / "x", synset_dir=w / "other"),
        r"out_dir=.*: it lies inside a distillation run",
    ),
    "random real onto the run's record": (
        None,
        lambda w: _evaluate("random_real", w / "runs" / "lss" / "eval"),
        r"out_dir=.*eval': it lies inside a distillation run",
    ),
    "random real onto a set's record elsewhere": (
        lambda w: shutil.copytree(w / "runs" / "lss" / "eval", w / "evals" / "e"),
        lambda w: _evaluate("random_real", w / "evals" / "e"),
        r"out_dir=.*: it holds the evaluation of synset",
    ),
    "evaluate synset_dir misspelled": (
        None,
        lambda w: _evaluate("synset", w / "evals" / "n", synset_dir=w / "runs" / "lsss"),
        r"synset_dir=.*lsss': no synset.json there; did you mean .*lss'",
    ),
    "distill out_dir is a file": (
        lambda w: make_file(w / "runs" / "f"),
        lambda w: _distill(w / "buffers", w / "runs" / "f"),
        r"out_dir=.*f': it is a file; allowed a folder",
    ),
    "distill out_dir under a file": (
        lambda w: make_file(w / "runs" / "f"),
        lambda w: _distill(w / "buffers", w / "runs" / "f" / "run"),
        r"out_dir=.*: it lies under the file",
    ),
    "run's snapshots/ is a file": (
        lambda w: make_file(w / "runs" / "s" / "snapshots"),
        lambda w: _distill(w / "buffers", w / "runs" / "s"),
        r"out_dir=.*: its snapshots is a file; allowed a folder",
    ),
    "run's synset.json is a folder": (
        lambda w: (w / "runs" / "d" / "synset.json").mkdir(parents=True),
        lambda w: _distill(w / "buffers", w / "runs" / "d"),
        r"out_dir=.*: its synset.json is a folder; allowed a file",
    ),
    "evaluate out_dir is a file": (
        lambda w: make_file(w / "evals" / "f"),
        lambda w: _evaluate("random_real", w / "evals" / "f"),
        r"out_dir=.*f': it is a file",
    ),
    "buffer_dir is a file": (
        lambda w: make_file(w / "b"),
        lambda w: _buffers(w, w / "b"),
        r"buffer_dir=.*b': it is a file",
    ),
    "buffer_dir inside a run": (
        None,
        lambda w: _buffers(w, w / "runs" / "lss" / "b"),
        r"buffer_dir=.*: it lies inside a distillation run",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_misdirected_folder_is_refused_by_name_with_nothing_written(case, world, outcome):
    assert_refused_cleanly(CASES[case], world)
    outcome("misdirected", case, "refused by name before any work, nothing written")


def test_a_random_real_baseline_never_defaults_to_a_run_record(tmp_path):
    res = Results(tmp_path / "results" / "smoke")
    lss = stages.default_eval_dir(res, "synset", None, profile="smoke")
    rnd = stages.default_eval_dir(res, "random_real", None, profile="smoke", real_ipc=1)
    hard = stages.default_eval_dir(res, "synset", "lss", profile="smoke", labels="hard")
    assert lss == res.run("lss").eval.folder
    assert rnd == res.baseline("random_real").folder
    assert len({lss, rnd, hard}) == 3


def test_the_main_run_comes_from_the_profile_not_a_literal():
    assert stages.main_run("paper") == "lss_ipc1"
    assert stages.main_run("cpu") == "lss"
    with pytest.raises(ValueError, match=r"run=None with profile=None"):
        stages.main_run(None)


def test_an_evaluation_in_another_pixel_space_than_the_set_is_refused(world, outcome):
    run = world / "runs" / "lss"
    meta = {"config": {"data": {"normalisation": "zca", "zca_eps": 0.1, "zca_input": "raw"}}}
    (run / "synset.json").write_text(json.dumps(meta))
    before = tree(world)
    with pytest.raises(ValueError, match=r"zca_eps=0.5: the set in synset_dir=.* zca_eps=0.1"):
        params = stages.stage_parameters(
            "evaluate", {"normalisation": "zca", "zca_eps": 0.5}, profile=None
        )
        stages.evaluate_set(
            params, "synset", world / "evals" / "z", CPU, synset_dir=run, profile=None
        )
    assert tree(world) == before
    outcome("contradicting", "evaluation ZCA other than the set's", "refused naming both values")


def test_a_start_epoch_beyond_the_buffer_is_refused_before_the_data_loads(
    world, outcome, monkeypatch
):
    from lsslib import data

    monkeypatch.setattr(data, "load_data", lambda *a, **k: pytest.fail("data loaded first"))
    params = stages.stage_parameters(
        "distill",
        {"net_depth": 2, "net_width": 4, "max_start_epoch": 40, "expert_epochs": 2},
        profile=None,
    )
    with pytest.raises(ValueError, match=r"max_start_epoch=40: allowed at most 3"):
        stages.distill(params, world / "buffers", world / "runs" / "new", CPU, profile=None)
    outcome("contradicting", "max_start_epoch beyond the buffer", "refused before loading data")


def test_data_settings_other_than_the_buffers_are_refused_before_the_data_loads(
    world, outcome, monkeypatch
):
    from lsslib import data

    monkeypatch.setattr(data, "load_data", lambda *a, **k: pytest.fail("data loaded first"))
    params = stages.stage_parameters(
        "distill", {"net_depth": 2, "net_width": 4, "normalisation": "zca"}, profile=None
    )
    with pytest.raises(
        ValueError, match=r"built for normalisation='none', but .* normalisation='zca'"
    ):
        stages.distill(params, world / "buffers", world / "runs" / "new", CPU, profile=None)
    outcome("contradicting", "normalisation other than the buffer's", "refused naming both values")
