"""Stage parameters as validated dataclasses.

Every stage (expert buffers, distillation, evaluation) takes its parameters as a
flat mapping -- the papermill parameters of its notebook, or a block of a profile
(:mod:`lsslib.profiles`) -- and turns them into frozen dataclasses here. Validation happens in
``__post_init__`` so that a typo costs seconds: every error is a ``ValueError``
that names the parameter, the value and what is allowed, and is raised before any
data is loaded or any network is built.

Parameter names are unique across the dataclasses so that one flat namespace
(a notebook's ``parameters`` cell, a profile block) maps onto them without
ambiguity. Defaults follow the choices of the book's page ``book/choices.md`` (the
method) and MTT's published CIFAR-10 IPC 1 hyper-parameters (the anchor).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from . import datasets, parameterisations
from .parameterisations import Budget, Layout

__all__ = [
    "DATASETS",
    "DataConfig",
    "ModelConfig",
    "BufferConfig",
    "DistillConfig",
    "EvalConfig",
    "check_choice",
    "check_range",
    "parse_stage",
    "STAGE_CONFIGS",
]

#: The registered datasets of fixed shape (:mod:`lsslib.datasets`): name -> (channels C,
#: image side H = W, classes K). A dataset whose files decide its shape is not listed.
DATASETS: dict[str, tuple[int, int, int]] = {
    name: shape for name in datasets.names() if (shape := datasets.get(name).shape()) is not None
}

NORMALISATIONS = ("zca", "meanstd", "none")
NORMS = ("instancenorm", "batchnorm", "none")
POOLINGS = ("avgpool", "maxpool", "none")
SCHEDULES = ("fixed", "linear", "stair")
GRAD_MODES = ("unrolled", "checkpointed", "tesla", "sharded")
#: The environment variables of torch's ``env://`` rendezvous (set by ``torchrun``).
RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
INITS = ("real", "noise")
DSA_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid parameter {name}={value!r}: allowed {allowed}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``.

    Raises:
        ValueError: message ``invalid parameter NAME=VALUE: allowed one of (...)``.
    """
    if value not in choices:
        _fail(name, value, "one of " + ", ".join(repr(c) for c in choices))


def check_range(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    lo_open: bool = False,
    allow_none: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number in ``[lo, hi]``.

    Args:
        name: parameter name used in the message.
        value: the value to check; ``bool`` is never accepted as a number.
        lo, hi: inclusive bounds (``lo`` exclusive when ``lo_open``); ``None`` = unbounded.
        integer: require an ``int``.
        allow_none: accept ``None``.

    Raises:
        ValueError: naming the parameter, the value and the allowed range.
    """
    if value is None and allow_none:
        return
    # unbounded ends are open: inf and nan are never allowed, and the message says so
    kind = "an integer" if integer else "a finite number"
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    bracket = "(" if lo_open or lo is None else "["
    closing = ")" if hi is None else "]"
    desc = f"{kind} in {bracket}{lo_s}, {hi_s}{closing}" + (" or None" if allow_none else "")
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        _fail(name, value, desc)
    if not integer and not math.isfinite(float(value)):
        _fail(name, value, desc)
    if lo is not None and (value <= lo if lo_open else value < lo):
        _fail(name, value, desc)
    if hi is not None and value > hi:
        _fail(name, value, desc)


class _Params:
    """Mixin: build from a flat mapping, export back to one."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]):
        """Build from a flat mapping, ignoring keys that belong to other stages."""
        return cls(**{k: params[k] for k in cls.names() if k in params})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class DataConfig(_Params):
    """Which data, how much of it, how it is normalised (book/choices.md §7).

    Attributes:
        dataset: a registered dataset (:func:`lsslib.datasets.names`; the default is
            :data:`lsslib.datasets.DEFAULT`).
        data_root: folder to look in first; see :func:`lsslib.data.find_data_root`.
        train_per_class: class-balanced training subset size per class (``None`` = all).
        test_per_class: class-balanced test subset per class (``None`` = all).
        normalisation: ``zca`` (kornia ZCAWhitening fitted on the whole train set),
            ``meanstd`` or ``none``.
        zca_eps: ZCA regulariser (0.1 in MTT/KIP).
        zca_input: what ZCA is fitted on: ``raw`` [0, 1] pixels (MTT's ``--zca``,
            the default) or ``meanstd`` (per-channel mean/std first; this library's
            order of earlier versions). See :mod:`lsslib.data`.
        subset_seed: seed of the class-balanced subset draw.
    """

    dataset: str = datasets.DEFAULT
    data_root: str | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    normalisation: str = "zca"
    zca_eps: float = 0.1
    zca_input: str = "raw"
    subset_seed: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, datasets.names())
        if datasets.get(self.dataset).root_required and not self.data_root:
            _fail("data_root", self.data_root, f"a folder path when dataset={self.dataset!r}")
        check_range("train_per_class", self.train_per_class, lo=1, integer=True, allow_none=True)
        check_range("test_per_class", self.test_per_class, lo=1, integer=True, allow_none=True)
        check_choice("normalisation", self.normalisation, NORMALISATIONS)
        check_range("zca_eps", self.zca_eps, lo=0, lo_open=True)
        check_choice("zca_input", self.zca_input, ("raw", "meanstd"))
        check_range("subset_seed", self.subset_seed, lo=0, integer=True)

    def shape(self) -> tuple[int, int, int] | None:
        """(C, side, K) of the dataset, ``None`` when its files decide (an ImageFolder tree)."""
        return datasets.get(self.dataset).shape()


