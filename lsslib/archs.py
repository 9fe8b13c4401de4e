"""Cross-architecture evaluation networks (ResNet18BN, VGG11BN, AlexNet) and their trainer.

Distilled images are trained on ConvNet; the dataset-distillation suite also scores
them on unseen architectures. This module rebuilds three of the suite's networks as
plain ``torch.nn.Module`` s, with the layer structure (and hence the parameter count)
of the reference ``networks.py`` of the DC/DSA/MTT code base (Zhao & Bilen,
``VICO-UoE/DatasetCondensation``; copied unchanged into Cazenavette et al.'s
``GeorgeCazenavette/mtt-distillation``):

* ``resnet18_bn``: ``ResNet18BN`` = ``ResNet(BasicBlock, [2, 2, 2, 2], norm='batchnorm')``.
  3x3 stem convolution (64 channels, stride 1, no bias) + BatchNorm + ReLU, no max
  pool; four stages of two basic blocks (64, 128, 256, 512 channels; stages 2-4 start
  with stride 2; 1x1 convolution + BatchNorm shortcut where the shape changes);
  ``F.avg_pool2d(out, 4)`` on the final 4x4 map, then ``Linear(512, K)``.
  Convolutions have no bias. (MTT's ``get_network`` maps ``'ResNet18'`` to the
  instance-norm variant; ``'ResNet18BN'`` is in DC's ``get_network`` and in both
  ``networks.py`` files.)
* ``vgg11_bn``: ``VGG11BN`` = ``VGG('VGG11', norm='batchnorm')``. Configuration
  ``64 M 128 M 256 256 M 512 512 M 512 512 M``, each number a 3x3 convolution (with
  bias) + BatchNorm + ReLU, ``M`` a 2x2 max pool; the reference's final
  ``AvgPool2d(kernel_size=1, stride=1)`` is the identity and is left out; the
  CIFAR classifier is a single ``Linear(512, K)``.
* ``alexnet``: ``AlexNet`` (CIFAR-sized, no normalisation). Convolutions 5x5 128,
  pool, 5x5 192, pool, 3x3 256, 3x3 192, 3x3 192, pool (all with bias, ReLU after each
  convolution), then ``Linear(192 * 4 * 4, K)``.

Input sizes: 3 channels at 32x32 (CIFAR-10/100, SVHN) and, as in the reference,
1 channel at 28x28 (MNIST, FashionMNIST): there the first convolution of AlexNet
(padding 4) and VGG (padding 3) pads the image to 32x32. Other sizes are refused.

:func:`evaluate_modules` trains ``num_eval`` fresh networks on a (synthetic) training
set the way MTT's ``utils.evaluate_synset`` does (SGD with momentum 0.9 and weight
decay 5e-4, lr x0.1 half-way, shuffled minibatches, DSA on every training batch,
train mode with batch statistics during training, eval mode with running
statistics at test time) and reports their test accuracy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .augment import dsa
from .training import soft_cross_entropy

__all__ = [
    "ARCHS",
    "DSA_FAMILIES",
    "SIZES",
    "ModuleEvalResult",
    "ResNet18BN",
    "VGG11BN",
    "AlexNet",
    "build",
    "count_parameters",
    "evaluate_modules",
]

#: Architecture names accepted by :func:`build` and :func:`evaluate_modules`.
ARCHS: tuple[str, ...] = ("resnet18_bn", "vgg11_bn", "alexnet")

#: Supported ``(channels, side)`` pairs (the reference's CIFAR and MNIST sizes).
SIZES: tuple[tuple[int, int], ...] = ((3, 32), (1, 28))

#: DSA families understood by :func:`lsslib.augment.dsa`.
DSA_FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")

#: Test images per forward pass in :func:`evaluate_modules`.
TEST_BATCH = 500

_VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid parameter {name}={value!r}: allowed {allowed}")


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        _fail(name, value, f"an int >= {lo}")


def _check_size(channels: int, side: int) -> None:
    _check_int("channels", channels, 1)
    _check_int("side", side, 1)
    if channels not in {c for c, _ in SIZES}:
        _fail("channels", channels, "3 (with side=32) or 1 (with side=28)")
    want = dict(SIZES)[channels]
    if side != want:
        _fail("side", side, f"{want} for channels={channels} (allowed sizes: 3x32x32, 1x28x28)")


# --------------------------------------------------------------------------- networks


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with BatchNorm and a residual shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet18BN(nn.Module):
    """The suite's ``ResNet18BN`` (reference ``networks.py``: ``ResNet``, ``BasicBlock``).

    Input float ``[B, channels, side, side]``; output logits float ``[B, num_classes]``.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1))
            )
            c_in = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        h = F.avg_pool2d(h, 4)  # 4x4 map -> 1x1, as the reference
        return self.classifier(h.flatten(1))


