"""The plain PyTorch reference the benchmarks compare lsslib with.

What users know from the DC/DSA/MTT code base, written out here with no lsslib
speed path: an ``nn.Module`` ConvNet (``utils.ConvNet``: Conv 3x3 -> GroupNorm
with one group per channel -> ReLU -> AvgPool 2x2, then Linear),
``torch.optim.SGD``, MTT's ``DiffAugment`` family by family, and for
distillation MTT's unrolled ``torch.autograd.grad(..., create_graph=True)``
loop over a flat parameter vector (``ReparamModule``: the vector is split into
the module's parameters and the module is called functionally).

Every random draw comes from the same ``torch.Generator`` calls as lsslib's
(``init_flat``, one ``randperm`` per epoch, ``sample_dsa`` per batch, the
distillation plan), so the reference computes the same numbers up to float
reassociation and the benchmarks can check that it does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsslib.augment import DSA_RANGES, DSAParams, sample_dsa
from lsslib.models import ConvNetSpec, init_flat

__all__ = [
    "RefConvNet",
    "ref_dsa",
    "ref_train",
    "ref_test_accuracy",
    "ref_evaluate",
    "ref_unrolled_iteration",
]


class RefConvNet(nn.Module):
    """MTT's ``ConvNet`` (instance norm = ``GroupNorm(width, width)``, average pooling)."""

    def __init__(self, spec: ConvNetSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = spec.channels, spec.side
        for _ in range(spec.depth):
            layers += [
                nn.Conv2d(cin, spec.width, 3, padding=1),
                nn.GroupNorm(spec.width, spec.width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            cin, side = spec.width, side // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(spec.width * side * side, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


def _net_from_flat(spec: ConvNetSpec, flat: Tensor) -> RefConvNet:
    net = RefConvNet(spec).to(flat.device)
    nn.utils.vector_to_parameters(flat.detach().clone(), net.parameters())
    return net


def ref_dsa(x: Tensor, p: DSAParams) -> Tensor:
    """MTT's ``DiffAugment`` families, applied with already sampled parameters ``p``."""
    n = x.shape[0]
    v = {k: t.to(x.device) for k, t in p.values.items()}
    if p.family == "color":  # rand_brightness, rand_saturation, rand_contrast
        x = x + (v["brightness"] * DSA_RANGES["brightness"]).view(n, 1, 1, 1)
        x_mean = x.mean(dim=1, keepdim=True)
        x = (x - x_mean) * (v["saturation"] * DSA_RANGES["saturation"]).view(n, 1, 1, 1) + x_mean
        x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - x_mean) * (v["contrast"] + DSA_RANGES["contrast"]).view(n, 1, 1, 1) + x_mean
    if p.family == "flip":
        return torch.where(v["flip"].view(n, 1, 1, 1), x.flip(3), x)
    if p.family in ("scale", "rotate"):  # rand_scale / rand_rotate: a theta per image
        if p.family == "scale":
            sx, sy = v["sx"].tolist(), v["sy"].tolist()
            theta = [[[sx[i], 0, 0], [0, sy[i], 0]] for i in range(n)]
        else:
            t = v["theta"].tolist()
            theta = [
                [[math.cos(t[i]), math.sin(t[i]), 0], [-math.sin(t[i]), math.cos(t[i]), 0]]
                for i in range(n)
            ]
        theta = torch.tensor(theta, dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)
    if p.family == "crop":  # rand_crop: meshgrid, clamp, pad, gather
        tx, ty = v["dx"].view(n, 1, 1), v["dy"].view(n, 1, 1)
        gb, gx, gy = torch.meshgrid(
            torch.arange(n, device=x.device),
            torch.arange(x.size(2), device=x.device),
            torch.arange(x.size(3), device=x.device),
            indexing="ij",
        )
        gx = torch.clamp(gx + ty + 1, 0, x.size(2) + 1)
        gy = torch.clamp(gy + tx + 1, 0, x.size(3) + 1)
        xp = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
        return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
    if p.family == "cutout":  # rand_cutout: a zero mask by scatter
        size = int(x.size(2) * DSA_RANGES["cutout"] + 0.5)
        ox, oy = v["cy"].view(n, 1, 1), v["cx"].view(n, 1, 1)
        gb, gx, gy = torch.meshgrid(
            torch.arange(n, device=x.device),
            torch.arange(size, device=x.device),
            torch.arange(size, device=x.device),
            indexing="ij",
        )
        gx = torch.clamp(gx + ox - size // 2, min=0, max=x.size(2) - 1)
        gy = torch.clamp(gy + oy - size // 2, min=0, max=x.size(3) - 1)
        mask = torch.ones(n, x.size(2), x.size(3), dtype=x.dtype, device=x.device)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)
    raise ValueError(p.family)


def _soft_ce(logits: Tensor, y: Tensor) -> Tensor:
    if y.dtype == torch.int64:
        return F.cross_entropy(logits, y)
    return -(y * F.log_softmax(logits, -1)).sum(-1).mean()


def ref_train(
    spec: ConvNetSpec,
    gen: torch.Generator,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch: int,
    dsa: str | None,
    lr_decay_epoch: int | None,
) -> RefConvNet:
    """One net, MTT's ``epoch('train', ...)`` loop with ``torch.optim.SGD``; lr x0.1 from ``lr_decay_epoch``."""
    net = _net_from_flat(spec, init_flat(spec, gen).to(x.device))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(x)
    for ep in range(epochs):
        if lr_decay_epoch is not None and ep == lr_decay_epoch:
            for group in opt.param_groups:
                group["lr"] = lr * 0.1
        perm = torch.randperm(n, generator=gen).to(x.device)
        for b0 in range(0, n, batch):
            idx = perm[b0 : b0 + batch]
            xb = x[idx]
            if dsa:
                xb = ref_dsa(xb, sample_dsa(dsa, len(idx), x.shape[-1], gen))
            loss = _soft_ce(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


@torch.no_grad()
def ref_test_accuracy(net: nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    """Top-1 accuracy in batches of 256 (MTT's test loader)."""
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((net(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def ref_evaluate(
    spec: ConvNetSpec,
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    nets: int,
    seed: int,
    epochs: int,
    lr: float,
    batch: int,
    dsa: str | None,
) -> list[float]:
    """MTT's ``evaluate_synset`` for ``nets`` nets (net i seeded ``seed + i``): test accuracies."""
    accs = []
    for i in range(nets):
        net = ref_train(
            spec,
            torch.Generator().manual_seed(seed + i),
            x,
            y,
            epochs=epochs,
            lr=lr,
            momentum=0.9,
            weight_decay=5e-4,
            batch=batch,
            dsa=dsa,
            lr_decay_epoch=epochs // 2,
        )
        accs.append(ref_test_accuracy(net, x_test, y_test))
    return accs


def ref_unrolled_iteration(
    spec: ConvNetSpec,
    net: RefConvNet,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    indices: list[Tensor],
    augment: list[DSAParams | None],
) -> Tensor:
    """MTT's distillation iteration: the whole unrolled graph, then ``backward``.

    ``net`` is only the architecture: its parameters are replaced by views of the
    student's flat vector (``ReparamModule``) through ``torch.func.functional_call``.
    """
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    numels = [math.prod(s) for s in shapes]
    student = [start.detach().clone().requires_grad_(True)]
    for idx, aug in zip(indices, augment, strict=True):
        xb = x[idx]
        if aug is not None:
            xb = ref_dsa(xb, aug)
        w = student[-1]
        params = {n: t.view(s) for n, t, s in zip(names, w.split(numels), shapes, strict=True)}
        out = torch.func.functional_call(net, params, (xb,))
        (grad,) = torch.autograd.grad(_soft_ce(out, y[idx]), w, create_graph=True)
        student.append(w - syn_lr * grad)
    loss = F.mse_loss(student[-1], target, reduction="sum") / F.mse_loss(
        start, target, reduction="sum"
    )
    loss.backward()
    return loss.detach()
