"""Exact trajectory matching sharded over ``torch.distributed`` (``grad_mode: sharded``).

The checkpointed formulation of :func:`lsslib.matching.checkpointed_loss` (exact
gradients in the memory of one inner step), with every inner step's synthetic batch
split over the ranks of a process group. The plan of an iteration
(:func:`lsslib.plan.make_plan`) is the same on every rank (same seeds, same DSA draws
per image); rank ``r`` of ``R`` takes the contiguous share ``[lo_r, hi_r)`` of each
step's ``plan.indices[i]`` together with the matching slice of its DSA parameters
(shares differ by at most one image; :func:`shares`).

* Forward, each inner step: every rank computes the gradient of its share's loss scaled
  by ``b_r / B`` (so that the sum over ranks is the gradient of the full batch's mean
  loss), all-reduces it (SUM) and applies the same update ``w <- w - syn_lr * g``;
  every rank stores the same N+1 flat parameter vectors.
* Backward, going back one step at a time: every rank recomputes its share's step with
  its graph and pushes the adjoint ``dL/dw_{i+1}`` through it; the parameter-space
  vector-Jacobian product ``syn_lr * H_r dL/dw_{i+1}`` is all-reduced once per step.
  Each rank accumulates the gradients of its own images and labels and its share of
  the syn_lr term.
* Afterwards ``dL/dx``, ``dL/dy`` (soft labels) and ``dL/dsyn_lr`` are all-reduced (SUM),
  so every rank pushes the same full gradient into the set's leaves and keeps an
  identical synthetic set. For a set whose images carry a graph (low-rank mappers and
  bases, soft-label logits) the all-reduce is of ``dL/dx`` before the backward into the
  factors: the loss then needs nothing of the parameterisation (any set works), at the
  cost of ``n * C * H * W`` floats (``n`` images) once per iteration instead of the
  factors' size.

Cost per inner step: 2 all-reduces of P float32 (the forward gradient and the backward
adjoint product: ``8 * P`` bytes sent and received per rank and step by a ring, times
``2 (R - 1) / R``), plus once per iteration ``n*C*H*W + n*K + 1`` floats (the set's
gradients). Memory per rank: the N+1 parameter vectors and the whole set, as in the
checkpointed mode, but the activations of one step for ``ceil(B / R)`` images instead
of ``B`` (:func:`memory_model`; ``python -m lsslib.sharded`` prints it for a run).

Launching: under ``torchrun`` every rank builds the same :class:`lsslib.distill.Distiller`
with ``grad_mode='sharded'`` (:func:`launch` makes the process group from the ``env://``
rendezvous; rank 0 writes the run's files, every rank resumes from its checkpoint). The
distill stage does it itself for a run with the profile key ``world_size: N``
(:func:`lsslib.profiles.world_size`): it starts ``torchrun --standalone --nproc-per-node
N -m lsslib.launch`` (:mod:`lsslib.launch`). The book page ``book/scaling.md`` gives the
commands for one node and for SLURM.

Source: the inner loop of MTT's ``distill.py`` (Cazenavette et al., CVPR 2022) and its
checkpointed adjoint (:func:`lsslib.matching.checkpointed_loss`); the split of a batch
over ranks with a SUM all-reduce is data-parallel SGD (as ``DistributedDataParallel``).
Exact up to float summation order: the full-batch mean is a sum of R partial sums here,
so results agree with the single process to about ``1e-6`` relative in float32 (the
order of additions differs; every rank gets bitwise the same reduced tensors). With one
rank (or no process group) the computation is op for op :func:`checkpointed_loss`'s.
Choices the paper leaves open are discussed on the book page ``book/choices.md``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .augment import DSAParams
from .config import DATASETS, RENDEZVOUS_ENV, DataConfig, DistillConfig
from .models import ConvNetSpec
from .plan import InnerPlan, step_loss

__all__ = [
    "RENDEZVOUS_ENV",
    "world",
    "is_writer",
    "barrier",
    "ensure_process_group",
    "launch",
    "spread_world",
    "spread_ids",
    "all_gather_objects",
    "shares",
    "shard_plan",
    "sharded_loss",
    "activation_floats",
    "GRAPH_FACTOR",
    "RUNTIME_BYTES",
    "MemoryModel",
    "memory_model",
    "predict",
    "main",
]

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """True on the rank that writes a run's files (rank 0, or the only process)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if world()[1] > 1:
        dist.barrier()


