"""The plan of one matching iteration: start epochs, batches, DSA draws, the inner step.

Shared by every gradient mode of :mod:`lsslib.matching` (and :mod:`lsslib.tesla`): the
start-epoch schedules (book/choices.md §5), the *plan* of an iteration (the batch indices
and DSA parameters of every inner step, drawn before the steps so that all modes
compute the same numbers), and the student's inner-step loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .augment import DSAParams, apply_dsa, sample_dsa
from .config import DistillConfig
from .models import ConvNetSpec, convnet_forward
from .training import soft_cross_entropy, to_device

__all__ = [
    "schedule_upper",
    "sample_start_epoch",
    "InnerPlan",
    "make_plan",
    "plan_to",
    "step_loss",
]


def schedule_upper(cfg: DistillConfig, it: int) -> int:
    """Upper bound of the start epoch at iteration ``it`` (book/choices.md §5).

    * ``fixed``: T_max (MTT).
    * ``linear``: min(T_max, T_cur + (T_max - T_cur) * it / E), floored (DATM).
    * ``stair``: min(T_max, T_cur + it // stair_every).
    """
    t_max = cfg.max_start_epoch
    if cfg.schedule == "fixed":
        return t_max
    t_cur = cfg.upper_start
    if cfg.schedule == "linear":
        e = cfg.schedule_iterations or max(cfg.iterations, 1)
        return min(t_max, int(t_cur + (t_max - t_cur) * it / e))
    return min(t_max, t_cur + it // cfg.stair_every)


def sample_start_epoch(cfg: DistillConfig, it: int, generator: torch.Generator) -> tuple[int, int]:
    """``(start, upper)``: start ~ U[T_min, upper), ``upper`` exclusive as MTT's
    ``randint(0, max_start_epoch)`` (T_min when the interval is empty)."""
    upper = schedule_upper(cfg, it)
    if upper <= cfg.min_start_epoch:
        return cfg.min_start_epoch, upper
    return int(torch.randint(cfg.min_start_epoch, upper, (1,), generator=generator)), upper


@dataclass
class InnerPlan:
    """Batch indices and DSA draws of every inner step (shared by both gradient modes)."""

    indices: list[Tensor]
    augment: list[DSAParams | None]


def make_plan(
    n: int, steps: int, batch: int, side: int, strategy: str | None, generator: torch.Generator
) -> InnerPlan:
    """MTT's batching: consecutive chunks of a random permutation, refilled when used up."""
    idx, aug, perm = [], [], torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        if len(perm) < batch:
            perm = torch.cat([perm, torch.randperm(n, generator=generator)])
        idx.append(perm[:batch])
        perm = perm[batch:]
        aug.append(sample_dsa(strategy, batch, side, generator) if strategy else None)
    return InnerPlan(idx, aug)


def plan_to(plan: InnerPlan, device: str | torch.device) -> InnerPlan:
    """The plan with its index and DSA tensors already on ``device``.

    Every inner step would otherwise copy them host-to-device (on CUDA a blocking
    copy each, which stalls the GPU queue); with them moved once, in pinned
    memory without blocking, those copies become no-ops. Same values.
    """
    dev = torch.device(device)
    return InnerPlan(
        [to_device(i, dev) for i in plan.indices],
        [
            None
            if a is None
            else DSAParams(a.family, {k: to_device(v, dev) for k, v in a.values.items()})
            for a in plan.augment
        ],
    )


def step_loss(
    spec: ConvNetSpec, w: Tensor, x: Tensor, y: Tensor, idx: Tensor, aug: DSAParams | None
) -> Tensor:
    """The student's loss on one planned batch: cross-entropy (soft targets allowed) of
    ``convnet_forward(spec, w, DSA(x[idx]))`` against ``y[idx]`` (MTT's inner step)."""
    xb = x[idx.to(x.device)]
    if aug is not None:
        xb = apply_dsa(xb, aug)
    return soft_cross_entropy(convnet_forward(spec, w, xb), y[idx.to(y.device)])
