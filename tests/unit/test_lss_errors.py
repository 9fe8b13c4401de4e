"""Invalid parameters fail early with a ValueError naming the parameter, value and allowed."""

from __future__ import annotations

import re

import pytest
import yaml

from lsslib.config import (
    BufferConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
)
from lsslib.distill import Distiller
from lsslib.experts import BufferMismatch, ExpertBuffer, train_experts
from lsslib.models import ConvNetSpec
from lsslib.profiles import baseline_parameters, load_profile, stage_parameters

CIFAR = dict(channels=3, side=32, num_classes=10)


def expect(match_parts: list[str]):
    """pytest.raises(ValueError) whose message contains every part, in order."""
    return pytest.raises(ValueError, match=".*".join(re.escape(p) for p in match_parts))


def test_unknown_dataset():
    with expect(["invalid parameter dataset='mnist'", "allowed", "'cifar10'", "'svhn'"]):
        DataConfig(dataset="mnist")


def test_unknown_model_option():
    with expect(["net_norm='layernorm'", "allowed", "'instancenorm'", "'batchnorm'"]):
        ModelConfig(net_norm="layernorm")
    with expect(["net_pooling='sum'", "allowed", "'avgpool'"]):
        ModelConfig(net_pooling="sum")


@pytest.mark.parametrize(
    ("cls", "kw", "parts"),
    [
        (DistillConfig, {"parameterisation": "sparse"}, ["parameterisation='sparse'", "'lowrank'"]),
        (DistillConfig, {"schedule": "cosine"}, ["schedule='cosine'", "'linear'"]),
        (DistillConfig, {"ipc": 0}, ["ipc=0", "an integer in [1, inf)"]),
        (DistillConfig, {"syn_lr_init": 1e-4}, ["syn_lr_init=0.0001", "[0.001, inf)"]),
        (DistillConfig, {"dsa_strategy": "color_blur"}, ["dsa_strategy='color_blur'", "color"]),
        (DistillConfig, {"parameterisation": "pixels", "subspaces": 2}, ["subspaces=2", "pixels"]),
        (BufferConfig, {"lr_teacher": 0.0}, ["lr_teacher=0.0", "(0, inf)"]),
        (BufferConfig, {"dsa": "yes"}, ["dsa='yes'", "True or False"]),
        (EvalConfig, {"num_eval": 2.5}, ["num_eval=2.5", "an integer"]),
        (DataConfig, {"zca_eps": float("nan")}, ["zca_eps=nan", "a finite number in (0, inf)"]),
    ],
)
def test_field_validation(cls, kw, parts):
    with expect(["invalid parameter", *parts]):
        cls(**kw)


def test_rank_not_below_image_side():
    with expect(["rank=32", "allowed", "[1, 31]"]):
        DistillConfig(rank=32).check_against(**CIFAR)
    DistillConfig(rank=31, ipc=50).check_against(**CIFAR)  # the largest allowed rank fits
    DistillConfig(parameterisation="pixels", rank=64).check_against(**CIFAR)  # rank unused


def test_budget_too_small_for_one_image_per_class():
    cfg = DistillConfig(parameterisation="pixels", soft_labels=True, strict_budget=True, ipc=1)
    with expect(["ipc=1", "allowed", "at least one image per class", "strict_budget=True"]):
        cfg.check_against(**CIFAR)
    # the same without strict accounting, or without soft labels, fits one image
    DistillConfig(parameterisation="pixels", soft_labels=True, ipc=1).check_against(**CIFAR)
    DistillConfig(parameterisation="pixels", soft_labels=False, strict_budget=True).check_against(
        **CIFAR
    )
    # two-sided with a large rank: mappers alone overflow IPC 1
    with expect(["ipc=1", "rank=16", "two_sided"]):
        DistillConfig(parameterisation="two_sided", rank=16).check_against(**CIFAR)


def test_start_epochs_beyond_buffer():
    """max_start_epoch is exclusive (MTT's randint): the latest start is 19, its target 21."""
    cfg = DistillConfig(max_start_epoch=20, expert_epochs=2)
    with expect(["max_start_epoch=20", "allowed at most 19", "21", "20 epochs"]):
        cfg.check_against(**CIFAR, buffer_epochs=20)
    cfg.check_against(**CIFAR, buffer_epochs=21)  # no epoch of the buffer goes unused