@dataclass(frozen=True)
class ModelConfig(_Params):
    """The ConvNet family (book/choices.md §9). ConvNetD3 = depth 3, width 128, instance norm.

    Attributes:
        net_depth: number of conv blocks (each halves the side with pooling).
        net_width: channels of every conv layer.
        net_norm: ``instancenorm`` (GroupNorm with one group per channel), ``batchnorm``, ``none``.
        net_pooling: ``avgpool``, ``maxpool`` or ``none``.
    """

    net_depth: int = 3
    net_width: int = 128
    net_norm: str = "instancenorm"
    net_pooling: str = "avgpool"

    def __post_init__(self) -> None:
        check_range("net_depth", self.net_depth, lo=1, hi=8, integer=True)
        check_range("net_width", self.net_width, lo=1, hi=4096, integer=True)
        check_choice("net_norm", self.net_norm, NORMS)
        check_choice("net_pooling", self.net_pooling, POOLINGS)


def _check_dsa(strategy: str) -> None:
    parts = [p for p in str(strategy).split("_") if p]
    if not parts or any(p not in DSA_FAMILIES for p in parts):
        _fail("dsa_strategy", strategy, "families joined by '_' from " + ", ".join(DSA_FAMILIES))


@dataclass(frozen=True)
class BufferConfig(_Params):
    """Expert training (MTT ``buffer.py``; book/choices.md §7).

    Attributes:
        num_experts: number of expert trajectories E.
        train_epochs: epochs per expert T; snapshots are stored after epochs 0..T.
        lr_teacher: SGD learning rate (0.01).
        mom_teacher: SGD momentum (0).
        l2_teacher: weight decay (0).
        batch_train: minibatch size (256).
        dsa: apply DSA to every training batch.
        dsa_strategy: DSA families joined by ``_``.
        expert_seed: seed; expert ``i`` uses ``expert_seed + i``.
        experts_per_group: experts trained together in one vectorised model.
    """

    num_experts: int = 100
    train_epochs: int = 50
    lr_teacher: float = 0.01
    mom_teacher: float = 0.0
    l2_teacher: float = 0.0
    batch_train: int = 256
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    expert_seed: int = 0
    experts_per_group: int = 10

    def __post_init__(self) -> None:
        check_range("num_experts", self.num_experts, lo=1, integer=True)
        check_range("train_epochs", self.train_epochs, lo=1, integer=True)
        check_range("lr_teacher", self.lr_teacher, lo=0, lo_open=True)
        check_range("mom_teacher", self.mom_teacher, lo=0, hi=1)
        check_range("l2_teacher", self.l2_teacher, lo=0)
        check_range("batch_train", self.batch_train, lo=1, integer=True)
        if not isinstance(self.dsa, bool):
            _fail("dsa", self.dsa, "True or False")
        _check_dsa(self.dsa_strategy)
        check_range("expert_seed", self.expert_seed, lo=0, integer=True)
        check_range("experts_per_group", self.experts_per_group, lo=1, integer=True)


