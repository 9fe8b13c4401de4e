"""The Distiller: a step descends the matching loss, faults stop the run, runs are
deterministic, checkpoints and synthetic sets load back."""

from __future__ import annotations

import math

import pytest
import torch

from lsslib.artifacts import load_artifact
from lsslib.config import BufferConfig, DistillConfig, ModelConfig
from lsslib.distill import Distiller, NumericalFault
from lsslib.experts import train_experts
from lsslib.matching import matching_loss
from lsslib.models import convnet_forward
from lsslib.plan import make_plan
from lsslib.synset import init_soft_labels, load_synset

BASE = dict(ipc=1, rank=2, syn_steps=3, expert_epochs=2, max_start_epoch=2, lr_lr=1e-5)


def make_distiller(buffer, data, out, **kw) -> Distiller:
    cfg = DistillConfig(**{**BASE, **kw})
    return Distiller(cfg, data.config, buffer, data.x_train, data.y_train, out)


@pytest.fixture(scope="module")
def one_expert_buffer(tmp_path_factory, lss_tiny_data):
    """A single expert, so that a start epoch of 0 fixes the matched segment."""
    return train_experts(
        lss_tiny_data,
        ModelConfig(net_depth=2, net_width=4),
        BufferConfig(num_experts=1, train_epochs=2, batch_train=16, lr_teacher=0.05),
        tmp_path_factory.mktemp("one_expert"),
        log=lambda _l: None,
    )


@pytest.mark.parametrize("kind", ["pixels", "lowrank", "lowrank_global", "two_sided"])
def test_distillation_steps_lower_the_matching_loss_on_a_fixed_segment(
    one_expert_buffer, lss_tiny_data, tmp_path, kind
):
    d = make_distiller(
        one_expert_buffer,
        lss_tiny_data,
        tmp_path,
        parameterisation=kind,
        max_start_epoch=0,  # start epoch 0 of the only expert: a fixed segment
        dsa=False,  # full batches without augmentation: a fixed objective
        lr_img=100.0,
        lr_y=2.0,
        lr_lr=1e-4,
        syn_steps=4,
        iterations=10,
    )
    traj = one_expert_buffer.trajectory(0)
    n = d.synset.images().shape[0]
    plan = make_plan(n, 4, n, 8, None, torch.Generator().manual_seed(0))

    def loss_now() -> float:
        x, y = d.synset.images(), d.labels.targets()
        return matching_loss(d.spec, traj[0], traj[2], x, y, d.syn_lr, plan).item()

    before = loss_now()
    assert 0 < before < 10
    rows = [d.step() for _ in range(4)]
    assert all(r["start_epoch"] == 0 and r["expert"] == 0 for r in rows)
    # the first step scored the same objective (full batch; only the order differs)
    assert rows[0]["loss"] == pytest.approx(before, rel=1e-4)
    after = loss_now()
    assert after < 0.995 * before


def test_gradients_reach_every_trainable_tensor(lss_tiny_buffer, lss_tiny_data, tmp_path):
    d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path, subspaces=2, rank=1)
    before = {k: v.clone() for k, v in d._state_tensors().items() if not k.startswith("opt.")}
    d.step()
    for name in ("synset.mappers", "synset.bases", "labels.logits", "syn_lr"):
        assert not torch.equal(d._state_tensors()[name], before[name]), name
    assert d.synset.mappers.grad is not None and d.syn_lr.grad is not None


def test_huge_lr_lr_stops_with_numerical_fault_and_keeps_checkpoint(
    lss_tiny_buffer, lss_tiny_data, tmp_path
):
    d = make_distiller(
        lss_tiny_buffer, lss_tiny_data, tmp_path, lr_lr=1e12, iterations=20, checkpoint_every=1
    )
    d.checkpoint()  # a good state to fall back on
    with pytest.raises(NumericalFault, match=r"checkpoint\.json"):
        d.run()
    t, meta = load_artifact(tmp_path / "checkpoint", kind="distill_checkpoint")
    assert all(torch.isfinite(v).all() for k, v in t.items() if v.is_floating_point())
    assert float(t["syn_lr"][0]) > 0
    assert meta["iteration"] < 20
    # a new Distiller resumes from it
    again = make_distiller(
        lss_tiny_buffer, lss_tiny_data, tmp_path, lr_lr=1e12, iterations=20, checkpoint_every=1
    )
    assert again.iteration == meta["iteration"]
    assert torch.equal(again.syn_lr.detach().reshape(1), t["syn_lr"])


def test_nan_in_images_raises_numerical_fault_without_updating(
    lss_tiny_buffer, lss_tiny_data, tmp_path
):
    d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path, parameterisation="pixels")
    with torch.no_grad():
        d.synset.pixels[0, 0, 0, 0] = float("nan")
    labels_before = d.labels.logits.detach().clone()
    lr_before = float(d.syn_lr.detach())
    with pytest.raises(NumericalFault, match="iteration 0: non-finite"):
        d.step()
    assert d.iteration == 0 and d.log == []
    assert torch.equal(d.labels.logits.detach(), labels_before)
    assert float(d.syn_lr.detach()) == lr_before


