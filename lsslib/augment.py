"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), seeded.

Semantics follow the DSA/MTT code (``utils.DiffAugment`` with
``ParamDiffAug``, ``aug_mode='S'``): each call picks ONE family of the strategy
string (``color_crop_cutout_flip_scale_rotate``) and samples per-image
parameters; ``color`` applies brightness, saturation and contrast in turn.
Ranges (book/choices.md §10): flip p 0.5, scale 1.2, rotate 15 deg, crop 0.125,
cutout 0.5, brightness 1.0, saturation 2.0, contrast 0.5.

Sampling is split from application: :func:`sample_dsa` draws a
:class:`DSAParams` from an explicit ``torch.Generator`` (no global RNG, so a run
is reproducible and resumable), :func:`apply_dsa` applies it and is
differentiable with respect to the images. Re-applying the same parameters is
what the checkpointed gradient needs to replay an inner step exactly.

Scale and rotation use :func:`torch.nn.functional.affine_grid` /
``grid_sample`` with ``align_corners=True`` as DSA does; kornia's
``warp_affine`` builds the same sampling but normalises coordinates differently
(pixel-centred), which would shift DSA's transforms by half a pixel, so the
torch ops are used directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DSAParams", "sample_dsa", "apply_dsa", "dsa", "DSA_RANGES"]

#: DSA's parameter ranges (``ParamDiffAug`` defaults).
DSA_RANGES = {
    "flip": 0.5,
    "scale": 1.2,
    "rotate": 15.0,
    "crop": 0.125,
    "cutout": 0.5,
    "brightness": 1.0,
    "saturation": 2.0,
    "contrast": 0.5,
}


@dataclass
class DSAParams:
    """One DSA call's family and per-image parameters (all tensors on the CPU).

    Attributes:
        family: ``color``, ``crop``, ``cutout``, ``flip``, ``scale`` or ``rotate``.
        values: tensors of leading size N (the batch), by name.
    """

    family: str
    values: dict[str, Tensor] = field(default_factory=dict)


def sample_dsa(strategy: str, n: int, side: int, generator: torch.Generator) -> DSAParams:
    """Draw one DSA call for ``n`` images of side ``side``.

    Args:
        strategy: families joined by ``_``.
        n: batch size.
        side: image side in pixels (crop and cutout sizes depend on it).
        generator: a CPU ``torch.Generator``.

    Returns:
        :class:`DSAParams` with CPU tensors.
    """
    fams = [f for f in strategy.split("_") if f]
    fam = fams[int(torch.randint(len(fams), (1,), generator=generator))]
    r, g = DSA_RANGES, generator
    v: dict[str, Tensor] = {}
    if fam == "color":
        v["brightness"] = torch.rand(n, generator=g) - 0.5
        v["saturation"] = torch.rand(n, generator=g)
        v["contrast"] = torch.rand(n, generator=g)
    elif fam == "flip":
        v["flip"] = torch.rand(n, generator=g) < r["flip"]
    elif fam == "scale":
        s = r["scale"]
        v["sx"] = torch.rand(n, generator=g) * (s - 1.0 / s) + 1.0 / s
        v["sy"] = torch.rand(n, generator=g) * (s - 1.0 / s) + 1.0 / s
    elif fam == "rotate":
        v["theta"] = (torch.rand(n, generator=g) - 0.5) * 2 * r["rotate"] / 180 * math.pi
    elif fam == "crop":
        m = int(side * r["crop"] + 0.5)
        v["dx"] = torch.randint(-m, m + 1, (n,), generator=g)
        v["dy"] = torch.randint(-m, m + 1, (n,), generator=g)
    elif fam == "cutout":
        size = int(side * r["cutout"] + 0.5)
        v["cx"] = torch.randint(0, side + (1 - size % 2), (n,), generator=g)
        v["cy"] = torch.randint(0, side + (1 - size % 2), (n,), generator=g)
    return DSAParams(fam, v)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def apply_dsa(x: Tensor, p: DSAParams) -> Tensor:
    """Apply a sampled DSA call; differentiable in ``x``.

    Args:
        x: float ``[N, C, H, W]`` (N must match the sampled batch).
        p: from :func:`sample_dsa`.

    Returns:
        float ``[N, C, H, W]``.
    """
    dev, dt = x.device, x.dtype
    n = x.shape[0]
    v = {k: t.to(dev) for k, t in p.values.items()}
    if p.family == "color":
        x = x + (v["brightness"].to(dt) * DSA_RANGES["brightness"]).view(n, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (v["saturation"].to(dt) * DSA_RANGES["saturation"]).view(n, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (v["contrast"].to(dt) + DSA_RANGES["contrast"]).view(n, 1, 1, 1) + mean
        return x
    if p.family == "flip":
        return torch.where(v["flip"].view(n, 1, 1, 1), x.flip(3), x)
    if p.family == "scale":
        theta = torch.zeros(n, 2, 3, device=dev, dtype=dt)
        theta[:, 0, 0] = v["sx"].to(dt)
        theta[:, 1, 1] = v["sy"].to(dt)
        return _affine(x, theta)
    if p.family == "rotate":
        t = v["theta"].to(dt)
        theta = torch.stack(
            [
                torch.stack([t.cos(), t.sin(), torch.zeros_like(t)], 1),
                torch.stack([-t.sin(), t.cos(), torch.zeros_like(t)], 1),
            ],
            1,
        )
        return _affine(x, theta)
    h, w = x.shape[2], x.shape[3]
    if p.family == "crop":
        # Translate by integer pixels with zero padding, as DSA's rand_crop.
        gy = (torch.arange(h, device=dev).view(1, h, 1) + v["dy"].view(n, 1, 1) + 1).clamp(0, h + 1)
        gx = (torch.arange(w, device=dev).view(1, 1, w) + v["dx"].view(n, 1, 1) + 1).clamp(0, w + 1)
        xp = F.pad(x, [1, 1, 1, 1])
        bi = torch.arange(n, device=dev).view(n, 1, 1)
        return xp.permute(0, 2, 3, 1)[bi, gy.expand(n, h, w), gx.expand(n, h, w)].permute(
            0, 3, 1, 2
        )
    if p.family == "cutout":
        size = int(h * DSA_RANGES["cutout"] + 0.5)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        cy = v["cy"].view(n, 1, 1) - size // 2
        cx = v["cx"].view(n, 1, 1) - size // 2
        inside = (ys >= cy) & (ys < cy + size) & (xs >= cx) & (xs < cx + size)
        return x * (~inside).unsqueeze(1).to(dt)
    raise ValueError(f"invalid DSA family {p.family!r}")  # pragma: no cover


def dsa(x: Tensor, strategy: str, generator: torch.Generator) -> Tensor:
    """Sample and apply one DSA call: ``[N, C, H, W] -> [N, C, H, W]``."""
    return apply_dsa(x, sample_dsa(strategy, x.shape[0], x.shape[-1], generator))
