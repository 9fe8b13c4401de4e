"""Training many ConvNets at once: the kernel behind experts and evaluation.

E networks, each with its own ``torch.Generator`` (initialisation, shuffling and
DSA come from it), are trained together: their flat parameters are stacked into
``[E, P]`` and the forward pass is vectorised with :func:`torch.func.vmap` (one
grouped convolution per layer). Because every random draw of network ``e``
comes from generator ``e`` in the same order as when it is trained alone,
``train_nets`` with E networks gives the same trajectories as E calls with one
network (up to floating-point reassociation in the grouped convolution); the
tests check this.

The optimiser is PyTorch's SGD written out on the flat tensor
(``d = g + wd * w; buf = m * buf + d; w -= lr * buf``; MTT's buffer and
evaluation use ``torch.optim.SGD``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import apply_dsa, sample_dsa
from .models import ConvNetSpec, batched_forward, convnet_forward

__all__ = ["soft_cross_entropy", "TrainState", "train_nets", "accuracy", "gather_dsa_batch"]


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against hard labels (int64 ``[B]``) or a distribution (float ``[B, K]``).

    Returns the mean over the batch (a scalar); for soft targets
    ``-(target * log_softmax(logits)).sum(-1).mean()`` (PAPER.md 2.4, T = 1).
    """
    if target.dtype == torch.int64:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped.

    Attributes:
        flats: float32 ``[E, P]`` parameters.
        momentum: float32 ``[E, P]`` SGD momentum buffers (zeros before the first step).
        generators: one CPU generator per network.
        epoch: epochs completed.
    """

    flats: Tensor
    momentum: Tensor
    generators: list[torch.Generator]
    epoch: int = 0

    def rng_states(self) -> Tensor:
        """uint8 ``[E, L]``: the generators' states (for safetensors)."""
        return torch.stack([g.get_state() for g in self.generators])

    def set_rng_states(self, states: Tensor) -> None:
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s.clone())


def gather_dsa_batch(
    x: Tensor, idx: Tensor, strategy: str | None, generators: list[torch.Generator]
) -> Tensor:
    """Gather ``x[idx]`` (``idx`` int64 ``[E, B]``) and apply one DSA call per network.

    The family and parameters of network ``e`` come from ``generators[e]``;
    networks that drew the same family are augmented in one batched call.

    Returns:
        float ``[E, B, C, H, W]``.
    """
    xb = x[idx]
    if not strategy:
        return xb
    e, b = idx.shape
    params = [sample_dsa(strategy, b, x.shape[-1], g) for g in generators]
    out = torch.empty_like(xb) if not xb.requires_grad else None
    if out is None:  # differentiable path: keep it functional
        return torch.stack([apply_dsa(xb[i], p) for i, p in enumerate(params)])
    by_family: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        by_family.setdefault(p.family, []).append(i)
    for fam, members in by_family.items():
        merged = type(params[0])(
            fam,
            {
                k: torch.cat([params[i].values[k] for i in members])
                for k in params[members[0]].values
            },
        )
        sel = torch.tensor(members, device=x.device)
        out[sel] = apply_dsa(xb[sel].flatten(0, 1), merged).view(len(members), b, *x.shape[1:])
    return out


def train_nets(
    spec: ConvNetSpec,
    state: TrainState,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    dsa_strategy: str | None,
    lr_decay_epoch: int | None = None,
    on_epoch: Callable[[TrainState, Tensor], None] | None = None,
    vectorise: bool | None = None,
) -> TrainState:
    """Train ``E = len(state.generators)`` networks for ``epochs`` more epochs.

    Args:
        spec: the architecture.
        state: parameters, momentum, generators, epochs done; updated in place and returned.
        x: float32 ``[N, C, H, W]`` on the training device.
        y: int64 ``[N]`` hard labels or float32 ``[N, K]`` target distributions.
        epochs: total epochs to reach (training runs from ``state.epoch`` to ``epochs``).
        lr: learning rate (a float, or float32 ``[E]`` per network).
        momentum, weight_decay: SGD settings.
        batch_size: minibatch size (the last batch of an epoch may be smaller).
        dsa_strategy: DSA families, or ``None``/``""`` for no augmentation.
        lr_decay_epoch: multiply lr by 0.1 from this epoch on (MTT's evaluation halves at
            ``epochs // 2``); ``None`` = constant.
        on_epoch: called after every epoch with the state and the per-network
            training accuracy (float32 ``[E]``).

    Returns:
        The updated :class:`TrainState`.
    """
    n = x.shape[0]
    e = len(state.generators)
    dev = x.device
    vec = (dev.type == "cuda") if vectorise is None else vectorise
    lr_t = torch.as_tensor(lr, dtype=torch.float32, device=dev).reshape(-1, 1).expand(e, 1)
    while state.epoch < epochs:
        factor = 0.1 if lr_decay_epoch is not None and state.epoch >= lr_decay_epoch else 1.0
        perms = torch.stack([torch.randperm(n, generator=g) for g in state.generators]).to(dev)
        correct = torch.zeros(e, device=dev)
        for b0 in range(0, n, batch_size):
            idx = perms[:, b0 : b0 + batch_size]
            xb = gather_dsa_batch(x, idx, dsa_strategy, state.generators)
            yb = y[idx]
            w = state.flats.detach().requires_grad_(True)
            if vec and e > 1:
                logits = batched_forward(spec, w, xb)
            else:
                logits = torch.stack([convnet_forward(spec, w[i], xb[i]) for i in range(e)])
            if yb.dtype == torch.int64:
                k = logits.shape[-1]
                ce = F.cross_entropy(logits.reshape(-1, k), yb.reshape(-1), reduction="none")
                per_net = ce.view(e, -1).mean(1)
            else:
                per_net = -(yb * F.log_softmax(logits, dim=-1)).sum(-1).mean(1)
            (grad,) = torch.autograd.grad(per_net.sum(), w)
            with torch.no_grad():
                d = grad + weight_decay * state.flats if weight_decay else grad
                if momentum:
                    state.momentum.mul_(momentum).add_(d)
                    d = state.momentum
                state.flats.sub_(lr_t * factor * d)
                hard = yb if yb.dtype == torch.int64 else yb.argmax(-1)
                correct += (logits.argmax(-1) == hard).float().sum(1)
        state.epoch += 1
        if on_epoch is not None:
            on_epoch(state, correct / n)
    return state


@torch.no_grad()
def accuracy(spec: ConvNetSpec, flats: Tensor, x: Tensor, y: Tensor, batch: int = 2000) -> Tensor:
    """Top-1 accuracy of each network: ``flats`` ``[E, P]`` on ``x`` ``[N, C, H, W]`` -> float32 ``[E]``."""
    e = flats.shape[0]
    correct = torch.zeros(e, device=flats.device)
    fwd = torch.func.vmap(lambda w, xb: convnet_forward(spec, w, xb), in_dims=(0, None))
    for i in range(0, len(x), batch):
        logits = fwd(flats, x[i : i + batch])
        correct += (logits.argmax(-1) == y[i : i + batch]).float().sum(1)
    return correct / len(x)
