"""The study's controls: the starting set evaluated as initialised, evaluation at a
common learning rate, and evaluation networks drawn per distillation seed."""

from __future__ import annotations

import pytest
import torch
import yaml

from lsslib import evaluate, profiles, stages
from lsslib.config import DataConfig, DistillConfig, EvalConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.models import ConvNetSpec, init_flat
from lsslib.results import RunPaths
from lsslib.synset import load_synset

TINY = {"net_depth": 2, "net_width": 4}


def _run(out, data, buffer, **kw):
    cfg = DistillConfig(
        ipc=1, rank=2, syn_steps=2, expert_epochs=2, max_start_epoch=2, iterations=4,
        lr_lr=1e-5, checkpoint_every=2,
    )  # fmt: skip
    return Distiller(
        cfg, data.config, buffer, data.x_train, data.y_train, out, model_cfg=ModelConfig(**TINY),
        **kw,
    )  # fmt: skip


def test_the_starting_set_evaluated_is_bitwise_the_initialised_one(
    tmp_path, lss_tiny_data, lss_tiny_buffer, monkeypatch
):
    run = _run(tmp_path / "run", lss_tiny_data, lss_tiny_buffer)
    x0 = run.synset.images().detach().clone()
    run.run(snapshot_every=2)
    snap = load_synset(RunPaths(tmp_path / "run").snapshot(0))
    assert snap.meta["iterations"] == 0
    assert torch.equal(snap.synset.images().detach(), x0)
    seen = {}
    real_fn = evaluate.evaluate_images

    def spy(spec, x, y, data, cfg, **kw):
        seen["x"] = x
        return real_fn(spec, x, y, data, cfg, **kw)

    monkeypatch.setattr(evaluate, "evaluate_images", spy)
    params = {
        **DataConfig(dataset="cifar10", normalisation="none").to_dict(),
        **ModelConfig(**TINY).to_dict(),
        **EvalConfig(num_eval=1, eval_epochs=1, batch_eval=16).to_dict(),
    }
    rec = stages.evaluate_set(
        params, "synset", tmp_path / "it0", "cpu", synset_dir=tmp_path / "run",
        real=lss_tiny_data, iteration=0,
    )  # fmt: skip
    assert torch.equal(seen["x"], snap.export()[0])
    assert rec.extra["variant"]["iteration"] == 0
    final = load_synset(RunPaths(tmp_path / "run").synset)
    assert not torch.equal(final.synset.images().detach(), x0)  # distillation moved it


def test_saving_the_starting_set_changes_no_number_of_the_run(
    tmp_path, lss_tiny_data, lss_tiny_buffer
):
    a = _run(tmp_path / "a", lss_tiny_data, lss_tiny_buffer)
    a.run(snapshot_every=4)
    b = _run(tmp_path / "b", lss_tiny_data, lss_tiny_buffer)
    b.run()
    sa, sb = (
        load_synset(RunPaths(tmp_path / "a").synset),
        load_synset(RunPaths(tmp_path / "b").synset),
    )
    assert sa.meta["sha256"] == sb.meta["sha256"]
    assert RunPaths(tmp_path / "a").snapshot(0).with_suffix(".json").is_file()


def _seeded(tmp_path, **extra):
    prof = yaml.safe_load(profiles.profile_path("smoke_study").read_text())
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**prof, **extra}))
    return profiles.expand_profile(profiles.load_profile(path))


