"""A two-sided low-rank variant: ``x = U B_j Q`` with both mappers shared per class."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import register
from .base import Budget, Components, Layout, SynSet


@register
class TwoSidedSynSet(SynSet):
    """``x = U B_j Q``: U float32 ``[K, S, C, H, r]``, cores B float32 ``[K, S, J, C, r, r]``,
    Q float32 ``[K, S, C, r, W]``.

    Budget per class: S*C*r*(H + W) + J*S*(C*r*r + l) <= ipc*C*H*W. Initialised from the
    left and right singular vectors of the class's images laid side by side and stacked.
    """

    name = "two_sided"
    title = "two-sided low rank"
    uses_rank = True
    factors = True

    def __init__(
        self, lay: Layout, left: Tensor, cores: Tensor, right: Tensor, num_classes: int
    ) -> None:
        super().__init__(lay, num_classes, left.shape[2], left.shape[3])
        self.left = nn.Parameter(left.float().clone())
        self.cores = nn.Parameter(cores.float().clone())
        self.right = nn.Parameter(right.float().clone())

    @classmethod
    def solve(cls, budget: Budget) -> Layout:
        c, h, k, s, r = (
            budget.channels,
            budget.side,
            budget.num_classes,
            budget.subspaces,
            budget.rank,
        )
        b, lab = budget.floats_per_class, budget.label_floats_counted
        j = max(0, (b - s * c * r * (h + h)) // (s * (c * r * r + lab)))
        img = k * (s * c * r * (h + h) + j * s * c * r * r)
        n = j * s
        return Layout(j, s, n, k * b, img, k * n * k if budget.soft_labels else 0)

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> TwoSidedSynSet:
        k, _, c, h, w = real.shape
        s, j, r = lay.subspaces, lay.bases, budget.rank
        groups = real.view(k, s, j, c, h, w)
        wide = groups.permute(0, 1, 3, 4, 2, 5).reshape(k, s, c, h, j * w).double()
        tall = groups.permute(0, 1, 3, 2, 4, 5).reshape(k, s, c, j * h, w).double()
        left = torch.linalg.svd(wide, full_matrices=False)[0][..., :r]  # [K,S,C,H,r]
        right = torch.linalg.svd(tall, full_matrices=False)[2][..., :r, :]  # [K,S,C,r,W]
        cores = (
            left.transpose(-1, -2).unsqueeze(2)
            @ groups.double()
            @ right.transpose(-1, -2).unsqueeze(2)
        )
        return cls(lay, left, cores, right, k)

    @classmethod
    def from_tensors(
        cls, lay: Layout, tensors: dict[str, Tensor], num_classes: int
    ) -> TwoSidedSynSet:
        return cls(lay, tensors["left"], tensors["cores"], tensors["right"], num_classes)

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        x = self.left.unsqueeze(2) @ self.cores @ self.right.unsqueeze(2)  # [K, S, J, C, H, W]
        return x.reshape(-1, self.channels, self.side, self.side)

    def components(self, cls: int) -> Components:
        """Panels of class ``cls``: U, Q and the r x r cores B_j."""
        u, q = self.left[cls, 0].detach(), self.right[cls, 0].detach()
        cores = [(f"core B_{j + 1}", b) for j, b in enumerate(self.cores[cls, 0].detach())]
        return Components(
            shared=[(f"U {tuple(u.shape)}", u), (f"Q {tuple(q.shape)}", q)],
            per_image=cores,
            image_title="U B_{} Q",
            caption=f"shared U and Q, {len(cores)} cores (rank {self.left.shape[-1]})",
        )
