"""Vectorised training of many nets equals training them one by one; evaluation protocol."""

from __future__ import annotations

import pytest
import torch

from lsslib.config import EvalConfig
from lsslib.evaluate import evaluate_images, random_real_subset
from lsslib.models import ConvNetSpec, init_flat
from lsslib.training import TrainState, accuracy, soft_cross_entropy, train_nets

SPEC = ConvNetSpec(3, 8, 4, depth=2, width=4)


def fresh_state(seeds: list[int]) -> TrainState:
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    flats = torch.stack([init_flat(SPEC, g) for g in gens])
    return TrainState(flats, torch.zeros_like(flats), gens, 0)


TRAIN = dict(
    epochs=3,
    lr=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    batch_size=10,  # 48 images: the last batch of an epoch is smaller
    dsa_strategy="color_crop_cutout_flip_scale_rotate",
    lr_decay_epoch=2,
)


@pytest.mark.parametrize("vectorise", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_three_nets_together_equal_three_alone(lss_tiny_data, vectorise, soft):
    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    if soft:
        y = torch.softmax(torch.randn(len(y), 4, generator=torch.Generator().manual_seed(0)), -1)
    seeds = [11, 12, 13]
    together = train_nets(SPEC, fresh_state(seeds), x, y, vectorise=vectorise, **TRAIN)
    assert together.epoch == 3
    for i, s in enumerate(seeds):
        alone = train_nets(SPEC, fresh_state([s]), x, y, vectorise=False, **TRAIN)
        torch.testing.assert_close(together.flats[i], alone.flats[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together.momentum[i], alone.momentum[0], rtol=1e-4, atol=1e-5)
        # the generators advanced identically (same draws in the same order)
        assert torch.equal(together.generators[i].get_state(), alone.generators[0].get_state())
    # the nets differ from each other and moved away from their initialisation
    assert not torch.allclose(together.flats[0], together.flats[1])
    assert not torch.allclose(together.flats[0], fresh_state([11]).flats[0])


def test_training_in_two_calls_equals_one_call(lss_tiny_data):
    """A TrainState resumes exactly (the basis of resumable expert buffers)."""
    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    one = train_nets(SPEC, fresh_state([3, 4]), x, y, **TRAIN)
    st = train_nets(SPEC, fresh_state([3, 4]), x, y, **{**TRAIN, "epochs": 1})
    rng = st.rng_states()
    st2 = TrainState(
        st.flats.clone(), st.momentum.clone(), [torch.Generator() for _ in range(2)], 1
    )
    st2.set_rng_states(rng)
    two = train_nets(SPEC, st2, x, y, **TRAIN)
    assert torch.equal(one.flats, two.flats)


def test_sgd_matches_torch_optim(lss_tiny_data):
    """The flat SGD (momentum, weight decay, lr decay) equals torch.optim.SGD on one net."""
    from lsslib.models import convnet_forward

    x, y = lss_tiny_data.x_train, lss_tiny_data.y_train
    kw = {**TRAIN, "dsa_strategy": None, "batch_size": 48}  # full batch: no shuffling effect
    st = train_nets(SPEC, fresh_state([5]), x, y, **kw)
    w = fresh_state([5]).flats[0].clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(3):
        for group in opt.param_groups:
            group["lr"] = 0.05 * (0.1 if epoch >= 2 else 1.0)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(convnet_forward(SPEC, w, x), y).backward()
        opt.step()
    torch.testing.assert_close(st.flats[0], w.detach(), rtol=1e-5, atol=1e-6)


def test_training_learns_the_toy_task(lss_tiny_data):
    d = lss_tiny_data
    st = train_nets(SPEC, fresh_state([1, 2]), d.x_train, d.y_train, **{**TRAIN, "epochs": 15})
    acc = accuracy(SPEC, st.flats, d.x_test, d.y_test)
    chance = 1 / 4
    assert acc.shape == (2,) and (acc > chance + 0.25).all()


def test_soft_cross_entropy_equals_hard_for_one_hot():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    onehot = torch.nn.functional.one_hot(y, 4).float()
    torch.testing.assert_close(soft_cross_entropy(logits, onehot), soft_cross_entropy(logits, y))
    # a uniform target: mean over classes of -log_softmax
    uni = torch.full((6, 4), 0.25)
    ref = -torch.log_softmax(logits, -1).mean(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, uni), ref)


def test_evaluate_images_vectorised_equals_loop(lss_tiny_data):
    d = lss_tiny_data
    cfg = EvalConfig(num_eval=3, eval_epochs=4, batch_eval=16)
    spec = ConvNetSpec(3, 8, 4, depth=2, width=4)
    x, y = random_real_subset(d, 3, seed=0)
    assert torch.equal(torch.bincount(y), torch.full((4,), 3))
    res_v = evaluate_images(spec, x, y, d, cfg, lr=0.01, vectorise=True, curve_points=2)
    res_l = evaluate_images(spec, x, y, d, cfg, lr=0.01, vectorise=False, curve_points=2)
    assert len(res_v.accuracies) == 3
    for a, b in zip(res_v.accuracies, res_l.accuracies, strict=True):
        assert abs(a - b) <= 1e-4
    assert res_v.mean == pytest.approx(sum(res_v.accuracies) / 3)
    mean = res_v.mean
    std = (sum((a - mean) ** 2 for a in res_v.accuracies) / 3) ** 0.5  # population std
    assert res_v.std == pytest.approx(std)
    assert res_v.curve_epochs == [2, 4] and res_v.curve_mean[-1] == pytest.approx(mean)
    assert res_v.num_images == 12 and res_v.epochs == 4


def test_evaluation_equals_training_nets_one_by_one(lss_tiny_data):
    """evaluate_images trains net i from seed eval_seed + i with the MTT protocol."""
    d = lss_tiny_data
    cfg = EvalConfig(num_eval=2, eval_epochs=4, batch_eval=16, eval_seed=7)
    spec = ConvNetSpec(3, 8, 4, depth=2, width=4)
    res = evaluate_images(spec, d.x_train, d.y_train, d, cfg, lr=0.02)
    for i in range(2):
        gen = torch.Generator().manual_seed(7 + i)
        flats = init_flat(spec, gen)[None]
        st = TrainState(flats, torch.zeros_like(flats), [gen], 0)
        train_nets(
            spec,
            st,
            d.x_train,
            d.y_train,
            epochs=4,
            lr=0.02,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=16,
            dsa_strategy=cfg.dsa_strategy,
            lr_decay_epoch=2,
        )
        acc = float(accuracy(spec, st.flats, d.x_test, d.y_test)[0])
        assert abs(acc - res.accuracies[i]) <= 1e-4


def test_test_batch_is_sized_by_memory_and_does_not_change_accuracy(lss_tiny_data):
    """accuracy(batch=None) sizes its batches by memory; any batch gives the same accuracy."""
    from lsslib.training import TEST_BATCH_BYTES, test_batch_size

    w128 = ConvNetSpec(3, 32, 10)
    n = test_batch_size(w128)
    assert n == TEST_BATCH_BYTES // (3 * 4 * 128 * 32 * 32) == 170  # not the old 2,000
    assert test_batch_size(w128, budget_bytes=1) == 1
    assert test_batch_size(ConvNetSpec(3, 8, 4, width=4)) == 10_000
    d = lss_tiny_data
    flats = fresh_state([0, 1]).flats
    auto = accuracy(SPEC, flats, d.x_test, d.y_test)
    for b in (1, 5, 1000):
        assert torch.equal(accuracy(SPEC, flats, d.x_test, d.y_test, batch=b), auto)
    with pytest.raises(ValueError, match="batch=0"):
        accuracy(SPEC, flats, d.x_test, d.y_test, batch=0)


def test_curve_costs_at_most_five_percent_and_can_be_off(lss_tiny_data, monkeypatch):
    """The curve's test images keep it within 5 % of the evaluation; curve_points=0 skips it."""
    import lsslib.evaluate as ev
    from lsslib.models import flops_per_image

    w128 = ConvNetSpec(3, 32, 10)
    f = flops_per_image(w128)
    f1 = 2 * 32 * 32 * 128 * 3 * 9
    for n_img, epochs in ((10, 300), (100, 500), (500, 1000), (1, 10)):
        n = ev.curve_test_images(w128, n_img, epochs, 10_000, 5)
        train_test = n_img * epochs * (3 * f - f1) + 10_000 * f
        assert 0 <= n <= 1000
        assert 4 * n * f <= 0.05 * (train_test + 4 * n * f)  # within 5 %
        if n < 1000:  # and the largest count that is
            assert 4 * (n + 1) * f > 0.05 * (train_test + 4 * (n + 1) * f)
    assert ev.curve_test_images(w128, 10, 300, 10_000, 5) == 247
    assert ev.curve_test_images(w128, 10, 300, 10_000, 1) == 0
    calls = []
    real_accuracy = ev.accuracy
    monkeypatch.setattr(
        ev, "accuracy", lambda *a, **k: calls.append(len(a[2])) or real_accuracy(*a, **k)
    )
    d = lss_tiny_data
    cfg = EvalConfig(num_eval=1, eval_epochs=4, batch_eval=16)
    seen = []
    res = evaluate_images(
        SPEC,
        d.x_train,
        d.y_train,
        d,
        cfg,
        lr=0.01,
        curve_points=0,
        progress=lambda e, t: seen.append((e, t)),
    )
    assert res.curve_epochs == [4] and calls == [len(d.y_test)]  # the final test only
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    calls.clear()
    res2 = evaluate_images(
        SPEC, d.x_train, d.y_train, d, cfg, lr=0.01, curve_points=2, progress=False
    )
    assert (
        res2.curve_epochs == [2, 4] and res2.accuracies == res.accuracies
    )  # the curve changes nothing
    assert calls[-1] == len(d.y_test) and len(calls) == 2
    with pytest.raises(ValueError, match="curve_points=-1"):
        evaluate_images(SPEC, d.x_train, d.y_train, d, cfg, lr=0.01, curve_points=-1)