def test_two_seeds_get_different_evaluation_networks(tmp_path):
    prof = _seeded(tmp_path)
    flat = {
        r: {**EvalConfig().to_dict(), **profiles.stage_parameters(prof, "evaluate", r)}
        for r in ("lss", "lss-s1")
    }
    nets = {r: {flat[r]["eval_seed"] + i for i in range(flat[r]["num_eval"])} for r in flat}
    assert nets["lss"].isdisjoint(nets["lss-s1"])
    assert prof["evals"]["lss_hard-s1"]["params"]["eval_seed"] == flat["lss-s1"]["eval_seed"]
    assert prof["baselines"]["random_real-s1"]["eval_seed"] == flat["lss-s1"]["eval_seed"]
    spec = ConvNetSpec(channels=3, side=8, num_classes=4, depth=2, width=4)
    w = {r: init_flat(spec, torch.Generator().manual_seed(flat[r]["eval_seed"])) for r in flat}
    assert not torch.equal(w["lss"], w["lss-s1"])
    shared = _seeded(tmp_path, eval_seeds="shared")
    assert "eval_seed" not in profiles.stage_parameters(shared, "evaluate", "lss-s1")


def test_controls_and_common_rates_are_spelled_out_per_run_and_seed(tmp_path):
    prof = _seeded(tmp_path, init_controls=True, common_lr={"grid": [0.003, 0.01]})
    assert prof["evals"]["lss-it0"]["iteration"] == 0
    assert prof["evals"]["lss-s1-it0"]["params"]["eval_seed"] == 1000
    assert prof["seed_of"]["lss-s1-it0"] == ("lss-it0", 1)
    lr = prof["evals"][profiles.common_lr_name("px_hard-s1", 0.01)]
    assert lr["params"]["lr_eval"] == 0.01 and lr["val_per_class"] == 5
    assert prof["seed_of"]["px_hard-s1-lr0.01"] == ("px_hard-lr0.01", 1)
    assert prof["snapshot_every"] == 2


@pytest.mark.parametrize(
    "extra,match",
    [
        ({"init_controls": "yes"}, r"init_controls='yes': allowed true or false"),
        ({"common_lr": {"grid": []}}, r"common_lr.grid=\[\]: allowed a non-empty list"),
        ({"common_lr": {"grid": [0.01], "lr": 1}}, r"common_lr=.*allowed a mapping"),
        ({"eval_seeds": "each"}, r"eval_seeds='each'"),
    ],
)
def test_malformed_controls_are_refused_by_name(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        _seeded(tmp_path, **extra)


def test_tuning_spells_out_each_combination_of_the_grid_at_the_first_seed(tmp_path):
    grid = {"lr_lr": [1e-6, 1e-5], "lr_img": [30, 100]}
    prof = _seeded(tmp_path, tuning={"grid": grid, "runs": ["px_hard"], "val_per_class": 5})
    cands = prof["tuning"]["runs"]["px_hard"]
    combos = sorted((c["lr_lr"], c["lr_img"]) for c, _ in cands)
    assert combos == [(1e-6, 30), (1e-6, 100), (1e-5, 30), (1e-5, 100)]
    by_name = {n: c for c, n in cands}
    assert prof["runs"]["px_hard-tune3"]["lr_img"] == by_name["px_hard-tune3"]["lr_img"]
    assert prof["runs"]["px_hard-tune3"]["parameterisation"] == "pixels"
    assert "px_hard-tune3-s1" not in prof["runs"] and prof["val_per_class"] == 5
    with pytest.raises(ValueError, match=r"lr_lr"):
        _seeded(
            tmp_path, tuning={"grid": {"lr_lr": [-1.0]}, "runs": ["px_hard"], "val_per_class": 5}
        )
    with pytest.raises(ValueError, match=r"tuning.runs entry"):
        _seeded(tmp_path, tuning={"grid": grid, "runs": ["nope"], "val_per_class": 5})


def test_seeded_may_give_each_run_its_own_seeds(tmp_path):
    prof = _seeded(tmp_path, seeds=[0, 1, 2], seeded={"lss": [0, 1, 2], "px_hard": [0, 1]})
    assert {"lss", "lss-s1", "lss-s2", "px_hard", "px_hard-s1"} <= set(prof["runs"])
    assert "px_hard-s2" not in prof["runs"] and "mtt-s1" not in prof["runs"]
    with pytest.raises(ValueError, match=r"seeded.lss=\[7\]"):
        _seeded(tmp_path, seeded={"lss": [7]})
