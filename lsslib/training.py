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

On CUDA the small per-step host tensors (shuffles, DSA draws) go to the device
through pinned memory without blocking, so the host keeps queueing work while
the GPU runs; call :func:`enable_tf32` once to let convolutions and matmuls use
TF32 tensor cores. ``benchmarks/`` measures all of this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import DSAParams, apply_dsa, sample_dsa
from .models import ConvNetSpec, batched_forward, compiled_forward, convnet_forward

__all__ = [
    "soft_cross_entropy",
    "TrainState",
    "train_nets",
    "accuracy",
    "test_batch_size",
    "gather_dsa_batch",
    "enable_tf32",
    "tune_cpu_malloc",
    "to_device",
]


def enable_tf32(enabled: bool = True) -> tuple[bool, bool]:
    """Allow (or forbid) TF32 tensor cores for fp32 matmuls and cuDNN convolutions.

    TF32 keeps fp32 range with a 10-bit mantissa; on Ampere/Hopper GPUs it runs
    the ConvNet's convolutions several times faster than strict fp32. It changes
    results at the 1e-3 relative level, so call it once, at the start of a CUDA
    run (the benchmarks and the stage notebooks do), never in the middle of one.
    It has no effect on CPU.

    Returns:
        The previous ``(matmul, cudnn)`` settings, to restore them.
    """
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return old


def tune_cpu_malloc() -> bool:
    """glibc only: keep freed CPU tensor memory in the heap for reuse (opt-in, process-wide).

    By default glibc serves every allocation above 32 MiB (one activation
    tensor of a width-128 ConvNet at batch 256 is 128 MiB) with a fresh ``mmap``
    and returns it on free, so the kernel zero-fills the pages again at every
    training step; on a 2-core machine that cost about a third of the CPU time
    of expert training. With mmap off and trimming raised, the heap keeps the
    pages and the next step reuses them: same results, less time, but the
    process's resident memory stays at its peak. Call once, early, in a CPU
    run (the benchmarks do; ``--no-malloc-tuning`` turns it off). No effect on
    tensors on a GPU.

    Returns:
        ``True`` if glibc accepted the settings, ``False`` elsewhere (e.g. macOS, musl).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1
        ok = libc.mallopt(m_trim_threshold, 2**31 - 1) == 1 and ok
        return libc.mallopt(m_top_pad, 64 << 20) == 1 and ok
    except (OSError, AttributeError):
        return False


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a host tensor to ``device``; to CUDA through pinned memory, without blocking.

    A plain ``.to('cuda')`` of pageable memory waits for all queued GPU work, so a
    few small copies per training step would stall the pipeline every step. The
    copy is stream-ordered, so later kernels see the data; PyTorch's pinned-memory
    cache keeps the staging buffer alive until the copy has run. Same values either way.
    """
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _params_to(p: DSAParams, device: torch.device) -> DSAParams:
    return DSAParams(p.family, {k: to_device(v, device) for k, v in p.values.items()})


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against hard labels (int64 ``[B]``) or a distribution (float ``[B, K]``).

    Returns the mean over the batch (a scalar); for soft targets
    ``-(target * log_softmax(logits)).sum(-1).mean()`` (book/choices.md §4, T = 1).
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
    networks that drew the same family are augmented in one batched call, written
    in place (not differentiable in ``x``: for training data only).

    Returns:
        float ``[E, B, C, H, W]``.
    """
    xb = x[idx]
    if not strategy:
        return xb
    e, b = idx.shape
    dev = x.device
    params = [sample_dsa(strategy, b, x.shape[-1], g) for g in generators]
    out = torch.empty_like(xb)  # training data: no gradient flows to x here
    by_family: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        by_family.setdefault(p.family, []).append(i)
    for fam, members in by_family.items():
        merged = DSAParams(
            fam,
            {
                k: to_device(torch.cat([params[i].values[k] for i in members]), dev)
                for k in params[members[0]].values
            },
        )
        sel = to_device(torch.tensor(members), dev)
        out[sel] = apply_dsa(xb[sel].flatten(0, 1), merged).view(len(members), b, *x.shape[1:])
    return out


def _per_net_loss(logits: Tensor, yb: Tensor) -> Tensor:
    """Mean cross-entropy of each net: ``logits [E, B, K]``, ``yb [E, B]`` or ``[E, B, K]`` -> ``[E]``."""
    if yb.dtype == torch.int64:
        e, k = logits.shape[0], logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, k), yb.reshape(-1), reduction="none")
        return ce.view(e, -1).mean(1)
    return -(yb * F.log_softmax(logits, dim=-1)).sum(-1).mean(1)


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
    compile_backend: str | None = None,
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
        vectorise: ``True``: one vmapped forward for all E nets (grouped convolutions);
            ``False``: a loop over the nets; ``None`` (default): vmap on CUDA, the loop
            elsewhere (on CPU the grouped convolutions are slower than the loop:
            ``benchmarks/bench_experts.py`` measures both).
        compile_backend: optional GPU speed path, off by default: run the forward
            through ``torch.compile(backend=compile_backend)`` (e.g. ``"inductor"``,
            which fuses the norm/ReLU/pool element-wise work). Same maths, float
            reassociation only. Not measured on a GPU yet; see ``benchmarks/README.md``.

    Returns:
        The updated :class:`TrainState`.
    """
    n = x.shape[0]
    e = len(state.generators)
    dev = x.device
    vec = (dev.type == "cuda") if vectorise is None else vectorise
    lr_t = torch.as_tensor(lr, dtype=torch.float32, device=dev).reshape(-1, 1).expand(e, 1)
    fwd_many = batched_forward
    fwd_one = convnet_forward
    if compile_backend:
        fwd_many = compiled_forward(spec, compile_backend, batched=True)
        fwd_one = compiled_forward(spec, compile_backend, batched=False)
    while state.epoch < epochs:
        factor = 0.1 if lr_decay_epoch is not None and state.epoch >= lr_decay_epoch else 1.0
        perms = to_device(
            torch.stack([torch.randperm(n, generator=g) for g in state.generators]), dev
        )
        correct = torch.zeros(e, device=dev)
        for b0 in range(0, n, batch_size):
            idx = perms[:, b0 : b0 + batch_size]
            xb = gather_dsa_batch(x, idx, dsa_strategy, state.generators)
            yb = y[idx]
            if vec and e > 1:
                w = state.flats.detach().requires_grad_(True)
                logits = fwd_many(spec, w, xb)
                (grad,) = torch.autograd.grad(_per_net_loss(logits, yb).sum(), w)
            else:
                # One net at a time, forward then backward, so that only one net's
                # graph is alive (less memory, warmer caches); same numbers as a
                # single backward through all E nets.
                grads, outs = [], []
                for i in range(e):
                    wi = state.flats[i].detach().requires_grad_(True)
                    li = fwd_one(spec, wi, xb[i])
                    (gi,) = torch.autograd.grad(_per_net_loss(li[None], yb[i : i + 1]).sum(), wi)
                    grads.append(gi)
                    outs.append(li.detach())
                grad, logits = torch.stack(grads), torch.stack(outs)
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


