"""Every optimised path equals the straightforward one; TESLA's gradient and its inexactness.

* experts: E nets trained together (vmap, or the per-net loop) follow the same
  trajectories as E nets trained one at a time; the per-net loop (forward and
  backward one net at a time) is bitwise the old single-backward loop;
* evaluation: the eval nets together score the same as one after another;
* distillation: ``checkpointed`` equals ``unrolled`` (loss and gradients);
* ``tesla``: exact for one inner step, the closed form with every w_i held
  fixed for more, below 1 but positive cosine to the exact gradient, and memory
  (autograd-saved bytes) that does not grow with syn_steps.

Tiny shapes, one thread (conftest); the whole file runs in well under 60 s.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsslib.config import BufferConfig, DistillConfig, EvalConfig, ModelConfig
from lsslib.distill import Distiller
from lsslib.evaluate import evaluate_images
from lsslib.experts import train_experts
from lsslib.matching import matching_loss
from lsslib.models import ConvNetSpec, convnet_forward, init_flat
from lsslib.plan import make_plan, plan_to
from lsslib.plan import step_loss as _step_loss
from lsslib.tesla import SavedTensorMeter, tesla_matching_loss
from lsslib.training import (
    TrainState,
    accuracy,
    enable_tf32,
    gather_dsa_batch,
    to_device,
    train_nets,
)

SPEC = ConvNetSpec(3, 8, 4, depth=2, width=4)
DSA = "color_crop_cutout_flip_scale_rotate"
TRAIN = dict(
    lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=10,  # 48 images: a smaller last batch
    dsa_strategy=DSA,
    lr_decay_epoch=2,
)


def fresh(seeds: list[int], spec: ConvNetSpec = SPEC) -> TrainState:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    flats = torch.stack([init_flat(spec, g) for g in gens])
    return TrainState(flats, torch.zeros_like(flats), gens, 0)


def trajectory(state: TrainState, x, y, epochs: int, **kw) -> list[torch.Tensor]:
    snaps = [state.flats.clone()]
    train_nets(
        SPEC,
        state,
        x,
        y,
        epochs=epochs,
        on_epoch=lambda st, _a: snaps.append(st.flats.clone()),
        **kw,
    )
    return snaps


# ------------------------------------------------------------------ experts
@pytest.mark.parametrize("soft", [False, True])
def test_experts_together_follow_the_one_at_a_time_trajectories(lss_tiny_data, soft):
    """Tolerance: the per-net loop is bitwise equal; vmap (grouped convolutions) to 1e-5."""
    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    if soft:
        y = torch.softmax(torch.randn(len(y), 4, generator=torch.Generator().manual_seed(1)), -1)
    seeds = [21, 22, 23]
    alone = [trajectory(fresh([s]), x, y, 3, vectorise=False, **TRAIN) for s in seeds]
    for vec in (False, True):
        together = trajectory(fresh(seeds), x, y, 3, vectorise=vec, **TRAIN)
        for ep, snap in enumerate(together):
            for i in range(len(seeds)):
                if vec:
                    torch.testing.assert_close(snap[i], alone[i][ep][0], rtol=1e-4, atol=1e-5)
                else:
                    assert torch.equal(snap[i], alone[i][ep][0]), (ep, i)


def _reference_loop_train(state: TrainState, x, y, epochs: int) -> TrainState:
    """The per-net loop as it was before the speed edits: one backward through all nets."""
    n, e = x.shape[0], len(state.generators)
    lr_t = torch.as_tensor(TRAIN["lr"], dtype=torch.float32).reshape(-1, 1).expand(e, 1)
    while state.epoch < epochs:
        factor = 0.1 if state.epoch >= TRAIN["lr_decay_epoch"] else 1.0
        perms = torch.stack([torch.randperm(n, generator=g) for g in state.generators])
        for b0 in range(0, n, TRAIN["batch_size"]):
            idx = perms[:, b0 : b0 + TRAIN["batch_size"]]
            xb = gather_dsa_batch(x, idx, DSA, state.generators)
            yb = y[idx]
            w = state.flats.detach().requires_grad_(True)
            logits = torch.stack([convnet_forward(SPEC, w[i], xb[i]) for i in range(e)])
            k = logits.shape[-1]
            ce = F.cross_entropy(logits.reshape(-1, k), yb.reshape(-1), reduction="none")
            (grad,) = torch.autograd.grad(ce.view(e, -1).mean(1).sum(), w)
            with torch.no_grad():
                d = grad + TRAIN["weight_decay"] * state.flats
                state.momentum.mul_(TRAIN["momentum"]).add_(d)
                state.flats.sub_(lr_t * factor * state.momentum)
        state.epoch += 1
    return state


def test_per_net_loop_is_bitwise_the_single_backward_loop(lss_tiny_data):
    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    new = train_nets(SPEC, fresh([5, 6]), x, y, epochs=3, vectorise=False, **TRAIN)
    ref = _reference_loop_train(fresh([5, 6]), x, y, 3)
    assert torch.equal(new.flats, ref.flats)
    assert torch.equal(new.momentum, ref.momentum)


def test_compiled_forward_path_matches_eager(lss_tiny_data):
    """The optional torch.compile path (checked with the 'eager' backend: tracing, no codegen)."""
    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    kw = {**TRAIN, "dsa_strategy": None}
    ref = train_nets(SPEC, fresh([1, 2]), x, y, epochs=1, vectorise=True, **kw)
    got = train_nets(
        SPEC, fresh([1, 2]), x, y, epochs=1, vectorise=True, compile_backend="eager", **kw
    )
    torch.testing.assert_close(got.flats, ref.flats, rtol=1e-5, atol=1e-6)


def test_accuracy_vectorised_equals_loop_and_ignores_chunking(lss_tiny_data):
    d = lss_tiny_data
    st = train_nets(SPEC, fresh([7, 8, 9]), d.x_train, d.y_train, epochs=2, **TRAIN)
    ref = accuracy(SPEC, st.flats, d.x_train, d.y_train, vectorise=False)
    for vec in (False, True):
        for batch in (2000, 7, 1):
            got = accuracy(SPEC, st.flats, d.x_train, d.y_train, batch=batch, vectorise=vec)
            torch.testing.assert_close(got, ref)


def test_host_helpers_keep_values_and_flags():
    t = torch.arange(5)
    assert torch.equal(to_device(t, torch.device("cpu")), t)
    old = enable_tf32(True)
    try:
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        enable_tf32(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]
    g = torch.Generator().manual_seed(0)
    plan = make_plan(10, 3, 4, 8, DSA, g)
    moved = plan_to(plan, "cpu")
    for a, b in zip(plan.indices, moved.indices, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plan.augment, moved.augment, strict=True):
        assert a.family == b.family
        assert all(torch.equal(a.values[k], b.values[k]) for k in a.values)


# --------------------------------------------------------------- evaluation
def test_eval_nets_together_score_as_one_after_another(lss_tiny_data):
    d = lss_tiny_data
    kw = dict(eval_epochs=4, batch_eval=16)
    y = torch.softmax(
        torch.randn(len(d.y_train), 4, generator=torch.Generator().manual_seed(2)), -1
    )
    together = evaluate_images(SPEC, d.x_train, y, d, EvalConfig(num_eval=3, **kw), lr=0.02)
    for i in range(3):
        one = evaluate_images(
            SPEC, d.x_train, y, d, EvalConfig(num_eval=1, eval_seed=i, **kw), lr=0.02
        )
        assert one.accuracies[0] == pytest.approx(together.accuracies[i], abs=1e-6)


# ------------------------------------------------------------- distillation
def problem(steps: int, seed: int = 0, lr: float = 0.05, strategy: str | None = DSA):
    """Pixels (a leaf), soft labels (softmax of a logits leaf), a segment, syn_lr and a plan."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.get_default_dtype()
    spec = ConvNetSpec(3, 8, 4, depth=2, width=4)
    n = 12
    x = torch.randn(n, 3, 8, 8, generator=g).to(dt).requires_grad_(True)
    logits = (2 * torch.randn(n, 4, generator=g)).to(dt).requires_grad_(True)
    start = init_flat(spec, g).to(dt)
    target = start + 0.05 * torch.randn(start.shape, generator=g).to(dt)
    syn_lr = torch.tensor(lr, dtype=dt, requires_grad=True)
    plan = make_plan(n, steps, 8, 8, strategy, g)
    return spec, x, logits, start, target, syn_lr, plan


