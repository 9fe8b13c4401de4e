"""Ablations are sweeps: runs are found by content (never by name) and only missing
ones are computed; a workflow that made every run recomputes nothing."""

from __future__ import annotations

import pytest
import torch

from lsslib import stages
from lsslib.config import STAGE_CONFIGS
from lsslib.results import Results

TINY = {"net_depth": 2, "net_width": 4}


def _flat(stage: str, **kw) -> dict:
    flat: dict = {}
    for cls in STAGE_CONFIGS[stage]:
        flat.update(cls().to_dict())
    flat.update(dataset="cifar10", normalisation="none", **TINY, **kw)
    return flat


BASE = _flat(
    "distill",
    parameterisation="lowrank",
    rank=1,
    iterations=2,
    syn_steps=2,
    expert_epochs=2,
    max_start_epoch=1,
    checkpoint_every=1,
    lr_lr=1e-5,
)
BASE_EVAL = _flat("evaluate", num_eval=1, eval_epochs=2, batch_eval=16)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def made(tmp_path_factory, lss_tiny_data, lss_tiny_buffer):
    """A results folder whose runs r1 and r2 were distilled and evaluated (as by the workflow)."""
    res = Results(tmp_path_factory.mktemp("results"))
    for r in (1, 2):
        run = res.run(f"r{r}")
        params = {**BASE, "rank": r}
        stages.distill(
            params, lss_tiny_buffer.folder, run.folder, CPU, profile=None, real=lss_tiny_data
        )
        stages.evaluate_set(
            BASE_EVAL,
            "synset",
            run.eval.folder,
            CPU,
            synset_dir=run.folder,
            profile=None,
            real=lss_tiny_data,
        )
    return res


def test_runs_are_found_by_content(made):
    assert stages.find_run(made, {**BASE, "rank": 2}, BASE_EVAL).folder.name == "r2"
    assert stages.find_run(made, {**BASE, "rank": 3}, BASE_EVAL) is None
    assert stages.find_run(made, {**BASE, "rank": 2, "iterations": 3}, BASE_EVAL) is None
    assert stages.find_run(made, {**BASE, "rank": 2}, {**BASE_EVAL, "eval_epochs": 3}) is None


def test_a_sweep_over_existing_runs_recomputes_nothing(made, tmp_path, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a run was recomputed")

    monkeypatch.setattr(stages, "distill", refuse)
    monkeypatch.setattr(stages, "evaluate_set", refuse)
    monkeypatch.setattr(stages.data, "load_data", refuse)
    runs = stages.sweep("rank", [2, 1], BASE, BASE_EVAL, made.root, tmp_path / "abl", CPU)
    assert [(label, run.folder.name) for label, run in runs] == [("2", "r2"), ("1", "r1")]
    table = stages.ablation("rank", runs, tmp_path / "abl")
    assert list(table["rank r"]) == [1, 2]
    assert (tmp_path / "abl" / "rank_sweep.png").is_file()
    assert (tmp_path / "abl" / "table.csv").is_file()


def test_a_sweep_computes_only_the_missing_value(made, tmp_path, monkeypatch, lss_tiny_data):
    calls = []
    real_distill = stages.distill

    def counting(params, *a, **k):
        calls.append(params["rank"])
        return real_distill(params, *a, **{**k, "real": lss_tiny_data})

    monkeypatch.setattr(stages, "distill", counting)
    monkeypatch.setattr(stages.data, "load_data", lambda *_a, **_k: lss_tiny_data)
    runs = stages.sweep(
        "rank",
        [1, 3],
        BASE,
        BASE_EVAL,
        made.root,
        tmp_path / "abl",
        CPU,
        profile=None,
        make_missing=True,  # no profile, so no default location: asked for explicitly
    )
    assert calls == [3]
    assert runs[0][1].folder.name == "r1"
    assert runs[1][1].folder.parent == tmp_path / "abl" / "runs"
    assert runs[1][1].eval.metrics.is_file()


@pytest.mark.parametrize(
    "values,match",
    [("[2, 4]", "ranks='\\[2, 4\\]'.*-y 'ranks: \\[2, 4, 8\\]'"), ([], "non-empty list")],
)
def test_ill_typed_values_are_refused_before_any_work(values, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        stages.sweep("rank", values, BASE, BASE_EVAL, tmp_path, tmp_path / "abl", CPU)
    assert not (tmp_path / "abl").exists()


def test_a_users_sweep_is_merged_onto_the_profiles_never_replacing_it():
    from lsslib import profiles

    paper = stages.ablation_plan(profiles.load_profile("paper"), "schedule")
    # a custom list keeps the profile's per-value settings (IPC 10 in the paper profile)
    m = stages.merge_sweep(paper, ["fixed", "stair"])
    assert all(m["overrides"][v]["ipc"] == 10 for v in ("fixed", "stair"))
    smoke = stages.ablation_plan(profiles.load_profile("smoke"), "schedule")
    m = stages.merge_sweep(smoke, ["fixed", "stair"], {"max_start_epoch": 2})
    assert m["overrides"]["stair"] == {"stair_every": 2}  # the profile's, not the default 100
    # a partial base changes only the key it names
    assert m["base"] == {**smoke["base"], "max_start_epoch": 2}
    assert m["base_eval"] == smoke["base_eval"]
    assert stages.sweep_changes(smoke, m) == [
        "values: ['fixed', 'linear', 'stair'] -> ['fixed', 'stair']",
        "base.max_start_epoch: 1 -> 2",
    ]


def test_a_new_value_takes_what_all_the_profiles_values_share():
    plan = {
        "values": [1, 2],
        "base": {"ipc": 1},
        "overrides": {1: {"ipc": 10, "lr_y": 2.0}, 2: {"ipc": 10}},
        "eval_overrides": {},
    }
    m = stages.merge_sweep(plan, [2, 8], overrides={"8": {"batch_syn": 5}})
    assert m["overrides"] == {2: {"ipc": 10}, 8: {"ipc": 10, "batch_syn": 5}}
    assert "overrides[8].ipc: None -> 10" in stages.sweep_changes(plan, m)


def test_every_value_of_a_sweep_is_budget_checked_before_the_first_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "distill", lambda *a, **k: pytest.fail("a value ran first"))
    base = {**BASE, "dataset": "cifar10", "normalisation": "none"}
    with pytest.raises(ValueError, match=r"rank=40: allowed an integer in \[1, 31\]"):
        stages.sweep("rank", [1, 40], base, BASE_EVAL, tmp_path, tmp_path / "abl", CPU)
    assert not (tmp_path / "abl").exists()
