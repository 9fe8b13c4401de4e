"""What every synthetic-set parameterisation shares: the budget layout, storage, labels.

A parameterisation is one :class:`SynSet` subclass in its own module of
:mod:`lsslib.parameterisations`, registered with
:func:`lsslib.parameterisations.register`. The class owns (DESIGN.md, "the seam that
matters most"):

* its budget solver (:meth:`SynSet.solve`: how many stored images fit ``ipc`` images per
  class; book/choices.md §2) and its cross-field rules (:meth:`SynSet.check`);
* its initialisation from real images (:meth:`SynSet.from_real`; book/choices.md §3);
* its tensor names (:meth:`SynSet.tensors` / :meth:`SynSet.from_tensors`) for saving and
  reloading;
* its storage accounting (:meth:`SynSet.storage`);
* the learning rate of its tensors (:meth:`SynSet.learning_rate`);
* what its figure draws (:meth:`SynSet.components`).

The distillation loop asks a set for ``images(generator)`` and its trainable tensors and
never sees how the images are made. This module imports only torch: configuration,
models and plots depend on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = ["Budget", "Layout", "Storage", "real_storage", "Labels", "Components", "SynSet"]


@dataclass(frozen=True)
class Budget:
    """The storage budget and the data shape a layout is solved for (book/choices.md §2).

    Attributes:
        ipc: budget in images per class: B = ipc * K * C * H * W floats.
        rank: r of the low-rank parameterisations (ignored by pixels).
        subspaces: S.
        channels, side, num_classes: C, H = W, K.
        soft_labels: the set stores soft labels (K floats per stored image).
        strict_budget: the soft labels count inside B.
        options: the parameterisation's own options (``parameterisation_options``).
    """

    ipc: int
    rank: int
    subspaces: int
    channels: int
    side: int
    num_classes: int
    soft_labels: bool
    strict_budget: bool
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def floats_per_class(self) -> int:
        """b = ipc * C * H * W."""
        return self.ipc * self.channels * self.side * self.side

    @property
    def label_floats_counted(self) -> int:
        """l = K when soft labels count inside the budget, else 0."""
        return self.num_classes if (self.soft_labels and self.strict_budget) else 0


@dataclass(frozen=True)
class Layout:
    """How a parameterisation fills a budget.

    Attributes:
        bases: J, basis tensors (or cores, or images) per class and subspace.
        subspaces: S.
        images_per_class: stored images per class (S * J).
        budget_floats: B = ipc * K * C * H * W.
        image_floats: floats of pixels or of the factors.
        label_floats: K per stored image with soft labels, 0 with hard labels.
    """

    bases: int
    subspaces: int
    images_per_class: int
    budget_floats: int
    image_floats: int
    label_floats: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


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
    def total_floats(self) -> int:
        """Every stored float: images or factors, labels, syn_lr."""
        return self.image_floats + self.label_floats + self.lr_floats

    @property
    def total_bytes(self) -> int:
        """Bytes of everything stored (images/factors, labels, syn_lr), fp32."""
        return 4 * self.total_floats

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)
        d.update(used_floats=self.used_floats, total_bytes=self.total_bytes, fits=self.fits)
        return d


def real_storage(num_images: int, num_classes: int, channels: int, side: int) -> Storage:
    """Storage of ``num_images`` real images with hard labels (the baselines' sets):
    every pixel a float, the budget equal to what is stored, no labels or syn_lr."""
    floats = num_images * channels * side * side
    return Storage(floats, floats, 0, 0, False, num_images // num_classes)


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


@dataclass
class Components:
    """What a parameterisation's figure draws for one class (paper Fig. 1).

    Attributes:
        shared: ``(title, tensor [C, h, w])`` panels shared by the class's images (mappers).
        per_image: ``(title, tensor [C, h, w])`` one panel per stored image (bases, cores,
            coefficients), shown above that image.
        image_title: format string of an image's caption, ``{}`` = its 1-based index.
        caption: one line describing the layout.
    """

    shared: list[tuple[str, Tensor]]
    per_image: list[tuple[str, Tensor]]
    image_title: str
    caption: str


class SynSet(nn.Module):
    """Interface of every parameterisation (subclass it and register it).

    Class attributes:
        name: the registry key (the ``parameterisation`` parameter's value).
        title: how tables and figures name it.
        uses_rank: ``rank`` is a parameter of this parameterisation.
        factors: its tensors are factors (learning rate ``lr_factors``) rather than pixels
            (``lr_img``).
        options: the keys it accepts in ``parameterisation_options``, with their defaults.

    Attributes:
        lay: the :class:`Layout` it was built for.
        num_classes, channels, side: K, C, H = W.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    uses_rank: ClassVar[bool] = False
    factors: ClassVar[bool] = False
    options: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, lay: Layout, num_classes: int, channels: int, side: int) -> None:
        super().__init__()
        self.lay, self.num_classes, self.channels, self.side = lay, num_classes, channels, side

    @property
    def kind(self) -> str:
        """The parameterisation's name (:attr:`name`)."""
        return self.name

    # --- the class's rules ------------------------------------------------------------
    @classmethod
    def solve(cls, budget: Budget) -> Layout:
        """The largest layout whose floats fit ``budget`` (``bases`` 0 when none fits)."""
        raise NotImplementedError

    @classmethod
    def check(
        cls,
        *,
        rank: int,
        subspaces: int,
        side: int | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Cross-field rules on the parameters (before any work); ``side`` ``None`` skips
        the rules that need the image side.

        Raises:
            ValueError: naming the parameter, the value and what is allowed.
        """
        unknown = sorted(set(options or {}) - set(cls.options))
        if unknown:
            allowed = ", ".join(repr(k) for k in cls.options) or "none"
            raise ValueError(
                f"invalid parameter parameterisation_options={dict(options or {})!r}: "
                f"parameterisation={cls.name!r} takes the options {allowed}"
            )
        if cls.uses_rank and side is not None and not 1 <= rank < side:
            raise ValueError(
                f"invalid parameter rank={rank!r}: allowed an integer in [1, {side - 1}] "
                f"(below the image side {side}) for parameterisation={cls.name!r}"
            )

    @classmethod
    def from_real(cls, lay: Layout, real: Tensor, budget: Budget) -> SynSet:
        """Initialise from real (or noise) images (book/choices.md §3).

        Args:
            lay: from :meth:`solve`.
            real: float32 ``[K, S * J, C, H, W]``, per class the images to start from.
            budget: the budget (``rank``, ``subspaces``).
        """
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, lay: Layout, tensors: dict[str, Tensor], num_classes: int) -> SynSet:
        """Rebuild from :meth:`tensors` (loading an artifact).

        Raises:
            KeyError: a tensor is missing.
        """
        raise NotImplementedError

    @classmethod
    def option(cls, budget: Budget, key: str) -> Any:
        """The value of option ``key``: from the budget's options, else the default."""
        return budget.options.get(key, cls.options[key])

    @classmethod
    def learning_rate(cls, lr_img: float, lr_factors: float | None) -> float:
        """The SGD learning rate of the set's tensors."""
        return lr_factors if (cls.factors and lr_factors is not None) else lr_img

    # --- the instance -----------------------------------------------------------------
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
            ``(images [M, C, H, W], label_index [M])``; M = N unless the set has more
            pairings than stored images (low-rank with S > 1).
        """
        x = self.images()
        return x, torch.arange(x.shape[0], device=x.device)

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
        """The stored tensors by name (detached): parameters and registered buffers."""
        out = {name: p.detach() for name, p in self.named_parameters()}
        out.update({name: b.detach() for name, b in self.named_buffers()})
        return out

    def components(self, cls: int) -> Components | None:
        """What the set's figure draws for class ``cls`` (:func:`lsslib.plots.parameterisation_figure`),
        or ``None`` when the images themselves are the parameters (pixels)."""
        return None