def grads_of(mode: str, steps: int, **kw):
    spec, x, logits, start, target, syn_lr, plan = problem(steps, **kw)
    loss = matching_loss(spec, start, target, x, torch.softmax(logits, -1), syn_lr, plan, mode)
    if mode == "unrolled":
        loss.backward()
    else:
        assert not loss.requires_grad
    return loss.item(), x.grad.clone(), logits.grad.clone(), syn_lr.grad.clone()


def tesla_reference(steps: int, **kw):
    """What TESLA computes, by autograd: w_N = w_0 - a * sum_i g_i(w_i; x, y), every w_i held fixed."""
    spec, x, logits, start, target, syn_lr, plan = problem(steps, **kw)
    y = torch.softmax(logits, -1)
    w, gsum = start.clone(), 0
    for idx, aug in zip(plan.indices, plan.augment, strict=True):
        wi = w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_step_loss(spec, wi, x, y, idx, aug), wi, create_graph=True)
        gsum = gsum + g
        w = (wi - syn_lr.detach() * g).detach()
    loss = (start - syn_lr * gsum - target).pow(2).sum() / (start - target).pow(2).sum()
    loss.backward()
    return loss.item(), x.grad.clone(), logits.grad.clone(), syn_lr.grad.clone()


def cosine(a, b) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_checkpointed_equals_unrolled(lss_float64):
    with lss_float64():
        lu, *gu = grads_of("unrolled", 4)
        lc, *gc = grads_of("checkpointed", 4)
    assert lc == pytest.approx(lu, rel=1e-12)
    for a, b in zip(gu, gc, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_tesla_is_exact_for_one_inner_step(lss_float64):
    """With one step there is no later step whose dependence TESLA drops.

    This also pins the gradient's scale: the released code's image gradient
    is half of this (``2 * tuple`` repeats the tuple instead of doubling it).
    """
    with lss_float64():
        le, *ge = grads_of("unrolled", 1)
        lt, *gt = grads_of("tesla", 1)
    assert lt == pytest.approx(le, rel=1e-12)
    for a, b in zip(ge, gt, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps", [3, 6])
def test_tesla_is_the_fixed_w_closed_form_and_only_close_to_exact(lss_float64, steps):
    with lss_float64():
        le, *ge = grads_of("checkpointed", steps)
        lt, *gt = grads_of("tesla", steps)
        lr_, *gr = tesla_reference(steps)
    assert lt == pytest.approx(le, rel=1e-12)  # the loss value is exact
    assert lr_ == pytest.approx(le, rel=1e-10)
    for b, c in zip(gt, gr, strict=True):  # TESLA = the closed form with w_i held fixed
        torch.testing.assert_close(b, c, rtol=1e-8, atol=1e-12)
    gx_e, gy_e, glr_e = ge
    gx_t, gy_t, glr_t = gt
    for a, b in ((gx_t, gx_e), (gy_t, gy_e)):
        c = cosine(a, b)
        assert 0 < c < 1 - 1e-6, c  # approximate, but a descent-compatible direction
        assert float((a - b).norm() / b.norm()) > 1e-4
    assert torch.sign(glr_t) == torch.sign(glr_e)
    assert float((glr_t - glr_e).abs() / glr_e.abs()) > 1e-4


def test_tesla_memory_does_not_grow_with_syn_steps():
    """Autograd-saved bytes: constant for tesla (and checkpointed), growing for unrolled.

    Without DSA, so that every inner step saves the same tensors (DSA families
    save different ones, and the peak would depend on which families were drawn).
    """
    peak = {}
    for mode in ("unrolled", "checkpointed", "tesla"):
        for steps in (2, 8):
            spec, x, logits, start, target, syn_lr, plan = problem(steps, strategy=None)
            with SavedTensorMeter() as m:
                loss = matching_loss(
                    spec, start, target, x, torch.softmax(logits, -1), syn_lr, plan, mode
                )
                if mode == "unrolled":
                    loss.backward()
                del loss
            assert m.live_bytes == 0  # everything autograd held was released
            peak[mode, steps] = m.peak_bytes
    assert peak["unrolled", 8] > 3 * peak["unrolled", 2]
    for mode in ("tesla", "checkpointed"):
        assert peak[mode, 8] <= peak[mode, 2] * 1.02 + 256, peak
        assert peak[mode, 8] < peak["unrolled", 8] / 3


def test_tesla_function_equals_dispatch_and_accepts_hard_labels():
    spec, x, logits, start, target, syn_lr, plan = problem(3, strategy=None)
    hard = torch.arange(12) % 4
    loss = tesla_matching_loss(spec, start, target, x, hard, syn_lr, plan)
    gx, glr = x.grad.clone(), syn_lr.grad.clone()
    x.grad = syn_lr.grad = None
    loss2 = matching_loss(spec, start, target, x, hard, syn_lr, plan, "tesla")
    assert loss.item() == loss2.item() and not loss.requires_grad
    assert torch.equal(x.grad, gx) and torch.equal(syn_lr.grad, glr)
    with pytest.raises(ValueError, match="grad_mode='bogus'"):
        tesla_matching_loss(spec, start, target, x, hard, syn_lr, plan, mode="bogus")


def test_distiller_step_with_tesla(lss_tiny_data, tmp_path):
    buf = train_experts(
        lss_tiny_data,
        ModelConfig(net_depth=2, net_width=4),
        BufferConfig(num_experts=1, train_epochs=2, batch_train=16, lr_teacher=0.05),
        tmp_path / "buf",
        log=lambda _l: None,
    )
    cfg = DistillConfig(
        ipc=1, rank=2, syn_steps=3, expert_epochs=2, max_start_epoch=0, lr_lr=1e-5,
        grad_mode="tesla", iterations=2,
    )  # fmt: skip
    d = Distiller(
        cfg,
        lss_tiny_data.config,
        buf,
        lss_tiny_data.x_train,
        lss_tiny_data.y_train,
        tmp_path / "run",
    )
    before = d.synset.mappers.detach().clone()
    row = d.step()
    assert row["loss"] > 0 and d.synset.mappers.grad is not None and d.syn_lr.grad is not None
    assert not torch.equal(d.synset.mappers.detach(), before)