def test_syn_lr_is_clamped_at_its_floor(lss_tiny_buffer, lss_tiny_data, tmp_path):
    """A step that lowers syn_lr below min_syn_lr (but keeps it positive) is clamped."""
    d = make_distiller(
        lss_tiny_buffer, lss_tiny_data, tmp_path, syn_lr_init=0.0011, min_syn_lr=1e-3, lr_lr=0
    )
    with torch.no_grad():
        d.syn_lr.fill_(0.0005)  # as if an update had lowered it
    d.step()
    assert float(d.syn_lr.detach()) == pytest.approx(1e-3)
    assert d.clamped == 1


@pytest.mark.parametrize("mode", ["unrolled", "checkpointed"])
def test_same_seed_same_synset(lss_tiny_buffer, lss_tiny_data, tmp_path, mode):
    """Two 2-iteration runs with one seed give bitwise-identical tensors; another seed not."""
    kw = dict(iterations=2, subspaces=2, rank=1, grad_mode=mode, checkpoint_every=1)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path / name, distill_seed=seed, **kw)
        d.run()
        runs[name] = load_artifact(tmp_path / name / "synset", kind="synset")[0]
    assert set(runs["a"]) == set(runs["b"])
    for k in runs["a"]:
        assert torch.equal(runs["a"][k], runs["b"][k]), k
    assert not torch.equal(runs["a"]["synset.bases"], runs["c"]["synset.bases"])


def test_save_and_load_synset_round_trip(lss_tiny_buffer, lss_tiny_data, tmp_path):
    d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path, iterations=1, subspaces=2, rank=1)
    d.run()
    loaded = load_synset(tmp_path / "synset")
    assert loaded.synset.kind == "lowrank"
    assert loaded.syn_lr == pytest.approx(float(d.syn_lr.detach()))
    x, y = loaded.export()
    x_ref, idx = d.synset.export()
    assert torch.equal(x, x_ref.detach())
    torch.testing.assert_close(y, d.labels.targets().detach()[idx])
    st = loaded.meta["storage"]
    assert st["used_floats"] <= st["budget_floats"] and st["fits"]
    assert loaded.meta["iterations"] == 1
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("iteration,loss")


def test_soft_labels_follow_datm_rule(lss_tiny_buffer, lss_tiny_data, tmp_path):
    """Initial logits = mean logits of the experts (final checkpoints) that classify the
    image correctly; mean of all experts when none does."""
    d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path)
    experts = lss_tiny_buffer.final_params()
    x = d.synset.images().detach()
    cls = d.synset.class_index()
    ref = []
    for i in range(x.shape[0]):
        outs = [convnet_forward(d.spec, w, x[i : i + 1])[0] for w in experts]
        ok = [o for o in outs if int(o.argmax()) == int(cls[i])]
        ref.append(torch.stack(ok or outs).mean(0))
    torch.testing.assert_close(d.labels.logits.detach(), torch.stack(ref), rtol=1e-5, atol=1e-6)


def test_init_soft_labels_on_a_hand_made_case(lss_tiny_buffer):
    """Expert 0 right, expert 1 wrong -> expert 0's logits; both wrong -> the mean."""
    spec = lss_tiny_buffer.spec
    experts = lss_tiny_buffer.final_params()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = torch.stack([convnet_forward(spec, w, x)[0] for w in experts])  # [2, K]
    a, b = int(out[0].argmax()), int(out[1].argmax())
    if a == b:  # make expert 1 disagree: raise one of its last-layer biases
        experts = experts.clone()
        experts[1, -spec.num_classes :] += 100 * torch.nn.functional.one_hot(
            torch.tensor((a + 1) % spec.num_classes), spec.num_classes
        )
        out = torch.stack([convnet_forward(spec, w, x)[0] for w in experts])
        b = int(out[1].argmax())
    assert a != b
    got = init_soft_labels(spec, experts, x, torch.tensor([a]))
    torch.testing.assert_close(got[0], out[0])
    wrong = next(k for k in range(spec.num_classes) if k not in (a, b))
    got = init_soft_labels(spec, experts, x, torch.tensor([wrong]))
    torch.testing.assert_close(got[0], out.mean(0))


def test_checkpointed_mode_runs_and_matches_unrolled_losses(
    lss_tiny_buffer, lss_tiny_data, tmp_path
):
    """The two exact gradient modes, driven by the same seed, log the same losses."""
    losses = {}
    for mode in ("unrolled", "checkpointed"):
        d = make_distiller(lss_tiny_buffer, lss_tiny_data, tmp_path / mode, grad_mode=mode)
        losses[mode] = [d.step()["loss"] for _ in range(3)]
    for a, b in zip(losses["unrolled"], losses["checkpointed"], strict=True):
        assert math.isfinite(a)
        assert b == pytest.approx(a, rel=1e-4)