def ensure_process_group(device: str | torch.device = "cpu", backend: str | None = None) -> bool:
    """Initialise the default process group from the ``env://`` rendezvous if none is.

    Args:
        device: where this rank computes; ``cuda`` picks NCCL (and ``cuda:LOCAL_RANK``
            becomes the current device), anything else gloo.
        backend: ``gloo`` or ``nccl`` to override that choice.

    Returns:
        True when this call created the group (the caller destroys it), else False.

    Raises:
        ValueError: no group and no rendezvous in the environment (names ``grad_mode``
            and the missing variables of :data:`RENDEZVOUS_ENV`).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    missing = [k for k in RENDEZVOUS_ENV if not os.environ.get(k)]
    if missing or not dist.is_available():
        raise ValueError(
            "invalid parameter grad_mode='sharded': allowed only in an initialised "
            "torch.distributed process group or under torchrun (the env:// rendezvous "
            f"needs {', '.join(RENDEZVOUS_ENV)}; missing {', '.join(missing) or 'torch.distributed'}); "
            "otherwise use grad_mode='checkpointed'"
        )
    dev = torch.device(device)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, init_method="env://")
    return True


def launch(fn: Callable[..., T], *args: Any, device: str = "cpu", **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on every rank of a ``torchrun`` launch.

    Makes the process group from the environment (:func:`ensure_process_group`), runs
    ``fn`` (e.g. building a :class:`lsslib.distill.Distiller` with ``grad_mode='sharded'``
    and calling its ``run``; rank 0 writes, every rank reads the checkpoint to resume),
    waits for every rank and destroys the group it made.

    Raises:
        ValueError: no rendezvous (see :func:`ensure_process_group`).
    """
    created = ensure_process_group(device)
    try:
        out = fn(*args, **kwargs)
        barrier()
        return out
    finally:
        if created:
            dist.destroy_process_group()


def spread_world(given: tuple[int, int] | None, count: int, allowed: str) -> tuple[int, int]:
    """``(rank, world_size)`` of work spread over ranks (experts, evaluation networks).

    Args:
        given: the caller's ``world=(rank, world_size)``, or ``None`` for the default
            process group's (:func:`world`; ``(0, 1)`` without one).
        count: the units of work (expert groups, networks); every rank needs one.
        allowed: how the caller names ``count``, for the error (``"num_eval=3"``).

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` means this process does all the work.

    Raises:
        ValueError: ``world`` is not two ints ``0 <= rank < world_size``, or asks for
            ``world_size > 1`` other than the initialised process group's (names
            ``world``); ``world_size > count`` (names ``world_size`` and ``allowed``).
    """
    rank, ws = world() if given is None else given
    ok = isinstance(rank, int) and isinstance(ws, int) and 0 <= rank < ws
    if not ok or (ws > 1 and (rank, ws) != world()):
        raise ValueError(
            f"invalid parameter world={given!r}: allowed None (the default process group's "
            f"rank and size, now {world()}), (0, 1) (all the work in this process) or the "
            "initialised process group's (rank, world_size)"
        )
    if ws > count:
        raise ValueError(
            f"invalid parameter world_size={ws}: allowed at most {allowed} "
            "(each rank trains at least one); use fewer ranks"
        )
    return rank, ws


