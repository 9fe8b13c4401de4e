"""Trajectory matching: the normalised parameter-matching loss and its gradient modes.

One iteration (MTT ``distill.py``; book/choices.md §5-2.6) starts the student at w*_t, takes
``syn_steps`` SGD steps of size ``syn_lr`` on the planned batches of the synthetic set
(:mod:`lsslib.plan`), and scores ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2. The modes
are peers over one plan and one inner step:

* ``unrolled`` (:func:`unrolled_loss`) keeps the whole graph of the N steps (MTT);
* ``checkpointed`` (:func:`checkpointed_loss`) is exact in the memory of one step;
* ``tesla`` (:func:`lsslib.tesla.tesla_matching_loss`) is constant-memory and approximate;
* ``sharded`` (:func:`lsslib.sharded.sharded_loss`) is ``checkpointed`` with each inner
  step's batch split over the ranks of a ``torch.distributed`` process group.

:data:`MODES` maps ``grad_mode`` to its function; :func:`matching_loss` dispatches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .models import ConvNetSpec
from .plan import InnerPlan, step_loss
from .sharded import sharded_loss
from .tesla import tesla_matching_loss

__all__ = ["MODES", "unrolled_loss", "checkpointed_loss", "matching_loss"]


def unrolled_loss(
    spec: ConvNetSpec,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    plan: InnerPlan,
) -> Tensor:
    """MTT's mode: keep the graph of all N inner steps (memory grows with N).

    Returns:
        The loss with its graph; call ``.backward()`` on it.
    """
    denom = (start - target).pow(2).sum()
    w = start.detach().clone().requires_grad_(True)
    for idx, aug in zip(plan.indices, plan.augment, strict=True):
        (g,) = torch.autograd.grad(step_loss(spec, w, x, y, idx, aug), w, create_graph=True)
        w = w - syn_lr * g
    return (w - target).pow(2).sum() / denom


def checkpointed_loss(
    spec: ConvNetSpec,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    plan: InnerPlan,
) -> Tensor:
    """Exact gradients in the memory of one inner step: store the N+1 flat parameter
    vectors, then going backwards recompute one step at a time with its graph and push
    the adjoint ``dL/dw_i`` through it. Accumulates the gradients into the leaves.

    Returns:
        The loss, detached.
    """
    denom = (start - target).pow(2).sum()
    xl = x.detach().requires_grad_(x.requires_grad)
    soft = y.dtype != torch.int64
    yl = y.detach().requires_grad_(soft and y.requires_grad)
    lrl = syn_lr.detach().requires_grad_(True)
    ws = [start.detach()]
    for idx, aug in zip(plan.indices, plan.augment, strict=True):
        w = ws[-1].requires_grad_(True)
        xb_loss = step_loss(spec, w, xl.detach(), yl.detach(), idx, aug)
        (g,) = torch.autograd.grad(xb_loss, w)
        ws.append((w - lrl.detach() * g).detach())
        w.requires_grad_(False)
    final = ws[-1]
    loss = (final - target).pow(2).sum() / denom
    gw = 2 * (final - target) / denom
    gx = torch.zeros_like(xl) if xl.requires_grad else None
    gy = torch.zeros_like(yl) if yl.requires_grad else None
    glr = torch.zeros_like(lrl)
    for i in reversed(range(len(plan.indices))):
        w = ws[i].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(
            step_loss(spec, w, xl, yl, plan.indices[i], plan.augment[i]), w, create_graph=True
        )
        nxt = w - lrl * g
        wrt = [w, lrl] + ([xl] if gx is not None else []) + ([yl] if gy is not None else [])
        grads = torch.autograd.grad(nxt, wrt, grad_outputs=gw, allow_unused=True)
        gw = grads[0]
        glr += grads[1]
        k = 2
        if gx is not None:
            gx += grads[k] if grads[k] is not None else 0
            k += 1
        if gy is not None and grads[k] is not None:
            gy += grads[k]
    roots, grads_out = [syn_lr], [glr]
    if gx is not None:
        roots.append(x)
        grads_out.append(gx)
    if gy is not None:
        roots.append(y)
        grads_out.append(gy)
    torch.autograd.backward(roots, grads_out)
    return loss.detach()


#: ``grad_mode`` -> loss function; ``unrolled`` returns a loss to call ``.backward()`` on,
#: the others accumulate the gradients themselves and return it detached.
MODES: dict[str, Callable[..., Tensor]] = {
    "unrolled": unrolled_loss,
    "checkpointed": checkpointed_loss,
    "tesla": tesla_matching_loss,
    "sharded": sharded_loss,
}


def matching_loss(
    spec: ConvNetSpec,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    plan: InnerPlan,
    mode: str = "unrolled",
) -> Tensor:
    """Normalised parameter-matching loss; backpropagates into ``x``, ``y`` and ``syn_lr``.

    Args:
        spec: student architecture.
        start: float32 ``[P]``, w*_t; target: float32 ``[P]``, w*_{t+M}.
        x: float32 ``[N, C, H, W]`` synthetic images (may carry a graph to factors).
        y: int64 ``[N]`` or float32 ``[N, K]`` targets (may carry a graph to label logits).
        syn_lr: float32 scalar tensor (a leaf that requires grad).
        plan: from :func:`lsslib.plan.make_plan`.
        mode: a key of :data:`MODES`.

    Returns:
        The loss (detached for ``checkpointed``, ``tesla`` and ``sharded``, whose gradients are
        already accumulated into the leaves; call ``.backward()`` on it for ``unrolled``).

    Raises:
        ValueError: unknown mode.
    """
    if mode not in MODES:
        raise ValueError(
            f"invalid parameter grad_mode={mode!r}: allowed " + ", ".join(repr(m) for m in MODES)
        )
    return MODES[mode](spec, start, target, x, y, syn_lr, plan)
