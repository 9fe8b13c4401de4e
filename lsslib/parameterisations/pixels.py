"""MTT's parameterisation: every pixel of every stored image is a parameter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import register
from .base import Budget, Layout, SynSet


@register
class PixelSynSet(SynSet):
    """Pixels: ``pixels`` float32 ``[K * n, C, H, W]`` (Cazenavette et al. 2022, MTT).

    Budget (book/choices.md §2): n * (C*H*W + l) <= ipc * C*H*W per class.
    """

    name = "pixels"
    title = "pixel MTT"

    def __init__(self, lay: Layout, images: Tensor, num_classes: int) -> None:
        super().__init__(lay, num_classes, images.shape[1], images.shape[2])
        self.pixels = nn.Parameter(images.float().clone())

    @classmethod
    def solve(cls, budget: Budget) -> Layout:
        c, h, k = budget.channels, budget.side, budget.num_classes
        n = budget.floats_per_class // (c * h * h + budget.label_floats_counted)
        soft = k * n * k if budget.soft_labels else 0
        return Layout(n, 1, n, k * budget.floats_per_class, k * n * c * h * h, soft)

    @classmethod
    def check(cls, *, rank: int, subspaces: int, side: int | None = None, options=None) -> None:
        super().check(rank=rank, subspaces=subspaces, side=side, options=options)
        if subspaces != 1:
            raise ValueError(
                f"invalid parameter subspaces={subspaces!r}: allowed 1 when parameterisation='pixels'"
            )

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> PixelSynSet:
        return cls(lay, real.reshape(-1, *real.shape[2:]), real.shape[0])

    @classmethod
    def from_tensors(cls, lay: Layout, tensors: dict[str, Tensor], num_classes: int) -> PixelSynSet:
        return cls(lay, tensors["pixels"], num_classes)

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        return self.pixels