def spread_ids(count: int, rank: int, world_size: int) -> list[int]:
    """The units ``i`` in ``range(count)`` with ``i % world_size == rank`` (round robin)."""
    return list(range(rank, count, world_size))


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process.

    Uses ``torch.distributed.all_gather_object`` (pickles; exact for Python floats).
    """
    ws = world()[1]
    if ws == 1:
        return [obj]
    out: list[Any] = [None] * ws
    dist.all_gather_object(out, obj)
    return out


def shares(batch: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` shares of a batch of ``batch`` over ``world_size`` ranks;
    the first ``batch % world_size`` ranks take one image more.

    Raises:
        ValueError: ``world_size`` > ``batch`` (a rank would get no image).
    """
    if world_size > batch:
        raise ValueError(
            f"invalid parameter world_size={world_size}: allowed at most batch_syn={batch} "
            "(each rank needs at least one synthetic image per inner step)"
        )
    q, extra = divmod(batch, world_size)
    bounds, lo = [], 0
    for r in range(world_size):
        hi = lo + q + (1 if r < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


@dataclass
class _Share:
    """One rank's part of an iteration's plan and the weight of each step's loss."""

    plan: InnerPlan
    scales: list[float]


def shard_plan(plan: InnerPlan, rank: int, world_size: int) -> _Share:
    """Rank ``rank``'s contiguous share of every step's batch and DSA parameters.

    Returns:
        the sliced :class:`~lsslib.plan.InnerPlan` (int64 index tensors ``[b_r]``, DSA
        values ``[b_r]``) and the scales ``b_r / B`` (1.0 with one rank).

    Raises:
        ValueError: ``world_size`` > a step's batch.
    """
    idx, aug, scales = [], [], []
    for i, a in zip(plan.indices, plan.augment, strict=True):
        lo, hi = shares(len(i), world_size)[rank]
        idx.append(i[lo:hi])
        aug.append(
            None if a is None else DSAParams(a.family, {k: v[lo:hi] for k, v in a.values.items()})
        )
        scales.append(1.0 if world_size == 1 else (hi - lo) / len(i))
    return _Share(InnerPlan(idx, aug), scales)


def _all_reduce(t: Tensor, world_size: int) -> Tensor:
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _local_loss(spec, w, x, y, share: _Share, i: int) -> Tensor:
    loss = step_loss(spec, w, x, y, share.plan.indices[i], share.plan.augment[i])
    return loss if share.scales[i] == 1.0 else loss * share.scales[i]


def _forward(spec, start: Tensor, x, y, lr: Tensor, share: _Share, ws: int) -> list[Tensor]:
    """The N+1 flat parameter vectors, identical on every rank."""
    traj = [start.detach()]
    for i in range(len(share.plan.indices)):
        w = traj[-1].requires_grad_(True)
        (g,) = torch.autograd.grad(_local_loss(spec, w, x, y, share, i), w)
        _all_reduce(g, ws)
        traj.append((w - lr * g).detach())
        w.requires_grad_(False)
    return traj


def sharded_loss(
    spec: ConvNetSpec,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    plan: InnerPlan,
) -> Tensor:
    """The checkpointed matching loss with each inner step's batch split over the ranks.

    Cost per rank: 2 all-reduces of ``P`` floats of ``start``'s dtype per inner step (the
    forward gradient, the backward adjoint product), then one each of ``dL/dx``
    (``n*C*H*W``), ``dL/dy`` (``n*K``, soft labels) and ``dL/dsyn_lr`` per call; memory of
    the N+1 parameter vectors, the set, and one step's graph for ``ceil(B / R)`` images
    (:func:`memory_model`). Source: MTT's ``distill.py`` inner loop, the checkpointed
    adjoint of :func:`lsslib.matching.checkpointed_loss`.

    Args:
        spec: student architecture (``instancenorm`` or ``none``: per-image norms).
        start, target: float ``[P]``, w*_t and w*_{t+M} (the same on every rank).
        x: float ``[N, C, H, W]``, the whole set on every rank (may carry a graph).
        y: int64 ``[N]`` or float ``[N, K]`` (may carry a graph to label logits).
        syn_lr: float scalar leaf.
        plan: the iteration's plan, the same on every rank.

    Returns:
        The loss, detached (the same on every rank); the full gradients are already
        accumulated into the leaves behind ``x``, ``y`` and ``syn_lr`` on every rank.

    Raises:
        ValueError: ``world_size`` > a step's batch; ``net_norm='batchnorm'`` (its
            statistics couple the images of a batch, so a share's gradient is not its
            part of the full one).
    """
    rank, ws = world()
    if ws > 1 and spec.norm == "batchnorm":
        raise ValueError(
            "invalid parameter net_norm='batchnorm' with grad_mode='sharded': allowed "
            "'instancenorm' or 'none' (per-image norms), or grad_mode='checkpointed'"
        )
    share = shard_plan(plan, rank, ws)
    denom = (start - target).pow(2).sum()
    xl = x.detach().requires_grad_(x.requires_grad)
    yl = y.detach().requires_grad_(y.dtype != torch.int64 and y.requires_grad)
    lrl = syn_lr.detach().requires_grad_(True)
    traj = _forward(spec, start, xl.detach(), yl.detach(), lrl.detach(), share, ws)
    final = traj[-1]
    loss = (final - target).pow(2).sum() / denom
    gx, gy, glr = _backward(spec, traj, 2 * (final - target) / denom, xl, yl, lrl, share, ws)
    roots, grads_out = [syn_lr], [_all_reduce(glr, ws)]
    if gx is not None:
        roots.append(x)
        grads_out.append(_all_reduce(gx, ws))
    if gy is not None:
        roots.append(y)
        grads_out.append(_all_reduce(gy, ws))
    torch.autograd.backward(roots, grads_out)
    return loss.detach()


def _backward(spec, traj, gw, xl, yl, lrl, share: _Share, ws: int):
    """Push the adjoint back through the steps; this rank's ``(dL/dx, dL/dy, dL/dlr)``."""
    gx = torch.zeros_like(xl) if xl.requires_grad else None
    gy = torch.zeros_like(yl) if yl.requires_grad else None
    glr = torch.zeros_like(lrl)
    for i in reversed(range(len(share.plan.indices))):
        w = traj[i].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_local_loss(spec, w, xl, yl, share, i), w, create_graph=True)
        wrt = [w, lrl] + ([xl] if gx is not None else []) + ([yl] if gy is not None else [])
        if ws == 1:  # op for op checkpointed_loss: the identity term inside autograd
            grads = list(torch.autograd.grad(w - lrl * g, wrt, grad_outputs=gw, allow_unused=True))
            gw = grads[0]
        else:  # this rank's syn_lr * H_r gw, summed over the ranks once per step
            grads = list(torch.autograd.grad(lrl * g, wrt, grad_outputs=gw, allow_unused=True))
            gw = gw - _all_reduce(grads[0], ws)
            grads[1:] = [None if t is None else -t for t in grads[1:]]
        glr += grads[1]
        k = 2
        if gx is not None:
            gx += grads[k] if grads[k] is not None else 0
            k += 1
        if gy is not None and grads[k] is not None:
            gy += grads[k]
    return gx, gy, glr


