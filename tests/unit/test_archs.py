"""Tests of lsslib.archs: the cross-architecture networks and their trainer (CPU, small)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lsslib import archs

# Parameter counts of the reference networks, obtained by running the reference code:
# GeorgeCazenavette/mtt-distillation, file networks.py (commit 50dccea4), classes
# ResNet18BN (-> ResNet(BasicBlock, [2, 2, 2, 2], norm='batchnorm')), VGG11BN
# (-> VGG('VGG11', norm='batchnorm')) and AlexNet, built with channel=3 (and channel=1)
# and summed as sum(p.numel() for p in net.parameters()). VICO-UoE/DatasetCondensation
# networks.py (commit 53f63a67) gives the same numbers. Keys: (arch, channels, classes).
REFERENCE_PARAMS = {
    ("resnet18_bn", 3, 10): 11_173_962,
    ("resnet18_bn", 3, 100): 11_220_132,
    ("resnet18_bn", 1, 10): 11_172_810,
    ("vgg11_bn", 3, 10): 9_231_114,
    ("vgg11_bn", 3, 100): 9_277_284,
    ("vgg11_bn", 1, 10): 9_229_962,
    ("alexnet", 3, 10): 1_872_202,
    ("alexnet", 3, 100): 2_148_772,
    ("alexnet", 1, 10): 1_865_802,
}
# Buffers (BatchNorm running mean/var + num_batches_tracked) of the same reference nets.
REFERENCE_BUFFERS = {"resnet18_bn": 9_620, "vgg11_bn": 5_512, "alexnet": 0}

SIDE = {3: 32, 1: 28}


@pytest.mark.parametrize(("name", "channels", "classes"), sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(name, channels, classes):
    net = archs.build(name, channels=channels, side=SIDE[channels], num_classes=classes)
    assert archs.count_parameters(net) == REFERENCE_PARAMS[(name, channels, classes)]
    assert sum(b.numel() for b in net.buffers()) == REFERENCE_BUFFERS[name]


@pytest.mark.parametrize("name", archs.ARCHS)
@pytest.mark.parametrize(("channels", "classes"), [(3, 10), (3, 100), (1, 10)])
def test_forward_shape(name, channels, classes):
    torch.manual_seed(0)
    net = archs.build(name, channels=channels, side=SIDE[channels], num_classes=classes)
    assert isinstance(net, nn.Module) and net.training
    x = torch.randn(2, channels, SIDE[channels], SIDE[channels])
    for mode in (net.train, net.eval):
        mode()
        out = net(x)
        assert out.shape == (2, classes) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_batchnorm_archs_have_batchnorm_and_alexnet_none():
    kinds = {
        name: {type(m) for m in archs.build(name, channels=3, side=32, num_classes=10).modules()}
        for name in archs.ARCHS
    }
    assert nn.BatchNorm2d in kinds["resnet18_bn"] and nn.BatchNorm2d in kinds["vgg11_bn"]
    assert nn.BatchNorm2d not in kinds["alexnet"]
    assert nn.MaxPool2d not in kinds["resnet18_bn"]  # CIFAR stem: no max pool


def test_build_errors():
    with pytest.raises(
        ValueError, match=r"invalid parameter arch='x': allowed one of 'resnet18_bn'"
    ):
        archs.build("x", channels=3, side=32, num_classes=10)
    with pytest.raises(ValueError, match=r"invalid parameter side=28: allowed 32"):
        archs.build("alexnet", channels=3, side=28, num_classes=10)
    with pytest.raises(ValueError, match=r"invalid parameter side=64"):
        archs.build("vgg11_bn", channels=3, side=64, num_classes=10)
    with pytest.raises(ValueError, match=r"invalid parameter channels=2"):
        archs.build("alexnet", channels=2, side=32, num_classes=10)
    with pytest.raises(ValueError, match=r"invalid parameter num_classes=1"):
        archs.build("alexnet", channels=3, side=32, num_classes=1)


# --------------------------------------------------------------------------- trainer


def _colour_problem(n_per: int, k: int, seed: int, noise: float = 0.3):
    """``k`` classes of constant-colour 3x32x32 images plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])[:k]
    y = torch.arange(k).repeat_interleave(n_per)
    x = colours[y].view(-1, 3, 1, 1).expand(-1, 3, 32, 32)
    x = x + noise * torch.randn(len(y), 3, 32, 32, generator=g)
    return x.contiguous(), y


