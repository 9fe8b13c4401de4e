"""FReD: a synthetic set stored as a few DCT coefficients per channel (Shin et al., 2023).

Frequency domain-based dataset distillation (NeurIPS 2023; anchor implementation
sdh0818/FreD, ``TM/main_TM_FreD.py``): each stored image keeps, per channel, only the
coefficients of ``m`` frequencies of its 2-D DCT; the frequencies are chosen per
class as those whose coefficients explain the most variance of the class's
initial real images (averaged over channels, the same frequencies for every channel
and image of the class); the inverse DCT of the masked coefficients gives the images.
At equal storage a class holds ``floor(ipc * C*H*W / (C*m + l))`` images:
``ipc * H*W / m`` (16 at IPC 1 with FReD's CIFAR default m = 64).

Our choices, where the anchor differs:

* the DCT is orthonormal (the anchor's is unnormalised, hence its coefficient learning
  rate of 1e8): coefficients then have pixel scale, and the pixel learning rate
  ``lr_img`` applies;
* a class with a single initial image has no variance to rank: its frequencies are
  ranked by energy (mean squared coefficient) instead;
* the ``K x m`` frequency indices are stored (int64) but, as in the anchor, not
  counted in the float budget.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import register
from .base import Budget, Components, Layout, SynSet

__all__ = ["dct_matrix", "FreDSynSet"]


def dct_matrix(n: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` ``[n, n]``: ``X = D x D^T`` is the 2-D DCT of
    an ``n x n`` image ``x`` and ``x = D^T X D`` its inverse (``D D^T = I``)."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


@register
class FreDSynSet(SynSet):
    """FReD: coefficients float32 ``[K, n, C, m]`` at the class's frequencies
    ``freq_index`` int64 ``[K, m]`` (row-major ``h * W + w``).

    Option ``coefficients`` (m, per channel; default ``H*W // 16``, FReD's 64 on 32 x 32
    images).
    """

    name = "fred"
    title = "FReD"
    options = {"coefficients": None}

    def __init__(self, lay: Layout, coef: Tensor, freq_index: Tensor, side: int) -> None:
        super().__init__(lay, coef.shape[0], coef.shape[2], side)
        self.coef = nn.Parameter(coef.float().clone())
        self.register_buffer("freq_index", freq_index.long().clone())

    @classmethod
    def _m(cls, budget: Budget) -> int:
        m = cls.option(budget, "coefficients")
        return budget.side * budget.side // 16 if m is None else m

    @classmethod
    def check(cls, *, rank: int, subspaces: int, side: int | None = None, options=None) -> None:
        super().check(rank=rank, subspaces=subspaces, side=side, options=options)
        if subspaces != 1:
            raise ValueError(
                f"invalid parameter subspaces={subspaces!r}: allowed 1 when parameterisation='fred'"
            )
        m = (options or {}).get("coefficients")
        hi = side * side if side is not None else None
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int) or m < 1 or (hi is not None and m > hi)
        ):
            raise ValueError(
                f"invalid parameter parameterisation_options={{'coefficients': {m!r}}}: allowed "
                f"an integer in [1, {hi if hi is not None else 'H*W'}] (DCT coefficients per channel)"
            )

    @classmethod
    def solve(cls, budget: Budget) -> Layout:
        c, k, m = budget.channels, budget.num_classes, cls._m(budget)
        n = budget.floats_per_class // (c * m + budget.label_floats_counted)
        soft = k * n * k if budget.soft_labels else 0
        return Layout(n, 1, n, k * budget.floats_per_class, k * n * c * m, soft)

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> FreDSynSet:
        k, n, c, h, w = real.shape
        d = dct_matrix(h, dtype=torch.float64).to(real.device)
        freq = d @ real.double() @ d.T  # [K, n, C, H, W]
        per_freq = freq.mean(2).flatten(2)  # [K, n, H*W]: the channel mean, as FReD
        if n > 1:
            score = per_freq.var(dim=1, unbiased=True)  # explained variance (up to the trace)
        else:
            score = per_freq.pow(2).mean(dim=1)  # one image: energy
        index = score.topk(cls._m(budget), dim=-1).indices.sort(dim=-1).values  # [K, m]
        flat = freq.flatten(3)  # [K, n, C, H*W]
        gather = index.view(k, 1, 1, -1).expand(k, n, c, -1)
        return cls(lay, flat.gather(3, gather).float(), index, h)

    @classmethod
    def from_tensors(cls, lay: Layout, tensors: dict[str, Tensor], num_classes: int) -> FreDSynSet:
        return cls(lay, tensors["coef"], tensors["freq_index"], int(tensors["side"].item()))

    def tensors(self) -> dict[str, Tensor]:
        out = super().tensors()
        out["side"] = torch.tensor([self.side])
        return out

    def spectrum(self) -> Tensor:
        """The full (masked) DCT coefficients float32 ``[K, n, C, H, W]``."""
        k, n, c, _ = self.coef.shape
        full = self.coef.new_zeros(k, n, c, self.side * self.side)
        idx = self.freq_index.view(k, 1, 1, -1).expand_as(self.coef)
        full = full.scatter(3, idx, self.coef)
        return full.view(k, n, c, self.side, self.side)

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        d = dct_matrix(self.side).to(self.coef.device)
        x = d.T @ self.spectrum() @ d  # inverse 2-D DCT
        return x.reshape(-1, self.channels, self.side, self.side)

    def components(self, cls: int) -> Components:
        """Class ``cls``'s frequency mask, and each image's (log-magnitude) spectrum."""
        mask = torch.zeros(self.side * self.side, device=self.coef.device)
        mask[self.freq_index[cls]] = 1.0
        spec = self.spectrum()[cls].detach().abs().add(1e-6).log()
        return Components(
            shared=[
                (
                    f"frequencies kept\n({self.freq_index.shape[1]} of {self.side**2})",
                    mask.view(1, self.side, self.side),
                )
            ],
            per_image=[(f"|DCT| image {j + 1}", s) for j, s in enumerate(spec)],
            image_title="IDCT {}",
            caption=f"{self.freq_index.shape[1]} DCT coefficients per channel, {spec.shape[0]} images",
        )
