"""Trajectory-matching loss: gradients (finite differences), gradient modes, plans, schedules."""

from __future__ import annotations

import itertools

import pytest
import torch

from lsslib.config import DistillConfig
from lsslib.matching import matching_loss
from lsslib.models import ConvNetSpec, init_flat
from lsslib.parameterisations.lowrank import LowRankSynSet
from lsslib.plan import make_plan, sample_start_epoch, schedule_upper
from lsslib.synset import Labels, layout

K, C, SIDE, R = 3, 2, 8, 2


def tiny_problem(seed: int = 0, strategy: str | None = "color_scale_rotate", steps: int = 3):
    """A tiny low-rank set with soft labels, a student spec, a segment and a plan.

    Tensors take the current default dtype (float64 inside :func:`lss_float64`).
    """
    g = torch.Generator().manual_seed(seed)
    dt = torch.get_default_dtype()
    spec = ConvNetSpec(C, SIDE, K, depth=1, width=4)
    lay = layout(
        "lowrank",
        ipc=1,
        rank=R,
        subspaces=1,
        channels=C,
        side=SIDE,
        num_classes=K,
        soft_labels=True,
        strict_budget=False,
    )
    j = lay.bases
    syn = LowRankSynSet(
        lay,
        torch.randn(K, 1, C, SIDE, R, generator=g),
        torch.randn(K, 1, j, C, R, SIDE, generator=g) / 2,
        K,
    ).to(dt)
    labels = Labels(syn.class_index(), K, 2 * torch.randn(K * j, K, generator=g)).to(dt)
    start = init_flat(spec, g).to(dt)
    target = start + 0.05 * torch.randn(start.shape, generator=g).to(dt)
    syn_lr = torch.tensor(0.05, dtype=dt, requires_grad=True)
    n = K * j
    plan = make_plan(n, steps, n - 1, SIDE, strategy, g)
    return spec, syn, labels, start, target, syn_lr, plan


def loss_value(spec, syn, labels, start, target, syn_lr, plan, mode="unrolled"):
    return matching_loss(spec, start, target, syn.images(), labels.targets(), syn_lr, plan, mode)


def test_gradients_reach_mappers_bases_labels_and_lr_finite_differences(lss_float64):
    """Autograd through the unrolled inner loop equals central finite differences (float64)."""
    with lss_float64():
        spec, syn, labels, start, target, syn_lr, plan = tiny_problem()
        loss = loss_value(spec, syn, labels, start, target, syn_lr, plan)
        loss.backward()
        leaves = {
            "mappers": syn.mappers,
            "bases": syn.bases,
            "logits": labels.logits,
            "syn_lr": syn_lr,
        }
        for name, leaf in leaves.items():
            assert leaf.grad is not None, name
            assert leaf.grad.dtype == torch.float64
            assert torch.isfinite(leaf.grad).all(), name
            assert leaf.grad.abs().max() > 0, name
        g = torch.Generator().manual_seed(11)
        eps = 1e-6
        for name, leaf in leaves.items():
            flat = leaf.data.view(-1)
            picks = torch.randperm(flat.numel(), generator=g)[:4].tolist()
            for i in picks:
                old = float(flat[i])
                values = []
                for delta in (eps, -eps):
                    flat[i] = old + delta  # .data: not recorded by autograd
                    values.append(loss_value(spec, syn, labels, start, target, syn_lr, plan).item())
                flat[i] = old
                fd = (values[0] - values[1]) / (2 * eps)
                ad = float(leaf.grad.view(-1)[i])
                assert ad == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, i)