def test_evaluate_modules_learns_separable_problem():
    x, y = _colour_problem(4, 3, seed=0)
    xt, yt = _colour_problem(10, 3, seed=1)  # fresh draws
    seen = []
    r = archs.evaluate_modules(
        "alexnet", x, y, xt, yt, num_classes=3, num_eval=1, epochs=4, lr=0.03,
        batch_size=4, dsa_strategy=None, val=(xt[:15], yt[:15]),
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    assert r.accuracies[0] >= 0.9  # chance is 1/3
    assert r.mean == r.accuracies[0] and r.std == 0.0
    assert r.val_accuracies is not None and len(r.val_accuracies) == 1
    assert r.num_params == 1_872_202 - 7 * (3072 + 1)  # alexnet, 3 instead of 10 outputs
    assert r.seconds > 0
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def _run_capture(monkeypatch, name, y, x, xt, yt, **kw):
    """Run evaluate_modules and return the logits of each trained net on ``xt`` (eval mode)."""
    logits, modes = [], []
    orig = archs._accuracy

    def spy(net, xs, ys, device):
        acc = orig(net, xs, ys, device)
        modes.append(net.training)
        with torch.no_grad():
            logits.append(net(xs))
        return acc

    monkeypatch.setattr(archs, "_accuracy", spy)
    r = archs.evaluate_modules(name, x, y, xt, yt, **kw)
    return r, logits, modes


def test_soft_targets_match_int_labels_and_runs_are_deterministic(monkeypatch):
    x, y = _colour_problem(3, 2, seed=0)
    xt, yt = _colour_problem(4, 2, seed=1)
    kw = dict(num_classes=2, num_eval=2, epochs=2, lr=0.01, batch_size=4, seed=5)
    kw["dsa_strategy"] = "color_crop_cutout_flip_scale_rotate"
    rng = torch.get_rng_state()
    _, hard, modes = _run_capture(monkeypatch, "alexnet", y, x, xt, yt, **kw)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    assert modes == [False, False]  # tested in eval mode
    _, again, _ = _run_capture(monkeypatch, "alexnet", y, x, xt, yt, **kw)
    soft_y = nn.functional.one_hot(y, 2).float()
    _, soft, _ = _run_capture(monkeypatch, "alexnet", soft_y, x, xt, yt, **kw)
    for a, b, c in zip(hard, again, soft):
        assert torch.equal(a, b)  # same seed, same numbers
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)  # one-hot floats == int labels
    assert not torch.allclose(hard[0], hard[1])  # nets i = 0, 1 are seeded differently
    _, other, _ = _run_capture(monkeypatch, "alexnet", y, x, xt, yt, **{**kw, "seed": 6})
    assert not torch.allclose(hard[0], other[0])


def test_batchnorm_train_then_eval(monkeypatch):
    """BatchNorm updates running statistics once per training batch; test runs in eval mode."""
    x, y = _colour_problem(3, 2, seed=0)  # 6 images, batch 4 -> 2 steps per epoch
    xt, yt = _colour_problem(2, 2, seed=1)
    seen = []
    orig = archs._accuracy

    def spy(net, xs, ys, device):
        bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        seen.append(({int(m.num_batches_tracked) for m in bn}, bn[0].running_mean.abs().sum()))
        acc = orig(net, xs, ys, device)
        assert not net.training
        # eval mode: an image's logits do not depend on the rest of the batch
        with torch.no_grad():
            torch.testing.assert_close(net(xs)[:1], net(xs[:1]), rtol=1e-4, atol=1e-5)
        return acc

    monkeypatch.setattr(archs, "_accuracy", spy)
    r = archs.evaluate_modules(
        "vgg11_bn", x, y, xt, yt, num_classes=2, num_eval=1, epochs=1, lr=0.01,
        batch_size=4, dsa_strategy="flip",
    )  # fmt: skip
    assert len(r.accuracies) == 1 and 0.0 <= r.accuracies[0] <= 1.0
    assert seen[0][0] == {2} and float(seen[0][1]) > 0


def test_evaluate_modules_argument_errors():
    x, y = _colour_problem(2, 2, seed=0)
    ok = dict(num_classes=2, num_eval=1, epochs=1, lr=0.01, dsa_strategy=None)
    calls = []
    ok["progress"] = lambda d, t: calls.append(d)

    def bad(match, *args, **kw):
        a = dict(zip(("name", "x", "y", "x_test", "y_test"), ("alexnet", x, y, x, y)))
        a.update(dict(zip(("name", "x", "y", "x_test", "y_test"), args)))
        with pytest.raises(ValueError, match=match):
            archs.evaluate_modules(
                a["name"], a["x"], a["y"], a["x_test"], a["y_test"], **{**ok, **kw}
            )

    bad(
        r"invalid parameter arch='convnet': allowed one of 'resnet18_bn', 'vgg11_bn', 'alexnet'",
        "convnet",
    )
    bad(r"invalid parameter side=16", "alexnet", x[:, :, :16, :16], y, x[:, :, :16, :16])
    bad(r"invalid parameter x=", "alexnet", x[0])
    bad(r"invalid parameter y=.*int64 \[4\]", "alexnet", x, y[:3])
    bad(r"invalid parameter y='labels in \[1, 2\]'", "alexnet", x, y + 1)
    bad(r"invalid parameter y=.*float \[4, 2\]", "alexnet", x, torch.zeros(4, 3))
    bad(r"invalid parameter y_test=", "alexnet", x, y, x, torch.zeros(4, 2))
    bad(r"invalid parameter x_test.shape=\(4, 1, 32, 32\)", "alexnet", x, y, x[:, :1])
    bad(r"invalid parameter num_classes=1", num_classes=1)
    bad(r"invalid parameter num_eval=0: allowed an int >= 1", num_eval=0)
    bad(r"invalid parameter epochs=0", epochs=0)
    bad(r"invalid parameter lr=0.0", lr=0.0)
    bad(r"invalid parameter momentum=1.0", momentum=1.0)
    bad(r"invalid parameter weight_decay=-1", weight_decay=-1)
    bad(r"invalid parameter batch_size=0", batch_size=0)
    bad(r"invalid parameter dsa_strategy='colour_crop'", dsa_strategy="colour_crop")
    bad(r"invalid parameter val=", val=(x,))
    bad(r"invalid parameter val\[1\]=", val=(x, y[:2]))
    bad(r"invalid parameter seed=", seed=1.5)
    bad(r"invalid parameter progress=", progress=3)
    assert calls == []  # nothing was trained
