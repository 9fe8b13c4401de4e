"""Synthetic sets behind one interface, soft labels, and storage accounting.

The distillation loop asks a :class:`SynSet` for ``images(generator)`` and its
trainable tensors and never sees how the images are made (PAPER.md 2.1):

* :class:`PixelSynSet` -- MTT: every pixel is a parameter.
* :class:`LowRankSynSet` -- LSS: per class ``k`` and subspace ``s`` a shared
  dimension mapper ``U[k,s]`` (C x H x r) and J basis tensors ``V[k,s,j]``
  (C x r x W); image channel ``c`` is ``U[k,s][c] @ V[k,s,j][c]``. With S > 1
  subspaces the mapper/basis pairing is drawn at random each time a generator
  is given ("sampling"); :meth:`SynSet.export` returns every pairing (S*S*J
  images per class). ``shared="global"`` uses one mapper per subspace for all
  classes (``lowrank_global``).
* :class:`TwoSidedSynSet` -- ``x = U B_j Q``: both mappers shared per class, an
  r x r core per image.

Labels live in :class:`Labels`: hard class indices (free: implied by the order),
or soft labels stored as logits (target = softmax, T = 1) initialised by DATM's
rule (:func:`init_soft_labels`).

Storage (PAPER.md 2.2) counts every float; :func:`layout` solves the number of
basis tensors J that fit a budget of ``ipc`` images per class, and
:meth:`SynSet.storage` reports the floats and bytes actually used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .models import ConvNetSpec, convnet_forward

__all__ = [
    "Layout",
    "layout",
    "images_per_class",
    "Storage",
    "real_storage",
    "SynSet",
    "PixelSynSet",
    "LowRankSynSet",
    "TwoSidedSynSet",
    "Labels",
    "svd_factors",
    "init_soft_labels",
    "build_synset",
    "synset_from_tensors",
]


@dataclass(frozen=True)
class Layout:
    """How a parameterisation fills a budget.

    Attributes:
        bases: J, basis tensors (or cores) per class and subspace (pixels: images per class).
        subspaces: S.
        images_per_class: stored images per class (S * J).
        budget_floats: B = ipc * K * C * H * W.
        image_floats: floats of pixels, or of mappers + bases (+ cores).
        label_floats: K per image for soft labels, 0 for hard labels.
    """

    bases: int
    subspaces: int
    images_per_class: int
    budget_floats: int
    image_floats: int
    label_floats: int


def layout(
    parameterisation: str,
    *,
    ipc: int,
    rank: int,
    subspaces: int,
    channels: int,
    side: int,
    num_classes: int,
    soft_labels: bool,
    strict_budget: bool,
) -> Layout:
    """Solve the largest J whose floats fit ``ipc`` images per class (PAPER.md 2.2).

    Per class, with b = ipc*C*H*W and l = K if soft labels are counted (strict) else 0:

    * pixels: n*(C*H*W + l) <= b
    * lowrank: S*C*H*r + J*S*(C*r*W + l) <= b  ->  J = floor((b - S*C*H*r) / (S*(C*r*W + l)))
    * lowrank_global: S*C*H*r + K*J*S*(C*r*W + l) <= K*b
    * two_sided: S*C*r*(H + W) + J*S*(C*r*r + l) <= b

    Returns:
        A :class:`Layout`; ``bases`` is 0 when the budget holds no image.
    """
    c, h, w, k = channels, side, side, num_classes
    b = ipc * c * h * w
    lab = k if (soft_labels and strict_budget) else 0
    s, r = subspaces, rank
    if parameterisation == "pixels":
        s = 1
        j = b // (c * h * w + lab)
        img = k * j * c * h * w
    elif parameterisation == "lowrank":
        j = max(0, (b - s * c * h * r) // (s * (c * r * w + lab)))
        img = k * (s * c * h * r + j * s * c * r * w)
    elif parameterisation == "lowrank_global":
        j = max(0, (k * b - s * c * h * r) // (k * s * (c * r * w + lab)))
        img = s * c * h * r + k * j * s * c * r * w
    elif parameterisation == "two_sided":
        j = max(0, (b - s * c * r * (h + w)) // (s * (c * r * r + lab)))
        img = k * (s * c * r * (h + w) + j * s * c * r * r)
    else:
        raise ValueError(
            f"invalid parameter parameterisation={parameterisation!r}: allowed one of "
            "'pixels', 'lowrank', 'lowrank_global', 'two_sided'"
        )
    n = j * s
    return Layout(j, s, n, k * b, img, k * n * k if soft_labels else 0)


def images_per_class(parameterisation: str, **kw) -> int:
    """Stored images per class of :func:`layout` (same arguments)."""
    return layout(parameterisation, **kw).images_per_class


@dataclass(frozen=True)
class Storage:
    """Floats and bytes of a synthetic set (fp32: 4 bytes per float).

    Attributes:
        budget_floats: B.
        image_floats: pixels or factors.
        label_floats: soft-label floats (0 for hard labels).
        lr_floats: the learned step size syn_lr (1; reported, never in the budget).
        strict: labels counted inside the budget.
        images_per_class: stored images per class.
    """

    budget_floats: int
    image_floats: int
    label_floats: int
    lr_floats: int
    strict: bool
    images_per_class: int

    @property
    def used_floats(self) -> int:
        """Floats counted against the budget."""
        return self.image_floats + (self.label_floats if self.strict else 0)

    @property
    def fits(self) -> bool:
        return self.used_floats <= self.budget_floats

    @property
    def total_bytes(self) -> int:
        """Bytes of everything stored (images/factors, labels, syn_lr), fp32."""
        return 4 * (self.image_floats + self.label_floats + self.lr_floats)

    def to_dict(self) -> dict:
        d = {
            k: getattr(self, k)
            for k in (
                "budget_floats",
                "image_floats",
                "label_floats",
                "lr_floats",
                "strict",
                "images_per_class",
            )
        }
        d.update(used_floats=self.used_floats, total_bytes=self.total_bytes, fits=self.fits)
        return d


def real_storage(num_images: int, num_classes: int, channels: int, side: int) -> Storage:
    """Storage of ``num_images`` real images with hard labels (the baselines' sets):
    every pixel a float, the budget equal to what is stored, no labels or syn_lr."""
    floats = num_images * channels * side * side
    return Storage(floats, floats, 0, 0, False, num_images // num_classes)


def svd_factors(x: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rank-r factors of J images laid side by side (PAPER.md 2.3).

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


class Labels(nn.Module):
    """Hard or learnable soft labels of a synthetic set.

    Args:
        class_index: int64 ``[N]``, the class of every stored image.
        num_classes: K.
        logits: float32 ``[N, K]`` initial soft-label logits, or ``None`` for hard labels.
    """

    def __init__(self, class_index: Tensor, num_classes: int, logits: Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("class_index", class_index.long())
        self.logits = nn.Parameter(logits.float().clone()) if logits is not None else None

    @property
    def soft(self) -> bool:
        return self.logits is not None

    def targets(self) -> Tensor:
        """int64 ``[N]`` (hard) or float32 ``[N, K]`` = softmax(logits) (soft, differentiable)."""
        return self.class_index if self.logits is None else torch.softmax(self.logits, dim=-1)

    def floats(self) -> int:
        return 0 if self.logits is None else self.logits.numel()


class SynSet(nn.Module):
    """Interface of every parameterisation.

    Attributes:
        kind: the ``parameterisation`` name.
        num_classes, channels, side: K, C, H = W.
        lay: the :class:`Layout` it was built for.
    """

    kind = "base"

    def __init__(self, lay: Layout, num_classes: int, channels: int, side: int) -> None:
        super().__init__()
        self.lay, self.num_classes, self.channels, self.side = lay, num_classes, channels, side

    # --- to implement -------------------------------------------------------
    def images(self, generator: torch.Generator | None = None) -> Tensor:
        """float32 ``[N, C, H, W]``, N = K * images_per_class, ordered by class."""
        raise NotImplementedError

    def class_index(self) -> Tensor:
        """int64 ``[N]``: class of each image of :meth:`images`."""
        n = self.lay.images_per_class
        return torch.arange(self.num_classes).repeat_interleave(n)

    def export(self) -> tuple[Tensor, Tensor]:
        """Images for evaluation and their index into the stored labels.

        Returns:
            ``(images [M, C, H, W], label_index [M])``; M = N unless S > 1 (every pairing).
        """
        x = self.images()
        return x, torch.arange(x.shape[0], device=x.device)

    # --- shared --------------------------------------------------------------
    def trainable(self) -> list[nn.Parameter]:
        """The image parameters (pixels or factors), for the image optimiser."""
        return list(self.parameters())

    def storage(self, labels: Labels, strict: bool) -> Storage:
        """Floats actually held by this set and its labels (never the layout's estimate)."""
        img = sum(p.numel() for p in self.parameters())
        return Storage(
            self.lay.budget_floats, img, labels.floats(), 1, strict, self.lay.images_per_class
        )

    def tensors(self) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in self.named_parameters()}


class PixelSynSet(SynSet):
    """MTT's pixel parameterisation: ``images`` float32 ``[K*n, C, H, W]``."""

    kind = "pixels"

    def __init__(self, lay: Layout, images: Tensor, num_classes: int) -> None:
        super().__init__(lay, num_classes, images.shape[1], images.shape[2])
        self.pixels = nn.Parameter(images.float().clone())

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        return self.pixels


class LowRankSynSet(SynSet):
    """LSS: mappers U float32 ``[K or 1, S, C, H, r]``, bases V float32 ``[K, S, J, C, r, W]``.

    ``U.shape[0] == 1`` is the ``lowrank_global`` variant (one mapper per subspace shared
    by all classes).
    """

    kind = "lowrank"

    def __init__(self, lay: Layout, mappers: Tensor, bases: Tensor, num_classes: int) -> None:
        super().__init__(lay, num_classes, bases.shape[3], mappers.shape[3])
        self.kind = "lowrank_global" if mappers.shape[0] == 1 and num_classes > 1 else "lowrank"
        self.mappers = nn.Parameter(mappers.float().clone())
        self.bases = nn.Parameter(bases.float().clone())

    @property
    def rank(self) -> int:
        return self.mappers.shape[-1]

    def _compose(self, mapper_of: Tensor) -> Tensor:
        # mapper_of: int64 [K, S, S'] -> U index for (class, basis-subspace, copy)
        k, s, j = self.bases.shape[:3]
        u = self.mappers.expand(k, *self.mappers.shape[1:])
        ku = torch.arange(k, device=u.device).view(k, 1, 1)
        sel = u[ku, mapper_of]  # [K, S, S', C, H, r]
        x = sel.unsqueeze(3) @ self.bases.unsqueeze(2)  # [K, S, S', J, C, H, W]
        return x

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


class TwoSidedSynSet(SynSet):
    """``x = U B_j Q``: U float32 ``[K, S, C, H, r]``, cores B float32 ``[K, S, J, C, r, r]``,
    Q float32 ``[K, S, C, r, W]``."""

    kind = "two_sided"

    def __init__(
        self, lay: Layout, left: Tensor, cores: Tensor, right: Tensor, num_classes: int
    ) -> None:
        super().__init__(lay, num_classes, left.shape[2], left.shape[3])
        self.left = nn.Parameter(left.float().clone())
        self.cores = nn.Parameter(cores.float().clone())
        self.right = nn.Parameter(right.float().clone())

    def images(self, generator: torch.Generator | None = None) -> Tensor:
        x = self.left.unsqueeze(2) @ self.cores @ self.right.unsqueeze(2)  # [K, S, J, C, H, W]
        return x.reshape(-1, self.channels, self.side, self.side)


def _pick_real(
    x: Tensor,
    y: Tensor,
    expert: Tensor | None,
    spec: ConvNetSpec | None,
    k: int,
    n: int,
    gen: torch.Generator,
) -> Tensor:
    """``n`` real images of class ``k``, those the expert classifies correctly first (DATM).

    The class's images are visited in one random order drawn from ``gen``; the
    first ``n`` that the expert classifies correctly are taken, then (if fewer
    are correct) the incorrect ones in the same order, then repeats. The expert
    runs on chunks of that order (``max(8, 2n)`` images, doubling up to 4,096)
    and stops as soon as ``n`` correct images are found (issue #16: classifying all 50,000 training images took 92-102 s at
    width 128 on two CPU cores), so the picks equal those of classifying every
    image first, at the cost of a few chunks.
    """
    idx = (y == k).nonzero().flatten()
    order = idx[torch.randperm(len(idx), generator=gen).to(idx.device)]
    if expert is not None and spec is not None and len(order):
        chunk = max(8, 2 * n)  # enough when the expert gets half right; doubles if not
        good: list[Tensor] = []
        found, seen = 0, 0
        with torch.no_grad():
            while seen < len(order) and found < n:
                cand = order[seen : seen + chunk]
                ok = convnet_forward(spec, expert, x[cand]).argmax(1) == k
                good.append(cand[ok])
                found += int(ok.sum())
                seen += len(cand)
                chunk = min(2 * chunk, 4096)
        good_idx = torch.cat(good)
        if found >= n:
            order = good_idx
        else:  # every image was classified: the correct ones, then the rest in order
            ok_all = torch.zeros(len(order), dtype=torch.bool, device=order.device)
            ok_all[torch.isin(order, good_idx)] = True
            order = torch.cat([order[ok_all], order[~ok_all]])
        import logging  # local: only this function's body is edited here (issue #16)

        logging.getLogger(__name__).info(
            "initial images of class %d: %d of %d correct in the first %d candidates",
            k,
            found,
            n,
            seen,
        )
    if len(order) < n:
        order = order.repeat(math.ceil(n / max(len(order), 1)))
    return x[order[:n]]


def build_synset(
    parameterisation: str,
    lay: Layout,
    *,
    rank: int,
    x_real: Tensor,
    y_real: Tensor,
    num_classes: int,
    init: str = "real",
    expert: Tensor | None = None,
    spec: ConvNetSpec | None = None,
    generator: torch.Generator | None = None,
) -> SynSet:
    """Build and initialise a synthetic set.

    Args:
        parameterisation: ``pixels``, ``lowrank``, ``lowrank_global`` or ``two_sided``.
        lay: from :func:`layout`.
        rank: r.
        x_real: float32 ``[N, C, H, W]`` real (normalised) images; y_real int64 ``[N]``.
        num_classes: K.
        init: ``real`` -- SVD of real images the ``expert`` classifies correctly
            (PAPER.md 2.3; pixels: the images themselves); ``noise`` -- N(0, 1) images
            factorised the same way.
        expert: float32 ``[P]`` parameters of the last-epoch expert (``None``: any real image).
        spec: the expert's architecture.
        generator: CPU generator of the draws.

    Returns:
        A :class:`SynSet` on ``x_real``'s device.

    Raises:
        ValueError: the layout holds no image per class.
    """
    if lay.images_per_class < 1:
        raise ValueError(f"invalid layout {lay}: the budget holds no image per class")
    gen = generator or torch.Generator().manual_seed(0)
    c, side = x_real.shape[1], x_real.shape[2]
    s, j = lay.subspaces, lay.bases
    per_class = s * j
    if init == "real":
        real = torch.stack(
            [
                _pick_real(x_real, y_real, expert, spec, k, per_class, gen)
                for k in range(num_classes)
            ]
        )
    else:
        real = torch.randn(num_classes, per_class, c, side, side, generator=gen).to(x_real.device)
    if parameterisation == "pixels":
        return PixelSynSet(lay, real.reshape(-1, c, side, side), num_classes)
    groups = real.view(num_classes, s, j, c, side, side)
    if parameterisation == "lowrank":
        u, v, _ = svd_factors(groups, rank)
        return LowRankSynSet(lay, u, v, num_classes)
    if parameterisation == "lowrank_global":
        # one mapper per subspace: factorise all classes' images of subspace s together
        allc = groups.transpose(0, 1).reshape(s, num_classes * j, c, side, side)
        u, v, _ = svd_factors(allc, rank)
        v = v.view(s, num_classes, j, c, rank, side).transpose(0, 1)
        return LowRankSynSet(lay, u.unsqueeze(0), v.contiguous(), num_classes)
    if parameterisation == "two_sided":
        wide = groups.permute(0, 1, 3, 4, 2, 5).reshape(num_classes, s, c, side, j * side).double()
        tall = groups.permute(0, 1, 3, 2, 4, 5).reshape(num_classes, s, c, j * side, side).double()
        left = torch.linalg.svd(wide, full_matrices=False)[0][..., :rank]  # [K,S,C,H,r]
        right = torch.linalg.svd(tall, full_matrices=False)[2][..., :rank, :]  # [K,S,C,r,W]
        cores = (
            left.transpose(-1, -2).unsqueeze(2)
            @ groups.double()
            @ right.transpose(-1, -2).unsqueeze(2)
        )
        return TwoSidedSynSet(lay, left, cores, right, num_classes)
    raise ValueError(f"invalid parameter parameterisation={parameterisation!r}")


@torch.no_grad()
def init_soft_labels(
    spec: ConvNetSpec, experts: Tensor, images: Tensor, class_index: Tensor
) -> Tensor:
    """DATM's soft-label initialisation (PAPER.md 2.4).

    Each image's logits are the mean, over the experts' final checkpoints that
    classify it correctly, of their logits; an image no expert gets right takes the
    mean over all experts.

    Args:
        spec: architecture; experts: float32 ``[E, P]``; images: float32 ``[N, C, H, W]``;
        class_index: int64 ``[N]``.

    Returns:
        float32 ``[N, K]`` logits.
    """
    logits = torch.stack([convnet_forward(spec, w, images) for w in experts])  # [E, N, K]
    ok = (logits.argmax(-1) == class_index.to(logits.device)).float()  # [E, N]
    cnt = ok.sum(0)
    mean_ok = (logits * ok.unsqueeze(-1)).sum(0) / cnt.clamp(min=1).unsqueeze(-1)
    return torch.where((cnt > 0).unsqueeze(-1), mean_ok, logits.mean(0))


def synset_from_tensors(
    kind: str, lay: Layout, tensors: dict[str, Tensor], num_classes: int
) -> SynSet:
    """Rebuild a :class:`SynSet` from :meth:`SynSet.tensors` (for loading artifacts).

    Raises:
        ValueError: unknown kind or missing tensors.
    """
    try:
        if kind == "pixels":
            return PixelSynSet(lay, tensors["pixels"], num_classes)
        if kind in ("lowrank", "lowrank_global"):
            return LowRankSynSet(lay, tensors["mappers"], tensors["bases"], num_classes)
        if kind == "two_sided":
            return TwoSidedSynSet(
                lay, tensors["left"], tensors["cores"], tensors["right"], num_classes
            )
    except KeyError as exc:
        raise ValueError(f"synthetic-set tensors of kind {kind!r} lack {exc}") from exc
    raise ValueError(f"invalid synthetic-set kind {kind!r}")