@dataclass(frozen=True)
class DistillConfig(_Params):
    """Trajectory matching with a low-rank or pixel synthetic set (book/choices.md §1-2.6).

    Attributes:
        parameterisation: a registered parameterisation (:mod:`lsslib.parameterisations`;
            the default is the paper's method, :data:`lsslib.parameterisations.DEFAULT`).
        ipc: storage budget in images per class: B = ipc * K * C * H * W floats.
        rank: rank r of the mappers (parameterisations with ``uses_rank``); < image side.
        subspaces: S subspaces per class (random mapper/basis pairing when S > 1).
        parameterisation_options: options of the parameterisation's own (its unit's
            ``options``, e.g. how many DCT coefficients a frequency-domain set keeps);
            ``None`` = its defaults.
        soft_labels: learn soft labels initialised by DATM's rule; else hard labels.
        lr_y: learning rate of the soft labels (SGD, momentum 0.9).
        strict_budget: count soft labels inside the budget B.
        iterations: distillation iterations.
        syn_steps: unrolled student steps N per iteration.
        expert_epochs: M, expert epochs matched per iteration.
        max_start_epoch: T_max, the exclusive bound of the start epoch, as MTT's
            ``randint(0, max_start_epoch)``: start epochs are drawn from
            ``[min_start_epoch, max_start_epoch - 1]`` (always ``min_start_epoch`` when
            the two are equal), so a buffer needs ``max_start_epoch - 1 + expert_epochs``
            epochs.
        min_start_epoch: T_min, the smallest start epoch.
        schedule: ``fixed`` (MTT), ``linear`` (DATM) or ``stair``.
        schedule_start: T_cur, the initial upper bound (``None`` = T_max / 2, rounded up).
        schedule_iterations: E, iterations to reach T_max (``None`` = ``iterations``).
        stair_every: ``stair``: iterations between steps of +1 epoch on the upper bound.
        lr_img: learning rate of a set whose tensors are pixels.
        lr_factors: learning rate of mappers and bases (``None`` = ``lr_img``).
        lr_lr: learning rate of syn_lr.
        syn_lr_init: initial syn_lr (the student's step size).
        min_syn_lr: floor of syn_lr (1e-3); a step that drops syn_lr below it is clamped
            and counted, a non-positive or non-finite syn_lr stops the run.
        batch_syn: synthetic images per inner step (``None`` = all).
        momentum_syn: SGD momentum for images/factors and syn_lr (0.5).
        init: ``real`` (SVD of correctly classified real images) or ``noise``.
        dsa: augment the synthetic batch in every inner step.
        dsa_strategy: DSA families joined by ``_``.
        distill_seed: seed of the run.
        grad_mode: ``unrolled`` (keep the graph, as MTT), ``checkpointed`` (exact,
            recompute one inner step at a time), ``tesla`` (constant memory, approximate),
            ``sharded`` (``checkpointed`` with each step's batch split over the ranks of a
            ``torch.distributed`` group, :mod:`lsslib.sharded`; see :meth:`check_sharding`).
        checkpoint_every: write a resumable checkpoint every this many iterations.
        max_batch_syn: upper bound on the synthetic batch (memory guard; book/choices.md §11).
    """

    parameterisation: str = parameterisations.DEFAULT
    ipc: int = 1
    rank: int = 4
    subspaces: int = 1
    parameterisation_options: dict[str, Any] | None = None
    soft_labels: bool = True
    lr_y: float = 5.0
    strict_budget: bool = False
    iterations: int = 5000
    syn_steps: int = 50
    expert_epochs: int = 2
    max_start_epoch: int = 2
    min_start_epoch: int = 0
    schedule: str = "linear"
    schedule_start: int | None = None
    schedule_iterations: int | None = None
    stair_every: int = 100
    lr_img: float = 100.0
    lr_factors: float | None = None
    lr_lr: float = 1e-7
    syn_lr_init: float = 0.01
    min_syn_lr: float = 1e-3
    batch_syn: int | None = None
    momentum_syn: float = 0.5
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    distill_seed: int = 0
    grad_mode: str = "unrolled"
    checkpoint_every: int = 50
    max_batch_syn: int = 4096

    def __post_init__(self) -> None:
        check_choice("parameterisation", self.parameterisation, parameterisations.names())
        check_range("ipc", self.ipc, lo=1, integer=True)
        check_range("rank", self.rank, lo=1, integer=True)
        check_range("subspaces", self.subspaces, lo=1, integer=True)
        for name in ("soft_labels", "strict_budget", "dsa"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "True or False")
        check_range("lr_y", self.lr_y, lo=0)
        check_range("iterations", self.iterations, lo=0, integer=True)
        check_range("syn_steps", self.syn_steps, lo=1, integer=True)
        check_range("expert_epochs", self.expert_epochs, lo=1, integer=True)
        check_range("min_start_epoch", self.min_start_epoch, lo=0, integer=True)
        check_range("max_start_epoch", self.max_start_epoch, lo=self.min_start_epoch, integer=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range(
            "schedule_start",
            self.schedule_start,
            lo=self.min_start_epoch,
            hi=self.max_start_epoch,
            integer=True,
            allow_none=True,
        )
        check_range(
            "schedule_iterations", self.schedule_iterations, lo=1, integer=True, allow_none=True
        )
        check_range("stair_every", self.stair_every, lo=1, integer=True)
        check_range("lr_img", self.lr_img, lo=0)
        check_range("lr_factors", self.lr_factors, lo=0, allow_none=True)
        check_range("lr_lr", self.lr_lr, lo=0)
        check_range("min_syn_lr", self.min_syn_lr, lo=0, lo_open=True)
        check_range("syn_lr_init", self.syn_lr_init, lo=self.min_syn_lr)
        check_range("batch_syn", self.batch_syn, lo=1, integer=True, allow_none=True)
        check_range("max_batch_syn", self.max_batch_syn, lo=1, integer=True)
        if self.batch_syn is not None and self.batch_syn > self.max_batch_syn:
            _fail("batch_syn", self.batch_syn, f"at most max_batch_syn={self.max_batch_syn}")
        check_range("momentum_syn", self.momentum_syn, lo=0, hi=1)
        check_choice("init", self.init, INITS)
        _check_dsa(self.dsa_strategy)
        check_range("distill_seed", self.distill_seed, lo=0, integer=True)
        check_choice("grad_mode", self.grad_mode, GRAD_MODES)
        check_range("checkpoint_every", self.checkpoint_every, lo=1, integer=True)
        parameterisations.get(self.parameterisation).check(rank=self.rank, subspaces=self.subspaces)

    @property
    def upper_start(self) -> int:
        """T_cur: the first upper bound of the linear/stair schedules."""
        if self.schedule_start is not None:
            return self.schedule_start
        return max(self.min_start_epoch, math.ceil(self.max_start_epoch / 2))

    def budget(self, *, channels: int, side: int, num_classes: int) -> Budget:
        """The storage budget of this run for data of shape (C, H = W, K) (book/choices.md §2)."""
        return Budget(
            self.ipc,
            self.rank,
            self.subspaces,
            channels,
            side,
            num_classes,
            self.soft_labels,
            self.strict_budget,
            dict(self.parameterisation_options or {}),
        )

    def check_against(
        self, *, channels: int, side: int, num_classes: int, buffer_epochs: int | None = None
    ) -> Layout:
        """Cross-field rules that need the data shape or the buffer; solve the layout once.

        The layout (how many images the budget holds) comes from the parameterisation's
        unit in :mod:`lsslib.parameterisations`; callers carry the returned
        :class:`~lsslib.parameterisations.Layout` to the distillation instead of
        solving it again.

        Args:
            channels, side, num_classes: C, H (= W) and K of the dataset.
            buffer_epochs: epochs stored in the expert buffer (``None`` = skip the check).

        Returns:
            The :class:`~lsslib.parameterisations.Layout` of this run.

        Raises:
            ValueError: the unit's rules (e.g. rank r >= image side); a budget too small
                for one image per class; a target epoch ``max_start_epoch - 1 +
                expert_epochs`` beyond the buffer's epochs; ``batch_syn`` larger than the
                synthetic set; under ``grad_mode='sharded'`` with a known world size (a
                process group or a rendezvous), more ranks than images per inner step.
        """
        unit = parameterisations.get(self.parameterisation)
        unit.check(
            rank=self.rank,
            subspaces=self.subspaces,
            side=side,
            options=self.parameterisation_options,
        )
        lay = unit.solve(self.budget(channels=channels, side=side, num_classes=num_classes))
        n = lay.images_per_class
        if n < 1:
            _fail(
                "ipc",
                self.ipc,
                f"a budget that fits at least one image per class with rank={self.rank}, "
                f"subspaces={self.subspaces}, parameterisation={self.parameterisation!r}"
                + (", strict_budget=True" if self.strict_budget else ""),
            )
        last_target = max(self.min_start_epoch, self.max_start_epoch - 1) + self.expert_epochs
        if buffer_epochs is not None and last_target > buffer_epochs:
            _fail(
                "max_start_epoch",
                self.max_start_epoch,
                f"at most {buffer_epochs - self.expert_epochs + 1} (the latest start epoch "
                f"max_start_epoch - 1 plus expert_epochs = {last_target} must not exceed the "
                f"buffer's {buffer_epochs} epochs)",
            )
        total = n * num_classes
        if self.batch_syn is not None and self.batch_syn > total:
            _fail("batch_syn", self.batch_syn, f"at most the synthetic set size {total} (or None)")
        if self.grad_mode == "sharded" and _world_size() is not None:
            self.check_sharding(set_size=total)
        if self.batch_syn is None and total > self.max_batch_syn:
            _fail(
                "batch_syn",
                None,
                f"an explicit bound: the set has {total} images, more than max_batch_syn={self.max_batch_syn}",
            )
        return lay

    def check_sharding(self, world_size: int | None = None, *, set_size: int | None = None) -> int:
        """The rules of ``grad_mode='sharded'`` that need the process group, checked
        before any data is loaded (a no-op returning 1 for the other modes).

        Not part of ``__post_init__``: a sharded run's configuration is read back in
        single processes (summaries, evaluation), where no process group exists.

        Args:
            world_size: ranks sharing each inner step (``None``: the initialised
                ``torch.distributed`` group's, else ``$WORLD_SIZE`` of a ``torchrun``
                rendezvous).
            set_size: synthetic images N, the batch when ``batch_syn`` is ``None``
                (``None``: not known yet, that bound is skipped).

        Returns:
            The world size.

        Raises:
            ValueError: ``grad_mode='sharded'`` with no process group and no rendezvous
                (:data:`RENDEZVOUS_ENV`) in the environment; ``world_size`` < 1, or larger
                than ``batch_syn`` (each rank needs at least one image per inner step).
        """
        if self.grad_mode != "sharded":
            return 1
        if world_size is None:
            world_size = _world_size()
        if world_size is None:
            missing = [k for k in RENDEZVOUS_ENV if not os.environ.get(k)]
            _fail(
                "grad_mode",
                self.grad_mode,
                "'sharded' only in an initialised torch.distributed process group or under "
                f"torchrun (the env:// rendezvous needs {', '.join(RENDEZVOUS_ENV)}; missing "
                f"{', '.join(missing)}); otherwise one of 'unrolled', 'checkpointed', 'tesla'",
            )
        check_range("world_size", world_size, lo=1, integer=True)
        batch = self.batch_syn if self.batch_syn is not None else set_size
        if batch is not None and world_size > batch:
            what = f"batch_syn={batch}" if self.batch_syn is not None else f"the set size {batch}"
            _fail(
                "world_size",
                world_size,
                f"at most {what} (each rank needs at least one synthetic image per inner step)",
            )
        return world_size


def _world_size() -> int | None:
    """The world size of an initialised process group, else of a complete ``env://``
    rendezvous, else ``None``; without importing torch (no group exists before it is)."""
    td = sys.modules.get("torch.distributed")
    if td is not None and td.is_available() and td.is_initialized():
        return int(td.get_world_size())
    if all(os.environ.get(k) for k in RENDEZVOUS_ENV):
        try:
            return int(os.environ["WORLD_SIZE"])
        except ValueError:
            _fail("WORLD_SIZE", os.environ["WORLD_SIZE"], "an integer (the number of ranks)")
    return None


@dataclass(frozen=True)
class EvalConfig(_Params):
    """Meta-test protocol (MTT ``evaluate_synset``; book/choices.md §8).

    Attributes:
        num_eval: fresh networks trained on the set (5).
        eval_epochs: training epochs (1000); lr x0.1 at half of them.
        lr_eval: learning rate (``None`` = the learned syn_lr of the set, else 0.01).
        mom_eval: SGD momentum (0.9).
        l2_eval: weight decay (5e-4).
        batch_eval: minibatch size (256).
        eval_seed: seed; network ``i`` uses ``eval_seed + i``.
        dsa: DSA during training.
        dsa_strategy: DSA families.
    """

    num_eval: int = 5
    eval_epochs: int = 1000
    lr_eval: float | None = None
    mom_eval: float = 0.9
    l2_eval: float = 5e-4
    batch_eval: int = 256
    eval_seed: int = 0
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"

    def __post_init__(self) -> None:
        check_range("num_eval", self.num_eval, lo=1, integer=True)
        check_range("eval_epochs", self.eval_epochs, lo=1, integer=True)
        check_range("lr_eval", self.lr_eval, lo=0, lo_open=True, allow_none=True)
        check_range("mom_eval", self.mom_eval, lo=0, hi=1)
        check_range("l2_eval", self.l2_eval, lo=0)
        check_range("batch_eval", self.batch_eval, lo=1, integer=True)
        check_range("eval_seed", self.eval_seed, lo=0, integer=True)
        if not isinstance(self.dsa, bool):
            _fail("dsa", self.dsa, "True or False")
        _check_dsa(self.dsa_strategy)


#: Which dataclasses make up each stage's parameters.
STAGE_CONFIGS: dict[str, tuple[type, ...]] = {
    "buffers": (DataConfig, ModelConfig, BufferConfig),
    "distill": (DataConfig, ModelConfig, DistillConfig),
    "evaluate": (DataConfig, ModelConfig, EvalConfig),
}


def parse_stage(stage: str, namespace: Mapping[str, Any]) -> tuple[Any, ...]:
    """Build and validate a stage's dataclasses from a notebook's namespace.

    Args:
        stage: ``buffers``, ``distill`` or ``evaluate``.
        namespace: a mapping holding (at least) the stage's parameters, e.g. a
            notebook's ``globals()`` after its ``parameters`` cell.

    Returns:
        The configs in :data:`STAGE_CONFIGS` order, e.g. ``(DataConfig, ModelConfig,
        DistillConfig)`` for ``distill``.

    Raises:
        ValueError: an invalid value (the message names parameter, value, allowed),
            including the distill cross-field rules that need only the dataset's
            shape (rank vs image side, budget, batch_syn), checked before any data
            is loaded.
    """
    check_choice("stage", stage, tuple(STAGE_CONFIGS))
    configs = tuple(cls.from_params(namespace) for cls in STAGE_CONFIGS[stage])
    if stage == "distill" and configs[0].shape() is not None:
        c, side, k = configs[0].shape()
        configs[2].check_against(channels=c, side=side, num_classes=k)
    return configs