def test_max_start_epoch_is_the_exclusive_bound_of_the_draw():
    """Docs, check and draw agree: starts cover [min, max - 1] and never reach max."""
    import torch

    from lsslib.plan import sample_start_epoch

    cfg = DistillConfig(max_start_epoch=4, min_start_epoch=1, schedule="fixed")
    g = torch.Generator().manual_seed(0)
    starts = {sample_start_epoch(cfg, 0, g)[0] for _ in range(400)}
    assert starts == {1, 2, 3}
    same = DistillConfig(max_start_epoch=1, min_start_epoch=1, schedule="fixed")
    assert {sample_start_epoch(same, 0, g)[0] for _ in range(20)} == {1}  # a fixed segment


def test_batch_syn_larger_than_the_set():
    # lowrank r=4 IPC 1 on CIFAR-10: 7 images per class, 70 in all
    with expect(["batch_syn=71", "at most the synthetic set size 70"]):
        DistillConfig(batch_syn=71).check_against(**CIFAR)
    DistillConfig(batch_syn=70).check_against(**CIFAR)
    with expect(["batch_syn=None", "max_batch_syn=100"]):
        DistillConfig(max_batch_syn=100, ipc=10).check_against(**CIFAR)
    with expect(["batch_syn=300", "at most max_batch_syn=256"]):
        DistillConfig(batch_syn=300, max_batch_syn=256)


def _distiller(buffer, data, tmp_path, data_cfg=None, **kw):
    base = dict(ipc=1, rank=2, iterations=1, syn_steps=2, expert_epochs=2, max_start_epoch=2)
    base.update(kw)
    return Distiller(
        DistillConfig(**base),
        data_cfg or data.config,
        buffer,
        data.x_train,
        data.y_train,
        tmp_path / "run",
    )


@pytest.mark.parametrize(
    ("kw", "parts"),
    [
        ({"max_start_epoch": 4}, ["max_start_epoch=4", "at most 3"]),
        ({"rank": 8}, ["rank=8", "[1, 7]"]),
        ({"batch_syn": 100}, ["batch_syn=100", "synthetic set size"]),
        (
            {"parameterisation": "pixels", "strict_budget": True, "soft_labels": True},
            ["ipc=1", "one image per class"],
        ),
    ],
)
def test_distiller_checks_before_building(lss_tiny_buffer, lss_tiny_data, tmp_path, kw, parts):
    with expect(parts):
        _distiller(lss_tiny_buffer, lss_tiny_data, tmp_path, **kw)
    assert not (tmp_path / "run").exists()


def test_buffer_from_another_dataset_or_model(lss_tiny_buffer, lss_tiny_data, tmp_path):
    buf: ExpertBuffer = lss_tiny_buffer
    spec = buf.spec
    buf.check_compatible(lss_tiny_data.config, spec)  # its own configuration passes
    with pytest.raises(BufferMismatch, match=r"dataset='cifar10'.*dataset='svhn'"):
        buf.check_compatible(DataConfig(dataset="svhn", normalisation="none"), spec)
    with pytest.raises(BufferMismatch, match=r"normalisation='none'.*normalisation='zca'"):
        buf.check_compatible(DataConfig(dataset="cifar10"), spec)
    other = ConvNetSpec(spec.channels, spec.side, spec.num_classes, spec.depth, width=8)
    with pytest.raises(BufferMismatch, match=r"spec=.*'width': 4.*'width': 8"):
        buf.check_compatible(lss_tiny_data.config, other)
    # a Distiller on data of another normalisation refuses the buffer
    with pytest.raises(BufferMismatch, match="normalisation"):
        _distiller(buf, lss_tiny_data, tmp_path, data_cfg=DataConfig(normalisation="meanstd"))
    # BufferMismatch is a ValueError
    assert issubclass(BufferMismatch, ValueError)


