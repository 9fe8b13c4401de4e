"""Building, initialising, saving and loading synthetic sets of any parameterisation.

The parameterisations themselves (pixels, low-rank, their variants) are units of
:mod:`lsslib.parameterisations`, found by name through its registry. This module holds
what is common to all of them and needs the networks: the choice of real images to
start from (DATM's rule, book/choices.md §3), DATM's soft-label initialisation (book/choices.md
§4), and the synthetic-set artifact (safetensors + JSON) that carries what is needed
to show the set without loading the dataset: its images in pixel space (uint8), the
normaliser's description and the class names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import parameterisations as registry
from .artifacts import load_artifact, save_artifact
from .models import ConvNetSpec, convnet_forward
from .parameterisations import Budget, Labels, Layout, Storage, SynSet, real_storage

__all__ = [
    "Budget",
    "Layout",
    "Storage",
    "Labels",
    "SynSet",
    "real_storage",
    "layout",
    "build_synset",
    "init_soft_labels",
    "synset_from_tensors",
    "LoadedSynSet",
    "save_synset",
    "load_synset",
]


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
    """The largest layout of ``parameterisation`` that fits ``ipc`` images per class
    (the unit's :meth:`~lsslib.parameterisations.SynSet.solve`; book/choices.md §2).

    Raises:
        ValueError: unknown parameterisation.
    """
    budget = Budget(ipc, rank, subspaces, channels, side, num_classes, soft_labels, strict_budget)
    return registry.get(parameterisation).solve(budget)


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
    and stops as soon as ``n`` correct images are found (classifying all 50,000 training images took 92-102 s at
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
        import logging  # local: only this function's body is edited here

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
    budget: Budget,
    *,
    x_real: Tensor,
    y_real: Tensor,
    init: str = "real",
    expert: Tensor | None = None,
    spec: ConvNetSpec | None = None,
    generator: torch.Generator | None = None,
) -> SynSet:
    """Build and initialise a synthetic set (book/choices.md §3).

    Args:
        parameterisation: a registered name (:func:`lsslib.parameterisations.names`).
        lay: from :func:`layout` (solved once per run and carried here).
        budget: the budget it was solved for (rank, subspaces, shape).
        x_real: float32 ``[N, C, H, W]`` real (normalised) images; y_real int64 ``[N]``.
        init: ``real`` -- real images the ``expert`` classifies correctly, handed to the
            unit's :meth:`~lsslib.parameterisations.SynSet.from_real` (which keeps them,
            factorises them, or transforms them); ``noise`` -- N(0, 1) images, the same way.
        expert: float32 ``[P]`` parameters of the last-epoch expert (``None``: any real image).
        spec: the expert's architecture.
        generator: CPU generator of the draws.

    Returns:
        A :class:`SynSet` on ``x_real``'s device.

    Raises:
        ValueError: unknown parameterisation, or a layout that holds no image per class.
    """
    unit = registry.get(parameterisation)
    if lay.images_per_class < 1:
        raise ValueError(f"invalid layout {lay}: the budget holds no image per class")
    gen = generator or torch.Generator().manual_seed(0)
    k, c, side = budget.num_classes, x_real.shape[1], x_real.shape[2]
    per_class = lay.images_per_class
    if init == "real":
        real = torch.stack(
            [_pick_real(x_real, y_real, expert, spec, cls, per_class, gen) for cls in range(k)]
        )
    else:
        real = torch.randn(k, per_class, c, side, side, generator=gen).to(x_real.device)
    return unit.from_real(lay, real, budget)


@torch.no_grad()
def init_soft_labels(
    spec: ConvNetSpec, experts: Tensor, images: Tensor, class_index: Tensor
) -> Tensor:
    """DATM's soft-label initialisation (book/choices.md §4).

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
    unit = registry.get(kind)
    try:
        return unit.from_tensors(lay, tensors, num_classes)
    except KeyError as exc:
        raise ValueError(f"synthetic-set tensors of kind {kind!r} lack {exc}") from exc