#: Memory for the activations of one test batch in :func:`accuracy` (bytes).
TEST_BATCH_BYTES = 256 << 20


def test_batch_size(spec: ConvNetSpec, budget_bytes: int = TEST_BATCH_BYTES) -> int:
    """Images per forward pass of a test pass, so that its activations fit ``budget_bytes``.

    The largest layer output is the first block's ``width x side x side`` float32
    map; up to three of them are alive at once (convolution, norm and ReLU
    outputs). At width 128 on 32x32 images that is 1.5 MiB per image, i.e. 170
    images for the default 256 MiB; the fixed batch of 2,000 used before held
    about 1 GB per activation and was slower on CPU (26.3 s against
    19.3 s at batch 128).

    Returns:
        An int in ``[1, 10000]``.
    """
    per_image = 3 * 4 * spec.width * spec.side * spec.side
    return int(min(10_000, max(1, budget_bytes // per_image)))


@torch.no_grad()
def accuracy(
    spec: ConvNetSpec,
    flats: Tensor,
    x: Tensor,
    y: Tensor,
    batch: int | None = None,
    vectorise: bool | None = None,
) -> Tensor:
    """Top-1 accuracy of each network: ``flats`` ``[E, P]`` on ``x`` ``[N, C, H, W]`` -> float32 ``[E]``.

    At most ``batch`` image-forwards are in flight at once (``batch // E``
    images for all E nets vmapped, or ``batch`` images for one net), so memory
    does not grow with E. ``batch=None`` (default) sizes it by memory:
    :func:`test_batch_size` (170 at width 128 on 32x32 images). ``vectorise``:
    as in :func:`train_nets` (vmap on CUDA, a loop over the nets elsewhere).

    Raises:
        ValueError: ``batch`` < 1.
    """
    if batch is None:
        batch = test_batch_size(spec)
    if batch < 1:
        raise ValueError(f"invalid parameter batch={batch}: allowed an int >= 1 or None")
    e = flats.shape[0]
    vec = (flats.device.type == "cuda") if vectorise is None else vectorise
    correct = torch.zeros(e, device=flats.device)
    if vec and e > 1:
        fwd = torch.func.vmap(lambda w, xb: convnet_forward(spec, w, xb), in_dims=(0, None))
        step = max(1, batch // e)
        for i in range(0, len(x), step):
            logits = fwd(flats, x[i : i + step])
            correct += (logits.argmax(-1) == y[i : i + step]).float().sum(1)
        return correct / len(x)
    for j in range(e):
        for i in range(0, len(x), batch):
            logits = convnet_forward(spec, flats[j], x[i : i + batch])
            correct[j] += (logits.argmax(-1) == y[i : i + batch]).float().sum()
    return correct / len(x)