# ------------------------------------------------------------------ memory model
#: Bytes of one image's inner-step graph (forward, the ``create_graph`` backward and the
#: double backward's temporaries) per byte of its forward activations
#: (:func:`activation_floats`). Measured on the CPU (torch 2.x, oneDNN, ConvNetD3 width
#: 128, 32x32 images) as the growth of the live peak with the batch: 4.35 MiB per image,
#: 2.0 x its 2.16 MiB of forward activations (``benchmarks/bench_sharded.py
#: --calibrate``; resident set with glibc's mmap threshold fixed, so that it follows the
#: live tensors instead of the heap's slack).
GRAPH_FACTOR = 2.0

#: Bytes a first iteration allocates whatever the batch (oneDNN primitives and scratch
#: pads, autograd's buffers on the CPU): the intercept of the same measurement. On a GPU
#: the CUDA context and the cuDNN workspace take its place (not measured here).
RUNTIME_BYTES = 50 * 2**20


def activation_floats(spec: ConvNetSpec) -> int:
    """Floats of the forward activations of one image through the ConvNet: the (augmented)
    input, then per block the convolution, norm and ReLU outputs and the pooled map,
    then the logits. Unitless count (multiply by 4 for float32 bytes)."""
    side = spec.side + 2 * (getattr(spec, "first_padding", 1) - 1)  # one-channel input pads 3
    total = 2 * spec.channels * spec.side**2  # the image and its DSA output
    per_map = 2 if spec.norm == "none" else 3
    for _ in range(spec.depth):
        total += per_map * spec.width * side**2
        if spec.pooling != "none":
            side //= 2
            total += spec.width * side**2
    return total + spec.num_classes


@dataclass(frozen=True)
class MemoryModel:
    """Predicted bytes per rank of one iteration of the sharded (or, with one rank, the
    checkpointed) matching loss; every field in bytes.

    Attributes:
        trajectory: the N+1 stored flat parameter vectors, ``(syn_steps + 1) * P``.
        vectors: the other P-sized work vectors (start, target, adjoint, gradient,
            vector-Jacobian product, their reduce buffers): ``8 * P``.
        synset: the whole set on every rank and its gradients: ``3 * n * C * H * W``,
            plus ``3 * n * K`` with soft labels.
        activations: the graph of one inner step for this rank's share,
            :data:`GRAPH_FACTOR` ``* activation_floats * ceil(batch_syn / world_size)``.
        expert: the expert trajectory held for the iteration (given by the caller).
        runtime: :data:`RUNTIME_BYTES` (or the caller's).
    """

    trajectory: int
    vectors: int
    synset: int
    activations: int
    expert: int
    runtime: int

    @property
    def total(self) -> int:
        """All terms, bytes."""
        return (
            self.trajectory + self.vectors + self.synset + self.activations + self.expert
        ) + self.runtime