@dataclass
class LoadedSynSet:
    """A synthetic set read back from disk.

    Attributes:
        synset: the parameterisation's :class:`SynSet` (``.kind`` is its name).
        labels: its :class:`Labels`.
        syn_lr: the learned student step size.
        meta: the artifact's JSON metadata (config, layout, storage, normaliser, classes).
        pixels: uint8 ``[M, C, H, W]``: the exported images in pixel space, for display
            (``None`` for a set saved without its normaliser).
        class_names: class names in label order.
    """

    synset: SynSet
    labels: Labels
    syn_lr: float
    meta: dict[str, Any]
    pixels: Tensor | None
    class_names: list[str]

    @property
    def kind(self) -> str:
        """The parameterisation's name."""
        return self.synset.name

    @property
    def per_class(self) -> int:
        """Exported images per class."""
        return self.export()[0].shape[0] // self.synset.num_classes

    def export(self) -> tuple[Tensor, Tensor]:
        """``(images [M, C, H, W], targets)`` for evaluation; targets int64 ``[M]`` or float32 ``[M, K]``."""
        with torch.no_grad():
            x, idx = self.synset.export()
            y = self.labels.targets()[idx.to(self.labels.class_index.device)]
        return x.detach(), y.detach()

    def images01(self) -> Tensor:
        """float32 ``[M, C, H, W]`` in [0, 1]: the exported images for display.

        Raises:
            ValueError: the set was saved without a normaliser.
        """
        if self.pixels is None:
            raise ValueError("this synthetic set was saved without its normaliser: no pixels")
        return self.pixels.float() / 255.0


def save_synset(
    stem: str | Path,
    synset: SynSet,
    labels: Labels,
    syn_lr: Tensor,
    *,
    strict_budget: bool,
    config: dict[str, Any],
    extra: dict[str, Any],
    normaliser: Any = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write a synthetic-set artifact (``stem.safetensors`` + ``stem.json``).

    Stored: the unit's tensors (``synset.NAME``), ``labels.class_index`` (and
    ``labels.logits``), ``syn_lr``, and, when ``normaliser`` is given, ``display_uint8``:
    the exported images mapped back to pixel space, uint8 ``[M, C, H, W]`` (for figures;
    the full ZCA matrices, 2 x 37.7 MB on CIFAR, stay in the data cache). The JSON
    holds the parameterisation, layout, storage, the normaliser's description (mean,
    std, ZCA on or off) and the class names.

    Args:
        normaliser: a :class:`lsslib.data.Normaliser` (anything with ``invert`` and
            ``describe``), or ``None``.
    """
    tensors = {f"synset.{k}": v for k, v in synset.tensors().items()}
    tensors["labels.class_index"] = labels.class_index
    if labels.soft:
        tensors["labels.logits"] = labels.logits.detach()
    tensors["syn_lr"] = syn_lr.detach().reshape(1)
    meta = dict(extra)
    if normaliser is not None:
        with torch.no_grad():
            x, _ = synset.export()
            tensors["display_uint8"] = (normaliser.invert(x) * 255).round().to(torch.uint8)
        meta["normaliser"] = normaliser.describe()
    meta.update(
        parameterisation=synset.name,
        layout=synset.lay.to_dict(),
        storage=synset.storage(labels, strict_budget).to_dict(),
        num_classes=synset.num_classes,
        class_names=list(class_names or [str(i) for i in range(synset.num_classes)]),
    )
    return save_artifact(stem, tensors, kind="synset", config=config, extra=meta)


def load_synset(stem: str | Path, device: str | torch.device = "cpu") -> LoadedSynSet:
    """Load a synthetic set written by :func:`save_synset` (checksummed safetensors + JSON).

    Args:
        stem: the artifact path without suffix (see :meth:`lsslib.results.Run.synset`).

    Raises:
        ArtifactError: missing, corrupted or of another schema.
    """
    t, meta = load_artifact(
        stem,
        kind="synset",
        device=device,
        rebuild_hint="Rerun the distillation stage (notebooks/02_distill).",
    )
    lay = Layout(**meta["layout"])
    k = int(meta["num_classes"])
    syn = synset_from_tensors(
        meta["parameterisation"],
        lay,
        {n[7:]: v for n, v in t.items() if n.startswith("synset.")},
        k,
    )
    labels = Labels(t["labels.class_index"], k, t.get("labels.logits"))
    return LoadedSynSet(
        syn.to(device),
        labels.to(device),
        float(meta["syn_lr"]),
        meta,
        t.get("display_uint8"),
        list(meta.get("class_names") or [str(i) for i in range(k)]),
    )