@pytest.mark.parametrize("hard", [False, True])
def test_checkpointed_equals_unrolled_float64(lss_float64, hard):
    """Same plan: same loss and the same gradients wrt every leaf (float64, rel 1e-9)."""
    with lss_float64():
        results = []
        for mode in ("unrolled", "checkpointed"):
            spec, syn, labels, start, target, syn_lr, plan = tiny_problem(seed=3)
            y = labels.class_index if hard else labels.targets()
            loss = matching_loss(spec, start, target, syn.images(), y, syn_lr, plan, mode)
            if mode == "unrolled":
                loss.backward()
            assert not loss.requires_grad or mode == "unrolled"
            grads = [syn.mappers.grad, syn.bases.grad, syn_lr.grad]
            grads.append(None if hard else labels.logits.grad)
            results.append((loss.item(), grads))
        (l_u, g_u), (l_c, g_c) = results
        assert l_c == pytest.approx(l_u, rel=1e-12)
        for a, b in zip(g_u, g_c, strict=True):
            if a is None:
                assert b is None
                continue
            assert a.abs().max() > 0
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_checkpointed_equals_unrolled_float32_pixels():
    """The modes also agree in float32 on a pixel set with hard labels (rtol 1e-4)."""
    out = []
    for mode in ("unrolled", "checkpointed"):
        spec, syn, labels, start, target, syn_lr, plan = tiny_problem(seed=4, strategy=None)
        x = syn.images().detach().clone().requires_grad_(True)
        loss = matching_loss(spec, start, target, x, labels.class_index, syn_lr, plan, mode)
        if mode == "unrolled":
            loss.backward()
        out.append((loss.item(), x.grad.clone(), syn_lr.grad.clone()))
    (l_u, x_u, lr_u), (l_c, x_c, lr_c) = out
    assert l_c == pytest.approx(l_u, rel=1e-5)
    torch.testing.assert_close(x_c, x_u, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(lr_c, lr_u, rtol=1e-4, atol=1e-7)


def test_matching_loss_is_zero_at_target_and_one_without_steps_progress():
    """Normalisation: a student that does not move scores exactly 1; one on target scores 0."""
    spec, syn, labels, start, target, syn_lr, plan = tiny_problem(seed=5, strategy=None)
    zero_lr = torch.tensor(0.0, requires_grad=True)
    loss = loss_value(spec, syn, labels, start, target, zero_lr, plan)
    assert loss.item() == pytest.approx(1.0, rel=1e-6)
    # with the target chosen as the student's own end point the loss vanishes
    with torch.no_grad():
        w = start.clone().requires_grad_(True)
    from lsslib.plan import step_loss as _step_loss

    for idx, aug in zip(plan.indices, plan.augment, strict=True):
        (g,) = torch.autograd.grad(
            _step_loss(spec, w, syn.images().detach(), labels.targets().detach(), idx, aug), w
        )
        w = (w - syn_lr.detach() * g).detach().requires_grad_(True)
    loss2 = loss_value(spec, syn, labels, start, w.detach(), syn_lr, plan)
    assert loss2.item() < 1e-10


def test_unknown_grad_mode_raises():
    spec, syn, labels, start, target, syn_lr, plan = tiny_problem(strategy=None)
    with pytest.raises(ValueError, match="grad_mode='bogus'.*unrolled"):
        loss_value(spec, syn, labels, start, target, syn_lr, plan, mode="bogus")


def test_make_plan_batches_cover_a_permutation_before_repeating():
    g = torch.Generator().manual_seed(0)
    plan = make_plan(10, 7, 4, SIDE, "flip_crop", g)
    assert len(plan.indices) == len(plan.augment) == 7
    assert all(len(i) == 4 for i in plan.indices)
    assert all(a is not None and a.family in ("flip", "crop") for a in plan.augment)
    # MTT batching: consecutive chunks of a random permutation; the first 8 images drawn
    # (two batches) are distinct, and every batch holds distinct indices
    first = torch.cat(plan.indices[:2])
    assert len(set(first.tolist())) == 8
    assert all(len(set(i.tolist())) == 4 for i in plan.indices)
    # same seed, same plan
    again = make_plan(10, 7, 4, SIDE, "flip_crop", torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(plan.indices, again.indices, strict=True))
    assert make_plan(10, 3, 4, SIDE, None, g).augment == [None, None, None]


# ----------------------------------------------------------------------- schedules
SCHEDULE_CASES = [
    dict(schedule="linear", max_start_epoch=20, schedule_start=10, schedule_iterations=100),
    dict(schedule="linear", max_start_epoch=7, min_start_epoch=2, schedule_iterations=33),
    dict(schedule="linear", max_start_epoch=40, schedule_start=20),  # E = iterations
    dict(schedule="stair", max_start_epoch=9, schedule_start=3, stair_every=7),
    dict(schedule="stair", max_start_epoch=6, min_start_epoch=1, stair_every=5),
    dict(schedule="fixed", max_start_epoch=12),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: c["schedule"])
def test_schedule_upper_bound_monotone_from_t_cur_to_t_max(case):
    cfg = DistillConfig(iterations=150, **case)
    t_max, t_min = cfg.max_start_epoch, cfg.min_start_epoch
    uppers = [schedule_upper(cfg, it) for it in range(0, 301)]
    assert all(b >= a for a, b in itertools.pairwise(uppers))
    assert max(uppers) == t_max == uppers[-1]
    if cfg.schedule == "fixed":
        assert set(uppers) == {t_max}
        return
    t_cur = case.get("schedule_start", max(t_min, -(-t_max // 2)))
    assert cfg.upper_start == t_cur
    assert uppers[0] == t_cur
    if cfg.schedule == "linear":
        e = cfg.schedule_iterations or cfg.iterations
        assert uppers[e] == t_max
        assert uppers[e - 1] < t_max
        # DATM's line, floored
        for it in (1, e // 3, e // 2):
            assert uppers[it] == min(t_max, int(t_cur + (t_max - t_cur) * it / e))
    else:
        n = cfg.stair_every
        # one epoch per stair_every iterations
        assert uppers[n - 1] == t_cur and uppers[n] == t_cur + 1
        assert uppers[(t_max - t_cur) * n] == t_max
        assert uppers[(t_max - t_cur) * n - 1] == t_max - 1


@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: c["schedule"])
def test_sampled_start_epochs_stay_in_t_min_to_upper(case):
    cfg = DistillConfig(iterations=150, **case)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for it in range(0, 300, 3):
        for _ in range(5):
            start, upper = sample_start_epoch(cfg, it, g)
            assert upper == schedule_upper(cfg, it)
            assert cfg.min_start_epoch <= start < upper
            seen.add(start)
    # the whole range [T_min, T_max) is eventually used
    assert seen == set(range(cfg.min_start_epoch, cfg.max_start_epoch))


def test_start_epoch_when_range_is_empty():
    cfg = DistillConfig(max_start_epoch=3, min_start_epoch=3, schedule="fixed")
    start, upper = sample_start_epoch(cfg, 0, torch.Generator().manual_seed(0))
    assert start == upper == 3