class VGG11BN(nn.Module):
    """The suite's ``VGG11BN`` (reference ``networks.py``: ``VGG('VGG11', norm='batchnorm')``).

    Input float ``[B, channels, side, side]``; output logits float ``[B, num_classes]``.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for i, v in enumerate(_VGG11_CFG):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            assert isinstance(v, int)
            pad = 3 if channels == 1 and i == 0 else 1  # 28x28 -> 32x32 as the reference
            layers += [nn.Conv2d(c_in, v, 3, padding=pad), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class AlexNet(nn.Module):
    """The suite's CIFAR-sized ``AlexNet`` (reference ``networks.py``: ``AlexNet``).

    Input float ``[B, channels, side, side]``; output logits float ``[B, num_classes]``.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, stride=1, padding=4 if channels == 1 else 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.fc = nn.Linear(192 * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


_CLASSES: dict[str, type[nn.Module]] = {
    "resnet18_bn": ResNet18BN,
    "vgg11_bn": VGG11BN,
    "alexnet": AlexNet,
}


def build(name: str, *, channels: int, side: int, num_classes: int) -> nn.Module:
    """A freshly initialised network (PyTorch default init, from the global RNG).

    Args:
        name: one of :data:`ARCHS`.
        channels: image channels (3, or 1 for MNIST-like data).
        side: image side in pixels (32 for 3 channels, 28 for 1 channel).
        num_classes: output logits K (an int >= 2).

    Returns:
        An ``nn.Module`` in train mode, on the CPU, mapping float32
        ``[B, channels, side, side]`` to logits ``[B, num_classes]``.

    Raises:
        ValueError: unknown ``name``, unsupported ``channels``/``side`` or bad
            ``num_classes`` (message ``invalid parameter NAME=VALUE: allowed ...``).
    """
    if name not in _CLASSES:
        _fail("arch", name, "one of " + ", ".join(repr(a) for a in ARCHS))
    _check_size(channels, side)
    _check_int("num_classes", num_classes, 2)
    return _CLASSES[name](channels, num_classes)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (all ``parameters()``, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- evaluation


@dataclass
class ModuleEvalResult:
    """Test accuracy of ``num_eval`` networks of one architecture.

    Attributes:
        accuracies: final test accuracy of each network (fractions in [0, 1]).
        val_accuracies: accuracy of each network on ``val``, or ``None`` without ``val``.
        mean, std: of ``accuracies`` (std with ``ddof=0``, as ``np.std`` in MTT).
        seconds: wall time of the whole call (training and testing all networks).
        num_params: parameters of one network (:func:`count_parameters`).
    """

    accuracies: list[float]
    val_accuracies: list[float] | None
    mean: float
    std: float
    seconds: float
    num_params: int


def _check_images(name: str, x: Any, channels: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point() or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        _fail(name, shape, "a non-empty float tensor [N, C, H, W]")
    if channels is not None and x.shape[1] != channels:
        _fail(f"{name}.shape", tuple(x.shape), f"{channels} channels, as the training images")
    if x.shape[2] != x.shape[3]:
        _fail(f"{name}.shape", tuple(x.shape), "square images (H == W)")


def _check_labels(name: str, y: Any, n: int, num_classes: int, *, soft_ok: bool) -> None:
    allowed = f"int64 [{n}] with values in [0, {num_classes})"
    if soft_ok:
        allowed += f" or float [{n}, {num_classes}] target distributions"
    if not isinstance(y, Tensor):
        _fail(name, type(y).__name__, allowed)
    if y.dtype == torch.int64 and tuple(y.shape) == (n,):
        if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            _fail(name, f"labels in [{int(y.min())}, {int(y.max())}]", allowed)
        return
    if soft_ok and y.is_floating_point() and tuple(y.shape) == (n, num_classes):
        return
    _fail(name, f"{y.dtype} {tuple(y.shape)}", allowed)


def _check_number(name: str, value: Any, lo: float, hi: float | None, lo_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (hi is None or value < hi)
    if not ok:
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        _fail(name, value, f"a finite number {lo_s}" + (f" and < {hi}" if hi is not None else ""))


def _check_strategy(strategy: Any) -> None:
    if strategy is None or strategy == "":
        return
    allowed = "None, '' or families joined by '_' from " + ", ".join(map(repr, DSA_FAMILIES))
    if not isinstance(strategy, str):
        _fail("dsa_strategy", strategy, allowed)
    fams = [f for f in strategy.split("_") if f]
    if not fams or any(f not in DSA_FAMILIES for f in fams):
        _fail("dsa_strategy", strategy, allowed)


@torch.no_grad()
def _accuracy(net: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> float:
    net.eval()
    correct = 0
    for b0 in range(0, x.shape[0], TEST_BATCH):
        xb = x[b0 : b0 + TEST_BATCH].to(device, torch.float32)
        yb = y[b0 : b0 + TEST_BATCH].to(device)
        correct += int((net(xb).argmax(-1) == yb).sum())
    return correct / x.shape[0]


def evaluate_modules(
    name: str,
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    num_classes: int,
    num_eval: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    dsa_strategy: str | None,
    seed: int = 0,
    val: tuple[Tensor, Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ModuleEvalResult:
    """Train ``num_eval`` fresh ``name`` networks on ``(x, y)``; test on ``(x_test, y_test)``.

    Follows MTT's ``utils.evaluate_synset`` (``GeorgeCazenavette/mtt-distillation``,
    same in ``VICO-UoE/DatasetCondensation``): ``torch.optim.SGD`` with momentum and
    weight decay; each epoch a fresh shuffle cut into minibatches of ``batch_size``
    (the last one may be smaller); one DSA call (:func:`lsslib.augment.dsa`) per
    training batch; the network in train mode while training (BatchNorm uses batch
    statistics and updates its running statistics) and in eval mode for testing
    (running statistics), batches of :data:`TEST_BATCH` under ``torch.no_grad()``.

    Schedule, as :func:`lsslib.training.train_nets` (the ConvNet evaluation of this
    package), so that ConvNet and the other architectures are trained alike: exactly
    ``epochs`` epochs, lr x0.1 from epoch ``epochs // 2`` on (0-based), one optimiser
    throughout (momentum buffers kept). The reference differs by one-offs: it runs
    ``epochs + 1`` passes, drops the lr after pass ``epochs // 2 + 1`` and rebuilds the
    optimiser then (momentum reset).

    Randomness: network ``i`` is initialised with PyTorch's default init under
    ``torch.random.fork_rng`` seeded ``seed + i`` (the caller's global RNG state is
    left untouched); its shuffles and DSA draws come from a CPU ``torch.Generator``
    seeded ``seed + i``. The same arguments give the same accuracies (on the CPU;
    GPU kernels may be non-deterministic).

    Args:
        name: one of :data:`ARCHS`.
        x: float ``[N, C, S, S]`` training images (already normalised/ZCA'd as the
            test images); networks are trained on ``x.device``.
        y: int64 ``[N]`` labels in ``[0, num_classes)`` (cross-entropy) or float
            ``[N, num_classes]`` targets (soft cross-entropy
            ``-(target * log_softmax(logits)).sum(1).mean()``,
            :func:`lsslib.training.soft_cross_entropy`).
        x_test: float ``[M, C, S, S]`` test images (any device; moved batch by batch).
        y_test: int64 ``[M]`` test labels.
        num_classes: K, an int >= 2.
        num_eval: networks to train, an int >= 1.
        epochs: training epochs per network, an int >= 1.
        lr: initial learning rate, > 0.
        momentum: SGD momentum in [0, 1).
        weight_decay: SGD weight decay, >= 0.
        batch_size: training minibatch size, an int >= 1.
        dsa_strategy: DSA families joined by ``_`` (e.g.
            ``'color_crop_cutout_flip_scale_rotate'``), or ``None``/``''`` for none.
        seed: base seed (an int).
        val: optional ``(x_val, y_val)`` shaped as the test pair; each network's
            accuracy on it goes to ``val_accuracies``.
        progress: ``None`` or ``progress(done, total)`` called after every training
            epoch, counted over all networks: ``done`` runs from 1 to
            ``total = num_eval * epochs``.

    Returns:
        :class:`ModuleEvalResult` (accuracies as fractions in [0, 1]).

    Raises:
        ValueError: any invalid argument, before any training (message
            ``invalid parameter NAME=VALUE: allowed ...``).
    """
    # ---- validation, before any work
    if name not in _CLASSES:
        _fail("arch", name, "one of " + ", ".join(repr(a) for a in ARCHS))
    _check_int("num_classes", num_classes, 2)
    _check_images("x", x)
    _check_size(int(x.shape[1]), int(x.shape[2]))
    n = int(x.shape[0])
    _check_labels("y", y, n, num_classes, soft_ok=True)
    _check_images("x_test", x_test, int(x.shape[1]))
    if x_test.shape[2:] != x.shape[2:]:
        _fail("x_test.shape", tuple(x_test.shape), f"images of side {x.shape[2]} as x")
    _check_labels("y_test", y_test, int(x_test.shape[0]), num_classes, soft_ok=False)
    if val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 2:
            _fail("val", type(val).__name__, "None or a pair (x_val, y_val)")
        _check_images("val[0]", val[0], int(x.shape[1]))
        if val[0].shape[2:] != x.shape[2:]:
            _fail("val[0].shape", tuple(val[0].shape), f"images of side {x.shape[2]} as x")
        _check_labels("val[1]", val[1], int(val[0].shape[0]), num_classes, soft_ok=False)
    _check_int("num_eval", num_eval, 1)
    _check_int("epochs", epochs, 1)
    _check_number("lr", lr, 0.0, None, lo_open=True)
    _check_number("momentum", momentum, 0.0, 1.0, lo_open=False)
    _check_number("weight_decay", weight_decay, 0.0, None, lo_open=False)
    _check_int("batch_size", batch_size, 1)
    _check_strategy(dsa_strategy)
    if isinstance(seed, bool) or not isinstance(seed, int):
        _fail("seed", seed, "an int")
    if progress is not None and not callable(progress):
        _fail("progress", progress, "None or a callable(done, total)")

    # ---- training
    start = time.perf_counter()
    device = x.device
    channels, side = int(x.shape[1]), int(x.shape[2])
    x = x.detach().float()
    y = y.detach().to(device)
    if y.is_floating_point():
        y = y.float()
    total = num_eval * epochs
    accs: list[float] = []
    val_accs: list[float] | None = [] if val is not None else None
    num_params = 0
    for i in range(num_eval):
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + i)
            net = build(name, channels=channels, side=side, num_classes=num_classes)
        net = net.to(device)
        num_params = count_parameters(net)
        gen = torch.Generator().manual_seed(seed + i)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        for ep in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * (0.1 if ep >= epochs // 2 else 1.0)
            net.train()
            perm = torch.randperm(n, generator=gen).to(device)
            for b0 in range(0, n, batch_size):
                idx = perm[b0 : b0 + batch_size]
                xb, yb = x[idx], y[idx]
                if dsa_strategy:
                    xb = dsa(xb, dsa_strategy, gen)
                loss = soft_cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(i * epochs + ep + 1, total)
        accs.append(_accuracy(net, x_test, y_test, device))
        if val is not None and val_accs is not None:
            val_accs.append(_accuracy(net, val[0], val[1], device))
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
    return ModuleEvalResult(
        accuracies=accs,
        val_accuracies=val_accs,
        mean=mean,
        std=std,
        seconds=time.perf_counter() - start,
        num_params=num_params,
    )
