"""MTT-LSS: per class shared dimension mappers times basis tensors (book/choices.md §1-2.3).

Per class ``k`` and subspace ``s`` a shared dimension mapper ``U[k,s]`` (C x H x r) and
J basis tensors ``V[k,s,j]`` (C x r x W); image channel ``c`` is
``U[k,s][c] @ V[k,s,j][c]``. With S > 1 subspaces the mapper/basis pairing is drawn at
random each time a generator is given ("sampling"); :meth:`LowRankSynSet.export`
returns every pairing (S*S*J images per class). ``lowrank_global`` uses one mapper per
subspace for all classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import register
from .base import Budget, Components, Layout, SynSet

__all__ = ["svd_factors", "LowRankSynSet", "GlobalLowRankSynSet"]


def svd_factors(x: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rank-r factors of J images laid side by side (book/choices.md §3).

    Args:
        x: float ``[..., J, C, H, W]``.
        rank: r (<= min(H, J*W)).

    Returns:
        ``(U, V, recon)``: U float ``[..., C, H, r]`` = U_r sqrt(S_r); V float
        ``[..., J, C, r, W]`` = blocks of sqrt(S_r) V_r^T; recon = U @ V, ``[..., J, C, H, W]``.
    """
    *lead, j, c, h, w = x.shape
    wide = x.movedim(-4, -3).movedim(-3, -2)  # [..., C, H, J, W]
    wide = wide.reshape(*lead, c, h, j * w)
    u, s, vh = torch.linalg.svd(wide.double(), full_matrices=False)
    sq = s[..., :rank].sqrt()
    big_u = (u[..., :rank] * sq.unsqueeze(-2)).float()  # [..., C, H, r]
    big_v = (vh[..., :rank, :] * sq.unsqueeze(-1)).float()  # [..., C, r, J*W]
    big_v = big_v.reshape(*lead, c, rank, j, w).movedim(-2, -4)  # [..., J, C, r, W]
    recon = big_u.unsqueeze(-4) @ big_v
    return big_u, big_v, recon


@register
class LowRankSynSet(SynSet):
    """LSS: mappers U float32 ``[K, S, C, H, r]``, bases V float32 ``[K, S, J, C, r, W]``.

    Budget per class (book/choices.md §2): S*C*H*r + J*S*(C*r*W + l) <= ipc*C*H*W.
    """

    name = "lowrank"
    title = "MTT-LSS"
    uses_rank = True
    factors = True

    def __init__(self, lay: Layout, mappers: Tensor, bases: Tensor, num_classes: int) -> None:
        super().__init__(lay, num_classes, bases.shape[3], mappers.shape[3])
        self.mappers = nn.Parameter(mappers.float().clone())
        self.bases = nn.Parameter(bases.float().clone())

    @property
    def rank(self) -> int:
        return self.mappers.shape[-1]

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
        j = max(0, (b - s * c * h * r) // (s * (c * r * h + lab)))
        img = k * (s * c * h * r + j * s * c * r * h)
        n = j * s
        return Layout(j, s, n, k * b, img, k * n * k if budget.soft_labels else 0)

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> LowRankSynSet:
        k, _, c, h, w = real.shape
        groups = real.view(k, lay.subspaces, lay.bases, c, h, w)
        u, v, _ = svd_factors(groups, budget.rank)
        return cls(lay, u, v, k)

    @classmethod
    def from_tensors(cls, lay: Layout, tensors: dict[str, Tensor], num_classes: int) -> SynSet:
        return cls(lay, tensors["mappers"], tensors["bases"], num_classes)

    def _compose(self, mapper_of: Tensor) -> Tensor:
        # mapper_of: int64 [K, S, S'] -> U index for (class, basis-subspace, copy)
        k = self.bases.shape[0]
        u = self.mappers.expand(k, *self.mappers.shape[1:])
        ku = torch.arange(k, device=u.device).view(k, 1, 1)
        sel = u[ku, mapper_of]  # [K, S, S', C, H, r]
        return sel.unsqueeze(3) @ self.bases.unsqueeze(2)  # [K, S, S', J, C, H, W]

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        k, s = self.bases.shape[:2]
        if s == 1 or generator is None:
            pair = torch.arange(s).view(1, s, 1).expand(k, s, 1)
        else:
            pair = torch.stack(
                [torch.randperm(s, generator=generator) for _ in range(k)]
            ).unsqueeze(-1)
        x = self._compose(pair.to(self.mappers.device))  # [K, S, 1, J, C, H, W]
        return x.reshape(-1, self.channels, self.side, self.side)

    def export(self) -> tuple[Tensor, Tensor]:
        k, s, j = self.bases.shape[:3]
        if s == 1:
            return super().export()
        # pair[k, basis subspace a, copy b] = mapper b: every (mapper, basis) pairing once
        pair = torch.arange(s).view(1, 1, s).expand(k, s, s)  # [K, S_basis, S_mapper]
        x = self._compose(pair.to(self.mappers.device))  # [K, S, S, J, ...]
        idx = torch.arange(k * s * j).view(k, s, 1, j).expand(k, s, s, j).reshape(-1)
        return x.reshape(-1, self.channels, self.side, self.side), idx.to(x.device)

    def components(self, cls: int) -> Components:
        """Fig. 1's panels of class ``cls``: its mapper U and its basis tensors V_j."""
        u = self.mappers[min(cls, self.mappers.shape[0] - 1), 0].detach()
        bases = [(f"basis V_{j + 1}", v) for j, v in enumerate(self.bases[cls, 0].detach())]
        return Components(
            shared=[(f"mapper U\n{tuple(u.shape)}", u)],
            per_image=bases,
            image_title="U V_{}",
            caption=f"one shared mapper, {len(bases)} bases (rank {self.rank})",
        )


@register
class GlobalLowRankSynSet(LowRankSynSet):
    """One mapper per subspace shared by all classes: U float32 ``[1, S, C, H, r]``.

    Budget over all classes: S*C*H*r + K*J*S*(C*r*W + l) <= K*ipc*C*H*W.
    """

    name = "lowrank_global"
    title = "MTT-LSS (one global mapper)"

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
        j = max(0, (k * b - s * c * h * r) // (k * s * (c * r * h + lab)))
        img = s * c * h * r + k * j * s * c * r * h
        n = j * s
        return Layout(j, s, n, k * b, img, k * n * k if budget.soft_labels else 0)

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> GlobalLowRankSynSet:
        k, _, c, h, w = real.shape
        s, j, r = lay.subspaces, lay.bases, budget.rank
        groups = real.view(k, s, j, c, h, w)
        # one mapper per subspace: factorise all classes' images of subspace s together
        allc = groups.transpose(0, 1).reshape(s, k * j, c, h, w)
        u, v, _ = svd_factors(allc, r)
        v = v.view(s, k, j, c, r, w).transpose(0, 1)
        return cls(lay, u.unsqueeze(0), v.contiguous(), k)
