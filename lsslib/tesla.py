"""TESLA's constant-memory gradient of the trajectory-matching loss (``grad_mode='tesla'``).

Cui, Wang, Si, Hsieh, "Scaling up dataset distillation to ImageNet-1K with
constant memory", ICML 2023. Written from the method's equations; the released
code (justincui03/tesla) was read only to locate its known bug (below).

The problem (:func:`lsslib.distill.matching_loss`): the student starts at
``w_0 = w*_t`` and takes N plain SGD steps on synthetic batches,

    w_{i+1} = w_i - a * g_i,    g_i = grad_w l_i(w_i; x, y)      (a = syn_lr),

and the loss is ``L = ||w_N - w*||^2 / D`` with ``D = ||w_0 - w*||^2``. Write
``lam_N = dL/dw_N = 2 (w_N - w*) / D``, ``H_i = d g_i / d w_i`` (the Hessian of
the i-th inner loss) and ``J_i = d g_i / d(x, y)`` at fixed ``w_i``. The exact
gradient (what ``unrolled`` and ``checkpointed`` compute) runs the adjoint
recursion backwards,

    lam_i = (I - a H_i) lam_{i+1},
    dL/d(x, y) = -a * sum_i J_i^T lam_{i+1},     dL/da = -sum_i g_i . lam_{i+1}.

**What TESLA approximates.** It uses ``lam_N`` in place of every ``lam_{i+1}``:
all Hessian terms ``a H_j`` of the recursion are dropped (``dw_{j+1}/dw_j := I``).
Equivalently it differentiates the closed form ``w_N = w_0 - a * sum_i g_i``
while holding every intermediate ``w_i`` fixed, so the dependence of a later
step's gradient ``g_j`` on ``x``, ``y`` and ``a`` *through the earlier updates*
``w_j(w_{j-1}, ...)`` is ignored; only each step's direct dependence on its own
batch is kept. The error of each term is
``lam_{i+1} - lam_N = -a * sum_{j>i} H_j lam_N + O(a^2)``: it vanishes for
N = 1 (there is no later step, so TESLA is exact there) and grows with
``a * N * ||H||``. The loss value itself is exact. ``benchmarks/bench_distill.py``
and ``tests/unit/test_perf_paths.py`` measure the gap (cosine similarity and
relative error against the exact gradient).

**Memory.** Two passes over the N steps. Pass 1 runs them without a graph and
sums ``G = sum_i g_i`` (giving ``w_N``, the loss, ``lam_N`` and
``dL/da = -G . lam_N``). Pass 2 replays them from ``w_0`` and, for each step
alone, builds the graph of ``g_i`` and pushes ``-a lam_N`` through it into
``x`` and ``y``; the replay also advances ``w_i``. So memory holds one inner
step's graph plus a handful of parameter-sized vectors, whatever N is (the
``checkpointed`` mode keeps N + 1 parameter vectors, ``unrolled`` N graphs).
Cost: about 10 forward-equivalents per image-step versus 9 for ``unrolled``
(see ``benchmarks/bench_distill.py``). Pass 2 recomputes ``g_i`` with the
double-backward formulas, which round differently from pass 1's, so its
``w_i`` may drift from pass 1's at the float-rounding level (1e-7 relative in
float32); this is far below the approximation itself.

**The factor-2 bug of the released code** (reported on justincui03/tesla's
public tracker): the image gradient there is ``2 * torch.autograd.grad(...)``, and
``torch.autograd.grad`` returns a *tuple*, so ``2 * (g,)`` is the tuple
``(g, g)`` and its first element is ``g``, not ``2 g``: the images get half the
gradient of the equations, while syn_lr's gradient (taken by autograd on the
closed-form loss) is right. Here the factor 2 of ``d||r||^2/dr = 2 r`` lives in
``lam_N`` and applies to every leaf alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .models import ConvNetSpec
from .plan import InnerPlan, plan_to, step_loss

__all__ = ["tesla_matching_loss", "SavedTensorMeter"]


def tesla_matching_loss(
    spec: ConvNetSpec,
    start: Tensor,
    target: Tensor,
    x: Tensor,
    y: Tensor,
    syn_lr: Tensor,
    plan: InnerPlan,
    mode: str = "tesla",
) -> Tensor:
    """The matching loss with TESLA's constant-memory (approximate) gradient.

    Same arguments and contract as :func:`lsslib.distill.matching_loss` in its
    ``checkpointed`` mode: the gradients are accumulated into ``x`` (and through
    it into whatever produced it, e.g. low-rank factors), into ``y`` when it is
    a float target that requires grad, and into ``syn_lr``; the returned loss is
    detached. See the module docstring for what is approximated.

    Args:
        spec: student architecture.
        start: float32 ``[P]``, w*_t; target: float32 ``[P]``, w*_{t+M}.
        x: float ``[N, C, H, W]`` synthetic images.
        y: int64 ``[N]`` or float ``[N, K]`` targets.
        syn_lr: scalar tensor, the student's step size.
        plan: from :func:`lsslib.distill.make_plan`.
        mode: must be ``"tesla"`` (kept for the signature of ``matching_loss``).

    Returns:
        The loss (exact value, detached).

    Raises:
        ValueError: ``mode`` is not ``"tesla"``.
    """
    if mode != "tesla":
        raise ValueError(f"invalid parameter grad_mode={mode!r}: allowed 'tesla'")
    plan = plan_to(plan, x.device)
    xl = x.detach().requires_grad_(x.requires_grad)
    soft = y.dtype != torch.int64
    yl = y.detach().requires_grad_(soft and y.requires_grad)
    lr = syn_lr.detach()
    denom = (start - target).pow(2).sum()
    steps = list(zip(plan.indices, plan.augment, strict=True))

    # Pass 1: no graph kept; w_N and G = sum_i g_i.
    w = start.detach()
    gsum = torch.zeros_like(w)
    for idx, aug in steps:
        wi = w.requires_grad_(True)
        (g,) = torch.autograd.grad(step_loss(spec, wi, xl.detach(), yl.detach(), idx, aug), wi)
        gsum += g
        w = (wi - lr * g).detach()
    final = w
    loss = (final - target).pow(2).sum() / denom
    lam = 2 * (final - target) / denom  # dL/dw_N
    glr = -(gsum * lam).sum()  # dL/da with every g_i held fixed

    # Pass 2: replay; one step's graph at a time, cotangent -a * lam_N for every step.
    pairs = [(orig, leaf) for orig, leaf in ((x, xl), (y, yl)) if leaf.requires_grad]
    wrt = [leaf for _, leaf in pairs]
    acc = [torch.zeros_like(t) for t in wrt]
    if wrt:
        v = -lr * lam
        w = start.detach()
        for idx, aug in steps:
            wi = w.requires_grad_(True)
            (g,) = torch.autograd.grad(step_loss(spec, wi, xl, yl, idx, aug), wi, create_graph=True)
            grads = torch.autograd.grad(g, wrt, grad_outputs=v, allow_unused=True)
            for a, gr in zip(acc, grads, strict=True):
                if gr is not None:
                    a += gr
            w = (wi - lr * g.detach()).detach()
            del g, grads

    roots, grads_out = [], []
    if syn_lr.requires_grad:
        roots.append(syn_lr)
        grads_out.append(glr.reshape(syn_lr.shape))
    for (orig, _), a in zip(pairs, acc, strict=True):
        roots.append(orig)
        grads_out.append(a)
    if roots:
        torch.autograd.backward(roots, grads_out)
    return loss.detach()


class _Held:
    """A saved tensor as held by autograd; tells its meter when autograd lets go."""

    __slots__ = ("t", "meter", "ptr")

    def __init__(self, meter: SavedTensorMeter, t: Tensor) -> None:
        self.t, self.meter = t, meter
        self.ptr = meter._add(t)

    def __del__(self) -> None:
        self.meter._drop(self.ptr)


class SavedTensorMeter:
    """Peak bytes of the storages that autograd keeps for backward, while active.

    A device-independent memory proxy (CPU has no ``max_memory_allocated``):
    every tensor an op saves for its backward goes through a
    :func:`torch.autograd.graph.saved_tensors_hooks` pack hook that counts its
    storage (each storage once, however many tensors share it) until the graph
    that holds it is freed. It does not count tensors the caller keeps alive
    itself (e.g. a list of parameter vectors).

    Attributes:
        peak_bytes: the largest total seen. saved: tensors packed in all.
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self.saved = 0
        self._refs: dict[int, list[int]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _add(self, t: Tensor) -> int:
        st = t.untyped_storage()
        ptr, nb = st.data_ptr(), st.nbytes()
        self.saved += 1
        ref = self._refs.setdefault(ptr, [0, nb])
        if ref[0] == 0:
            self.live_bytes += nb
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        ref[0] += 1
        return ptr

    def _drop(self, ptr: int) -> None:
        ref = self._refs.get(ptr)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live_bytes -= ref[1]
            del self._refs[ptr]

    def _pack(self, t: Tensor) -> _Held:
        return _Held(self, t)

    @staticmethod
    def _unpack(h: _Held) -> Tensor:
        return h.t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