def test_train_experts_refuses_a_folder_of_another_configuration(lss_tiny_buffer, lss_tiny_data):
    built = lss_tiny_buffer.meta["config"]
    before = sorted(p.name for p in lss_tiny_buffer.folder.iterdir())
    with pytest.raises(BufferMismatch, match=r"train_epochs: 4 -> 5"):
        train_experts(
            lss_tiny_data,
            ModelConfig(**built["model"]),
            BufferConfig(**{**built["buffers"], "train_epochs": 5}),
            lss_tiny_buffer.folder,
            log=lambda _l: None,
        )
    assert sorted(p.name for p in lss_tiny_buffer.folder.iterdir()) == before


def _write_profile(tmp_path, prof: dict):
    path = tmp_path / "prof.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


GOOD_PROFILE = {
    "data": {"dataset": "cifar10", "train_per_class": 5},
    "model": {"net_width": 8},
    "buffers": {"num_experts": 1, "train_epochs": 4},
    "distill": {"ipc": 1, "max_start_epoch": 1, "expert_epochs": 2},
    "eval": {"num_eval": 1},
    "runs": {"lss": {"rank": 4}, "mtt": {"parameterisation": "pixels", "num_eval": 2}},
}


def test_load_profile_accepts_a_good_profile_and_names_unknown_keys(tmp_path):
    prof = load_profile(_write_profile(tmp_path, GOOD_PROFILE))
    assert prof["name"] == "prof"
    assert stage_parameters(prof, "evaluate", "mtt")["num_eval"] == 2
    assert stage_parameters(prof, "distill", "mtt")["parameterisation"] == "pixels"
    with expect(["profile key='bogus'", "allowed one of"]):
        load_profile(_write_profile(tmp_path, {**GOOD_PROFILE, "bogus": 1}))
    with expect(["data.datset='cifar10'", "a parameter of"]):
        load_profile(_write_profile(tmp_path, {**GOOD_PROFILE, "data": {"datset": "cifar10"}}))
    with expect(["runs.lss.rnak=4", "a distill or eval parameter"]):
        load_profile(_write_profile(tmp_path, {**GOOD_PROFILE, "runs": {"lss": {"rnak": 4}}}))
    with expect(["profile='no_such_profile'", "allowed"]):
        load_profile("no_such_profile")
    # cross-field rules run at load time: start epochs beyond the buffer
    bad = {**GOOD_PROFILE, "distill": {"max_start_epoch": 4, "expert_epochs": 2}}
    with expect(["max_start_epoch=4", "at most 3"]):
        load_profile(_write_profile(tmp_path, bad))


def test_stage_parameters_unknown_run_and_stage(tmp_path):
    prof = load_profile(_write_profile(tmp_path, GOOD_PROFILE))
    with expect(["run='nope'", "allowed one of lss, mtt"]):
        stage_parameters(prof, "distill", "nope")
    with expect(["run=None", "lss"]):
        stage_parameters(prof, "evaluate")
    with expect(["stage='train'", "'buffers'"]):
        stage_parameters(prof, "train", "lss")


def test_load_profile_checks_baselines_main_and_ablations(tmp_path):

    good = {
        **GOOD_PROFILE,
        "baselines": {"rr": {"kind": "random_real", "real_ipc": 2, "num_eval": 1}},
    }
    prof = load_profile(_write_profile(tmp_path, good))
    kind, ipc, flat = baseline_parameters(prof, "rr")
    assert (kind, ipc, flat["num_eval"]) == ("random_real", 2, 1)
    cases = [
        (
            {"baselines": {"rr": {"kind": "realish"}}},
            ["baselines.rr.kind='realish'", "random_real"],
        ),
        (
            {"baselines": {"rr": {"kind": "random_real", "real_ipc": 0}}},
            ["baselines.rr.real_ipc=0"],
        ),
        (
            {"baselines": {"f": {"kind": "full", "rank": 4}}},
            ["baselines.f.rank=4", "an eval parameter"],
        ),
        ({"main": {"lss": "nope"}}, ["main.lss='nope'", "allowed one of"]),
        ({"ablations": {"rank": ["mtt", "nope"]}}, ["ablations.rank entry='nope'"]),
        ({"ablations": {"width": []}}, ["ablations kind='width'", "'rank', 'schedule'"]),
    ]
    for extra, parts in cases:
        with expect(parts):
            load_profile(_write_profile(tmp_path, {**GOOD_PROFILE, **extra}))