def memory_model(
    spec: ConvNetSpec,
    *,
    images: int,
    batch_syn: int,
    syn_steps: int,
    world_size: int = 1,
    soft_labels: bool = True,
    expert_epochs_held: int = 0,
    graph_factor: float = GRAPH_FACTOR,
    runtime_bytes: int = RUNTIME_BYTES,
) -> MemoryModel:
    """Bytes per rank of one iteration (float32 throughout).

    Args:
        spec: the student (its P and activation sizes, :func:`activation_floats`).
        images: synthetic images n (``ipc * K`` for pixels; more for low-rank sets).
        batch_syn: images per inner step B (``n`` when the run's ``batch_syn`` is None).
        syn_steps: inner steps N.
        world_size: ranks R sharing each step (1: the checkpointed mode).
        soft_labels: the set carries ``[n, K]`` learned targets.
        expert_epochs_held: snapshots of the expert trajectory in memory (0: not counted).
        graph_factor, runtime_bytes: see :data:`GRAPH_FACTOR`, :data:`RUNTIME_BYTES`.

    Returns:
        The :class:`MemoryModel` (``.total`` is the prediction).

    Raises:
        ValueError: ``world_size`` > ``batch_syn`` (:func:`shares`).
    """
    share = max(hi - lo for lo, hi in shares(batch_syn, world_size))
    p, f = spec.num_params, 4
    pixels = spec.channels * spec.side**2
    return MemoryModel(
        trajectory=(syn_steps + 1) * p * f,
        vectors=8 * p * f,
        synset=3 * images * (pixels + (spec.num_classes if soft_labels else 0)) * f,
        activations=math.ceil(graph_factor * activation_floats(spec) * share * f),
        expert=expert_epochs_held * p * f,
        runtime=runtime_bytes,
    )


def predict(
    cfg: DistillConfig,
    *,
    dataset: str,
    width: int = 128,
    depth: int = 3,
    world_size: int = 1,
    expert_epochs_held: int = 51,
) -> MemoryModel:
    """:func:`memory_model` of a run's parameters on a named dataset (its layout solved
    by the parameterisation, :meth:`lsslib.config.DistillConfig.check_against`).

    Args:
        cfg: the run's parameters (``ipc``, ``rank``, ``batch_syn``, ``syn_steps``, ...).
        dataset: a key of :data:`lsslib.config.DATASETS` (its C, H = W, K).
        width, depth: the ConvNet (instance norm, average pooling).
        world_size: ranks sharing each inner step.
        expert_epochs_held: snapshots of one expert trajectory in memory (51 for MTT's
            50-epoch buffers).

    Raises:
        ValueError: unknown dataset; the run's own rules; ``world_size`` > the batch.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"invalid parameter dataset={dataset!r}: allowed one of "
            + ", ".join(repr(d) for d in DATASETS)
        )
    c, side, k = DATASETS[dataset]
    lay = cfg.check_against(channels=c, side=side, num_classes=k)
    n = lay.images_per_class * k
    spec = ConvNetSpec(c, side, k, depth=depth, width=width)
    return memory_model(
        spec,
        images=n,
        batch_syn=cfg.batch_syn or n,
        syn_steps=cfg.syn_steps,
        world_size=world_size,
        soft_labels=cfg.soft_labels,
        expert_epochs_held=expert_epochs_held,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m lsslib.sharded``: the memory model's GiB per rank of a run, by world size.

    Example: ``python -m lsslib.sharded --dataset cifar100 --parameterisation pixels --ipc 50
    --syn-steps 80 --batch-syn 125 --world-sizes 1,2,4,8``.
    """
    p = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=DataConfig.dataset)
    p.add_argument("--parameterisation", default=DistillConfig.parameterisation)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--soft-labels", type=int, choices=(0, 1), default=1)
    p.add_argument("--syn-steps", type=int, default=50)
    p.add_argument("--batch-syn", type=int, default=None)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--world-sizes", default="1,2,4,8")
    a = p.parse_args(argv)
    cfg = DistillConfig(
        parameterisation=a.parameterisation,
        ipc=a.ipc,
        rank=a.rank,
        soft_labels=bool(a.soft_labels),
        syn_steps=a.syn_steps,
        batch_syn=a.batch_syn,
        max_batch_syn=10**9,  # the memory guard is what this prints
    )
    print("world_size  GiB/rank  (activations, trajectory, set, rest)")
    for ws in (int(w) for w in a.world_sizes.split(",")):
        m = predict(cfg, dataset=a.dataset, width=a.width, world_size=ws)
        rest = m.vectors + m.expert + m.runtime
        parts = (m.activations, m.trajectory, m.synset, rest)
        print(
            f"{ws:10d}  {m.total / 2**30:8.2f}  ("
            + ", ".join(f"{b / 2**30:.2f}" for b in parts)
            + ")"
        )


if __name__ == "__main__":
    main()
