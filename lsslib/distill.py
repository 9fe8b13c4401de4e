"""Trajectory matching (MTT) with start-epoch schedules, checkpoints and resume.

One iteration (MTT ``distill.py``; PAPER.md 2.5-2.6): pick an expert and a start
epoch t from the schedule; start the student at w*_t; take ``syn_steps`` SGD
steps of size ``syn_lr`` on batches of the synthetic set (DSA on each batch);
the loss is ||w_N - w*_{t+M}||^2 / ||w*_t - w*_{t+M}||^2; differentiate it with
respect to the set's tensors, the soft labels and syn_lr.

Two exact gradient modes share one *plan* (batch indices and DSA parameters of
every inner step, drawn before the steps), so they compute the same numbers:

* ``unrolled`` keeps the whole graph of the N steps (MTT; memory grows with N).
* ``checkpointed`` stores only the N+1 flat parameter vectors and, going
  backwards, recomputes one inner step at a time with its graph, pushing the
  adjoint ``dL/dw_i`` through it (memory of one step).

Every ``checkpoint_every`` iterations the run writes a checkpoint (trainable
tensors, optimiser momenta, generator state, iteration, log) and resumes from it;
a non-finite loss or gradient, or a syn_lr that an update makes non-positive,
stops the run with :class:`NumericalFault` and leaves the last good checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import (
    ArtifactError,
    atomic_write_text,
    check_outputs_fit,
    clean_stale,
    config_diff,
    load_artifact,
    save_artifact,
    tensors_bytes,
)
from .augment import DSAParams, apply_dsa, sample_dsa
from .config import DataConfig, DistillConfig, ModelConfig
from .experts import ExpertBuffer, content_identity
from .locking import check_output_folder, hold_folder
from .models import ConvNetSpec, convnet_forward
from .synset import (
    Labels,
    Layout,
    SynSet,
    build_synset,
    init_soft_labels,
    layout,
    synset_from_tensors,
)
from .training import soft_cross_entropy, to_device

__all__ = [
    "NumericalFault",
    "schedule_upper",
    "sample_start_epoch",
    "InnerPlan",
    "make_plan",
    "plan_to",
    "matching_loss",
    "Distiller",
    "load_synset",
]


class NumericalFault(RuntimeError):
    """A non-finite loss/gradient or a non-positive syn_lr stopped the run."""


def schedule_upper(cfg: DistillConfig, it: int) -> int:
    """Upper bound of the start epoch at iteration ``it`` (PAPER.md 2.5).

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
    """``(start, upper)``: start ~ U[T_min, upper) (upper itself if the interval is empty)."""
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


def _step_loss(
    spec: ConvNetSpec, w: Tensor, x: Tensor, y: Tensor, idx: Tensor, aug: DSAParams | None
) -> Tensor:
    xb = x[idx.to(x.device)]
    if aug is not None:
        xb = apply_dsa(xb, aug)
    return soft_cross_entropy(convnet_forward(spec, w, xb), y[idx.to(y.device)])


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
        plan: from :func:`make_plan`.
        mode: ``unrolled`` or ``checkpointed`` (same value and gradients), or
            ``tesla`` (same value, approximate constant-memory gradient:
            :func:`lsslib.tesla.tesla_matching_loss`).

    Returns:
        The loss (detached for ``checkpointed`` and ``tesla``, whose gradients are
        already accumulated into the leaves; call ``.backward()`` on it for ``unrolled``).
    """
    denom = (start - target).pow(2).sum()
    if mode == "unrolled":
        w = start.detach().clone().requires_grad_(True)
        for idx, aug in zip(plan.indices, plan.augment, strict=True):
            (g,) = torch.autograd.grad(_step_loss(spec, w, x, y, idx, aug), w, create_graph=True)
            w = w - syn_lr * g
        return (w - target).pow(2).sum() / denom
    if mode == "tesla":
        from .tesla import tesla_matching_loss

        return tesla_matching_loss(spec, start, target, x, y, syn_lr, plan)
    if mode != "checkpointed":
        raise ValueError(
            f"invalid parameter grad_mode={mode!r}: allowed 'unrolled', 'checkpointed', 'tesla'"
        )
    xl = x.detach().requires_grad_(x.requires_grad)
    soft = y.dtype != torch.int64
    yl = y.detach().requires_grad_(soft and y.requires_grad)
    lrl = syn_lr.detach().requires_grad_(True)
    ws = [start.detach()]
    for idx, aug in zip(plan.indices, plan.augment, strict=True):
        w = ws[-1].requires_grad_(True)
        xb_loss = _step_loss(spec, w, xl.detach(), yl.detach(), idx, aug)
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
            _step_loss(spec, w, xl, yl, plan.indices[i], plan.augment[i]), w, create_graph=True
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


def _optimiser_state(opts: dict[str, torch.optim.Optimizer]) -> dict[str, Tensor]:
    out = {}
    for name, opt in opts.items():
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"opt.{name}.{gi}.{pi}"] = buf
    return out


def _restore_optimiser_state(opts: dict[str, torch.optim.Optimizer], t: dict[str, Tensor]) -> None:
    for name, opt in opts.items():
        for gi, group in enumerate(opt.param_groups):
            for pi, p in enumerate(group["params"]):
                key = f"opt.{name}.{gi}.{pi}"
                if key in t:
                    opt.state[p]["momentum_buffer"] = t[key].to(p.device).clone()


class Distiller:
    """A resumable MTT-LSS distillation run.

    Args:
        cfg: the :class:`~lsslib.config.DistillConfig`.
        data_cfg: the data configuration (checked against the buffer).
        buffer: the expert trajectories.
        x_real, y_real: float32 ``[N, C, H, W]`` and int64 ``[N]`` real training images
            (normalised; on ``device``) for the initialisation.
        out_dir: run folder (``checkpoint.*``, ``synset.*``, ``log.csv``); held locked
            by this object (one writer per run folder, :mod:`lsslib.locking`).
        device: where the student runs.
        model_cfg: the stage's model parameters, checked against the buffer's network
            (``None``: take the buffer's network unchecked).

    The run's identity (what a checkpoint must match to be resumed) is its
    configuration, the buffer's identity digest and a digest of the real data
    (:func:`lsslib.experts.content_identity`), never a path.

    Raises:
        ValueError: ``out_dir`` is an existing file; invalid cross-field parameters
            (rank vs image side, budget, start epochs vs the buffer's epochs, batch_syn
            vs the set size).
        BufferMismatch: the buffer belongs to another model (naming every differing
            field), dataset or normalisation.
        LockBusy: another process writes into ``out_dir``.
        ArtifactError: ``out_dir`` holds a damaged checkpoint or one of another run
            (naming the differing fields).
        DiskFull: the run's peak on disk does not fit (checkpoint and synthetic set,
            two checkpoints during a write).
    """

    def __init__(
        self,
        cfg: DistillConfig,
        data_cfg: DataConfig,
        buffer: ExpertBuffer,
        x_real: Tensor,
        y_real: Tensor,
        out_dir: str | Path,
        device: str | torch.device = "cpu",
        model_cfg: ModelConfig | None = None,
    ) -> None:
        self.cfg, self.data_cfg, self.buffer = cfg, data_cfg, buffer
        self.device = torch.device(device)
        self.out_dir = check_output_folder(out_dir, "out_dir")
        if model_cfg is not None:
            buffer.check_model(model_cfg)
        c, side = x_real.shape[1], x_real.shape[2]
        k = buffer.spec.num_classes
        cfg.check_against(channels=c, side=side, num_classes=k, buffer_epochs=buffer.epochs)
        self.spec = buffer.spec
        buffer.check_compatible(data_cfg, self.spec)
        self.layout: Layout = layout(
            cfg.parameterisation,
            ipc=cfg.ipc,
            rank=cfg.rank,
            subspaces=cfg.subspaces,
            channels=c,
            side=side,
            num_classes=k,
            soft_labels=cfg.soft_labels,
            strict_budget=cfg.strict_budget,
        )
        self.generator = torch.Generator().manual_seed(cfg.distill_seed)
        last_expert = buffer.trajectory(0, self.device)[-1]
        self.synset: SynSet = build_synset(
            cfg.parameterisation,
            self.layout,
            rank=cfg.rank,
            x_real=x_real,
            y_real=y_real,
            num_classes=k,
            init=cfg.init,
            expert=last_expert,
            spec=self.spec,
            generator=self.generator,
        ).to(self.device)
        cls_idx = self.synset.class_index().to(self.device)
        logits = None
        if cfg.soft_labels:
            logits = init_soft_labels(
                self.spec, buffer.final_params(self.device), self.synset.images().detach(), cls_idx
            )
        self.labels = Labels(cls_idx, k, logits).to(self.device)
        self.syn_lr = torch.tensor(cfg.syn_lr_init, device=self.device, requires_grad=True)
        lr_f = (
            cfg.lr_img
            if (cfg.parameterisation == "pixels" or cfg.lr_factors is None)
            else cfg.lr_factors
        )
        self.opts: dict[str, torch.optim.Optimizer] = {
            "images": torch.optim.SGD(self.synset.trainable(), lr=lr_f, momentum=cfg.momentum_syn),
            "lr": torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=cfg.momentum_syn),
        }
        if self.labels.soft:
            self.opts["labels"] = torch.optim.SGD([self.labels.logits], lr=cfg.lr_y, momentum=0.9)
        self.iteration = 0
        self.log: list[dict[str, Any]] = []
        self.clamped = 0
        n = self.layout.images_per_class * k
        self.batch_syn = cfg.batch_syn or n
        self.full_config = {
            **content_identity(data_cfg, buffer, x_real, y_real),
            "distill": cfg.to_dict(),
            "spec": self.spec.to_dict(),
        }
        one_ckpt = tensors_bytes(self._state_tensors())
        one_syn = tensors_bytes(self.synset.tensors())
        outputs = {"checkpoint": (one_ckpt, 2), "synset": (one_syn, 1)}
        check_outputs_fit(self.out_dir, outputs, what="distillation run")
        self._lock = hold_folder(self.out_dir, param="out_dir", stage="distillation")
        try:
            self._resume()
        except BaseException:
            self._lock.release()  # a refused resume does not keep the folder
            raise

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, Tensor]:
        t = {f"synset.{k}": v for k, v in self.synset.tensors().items()}
        if self.labels.soft:
            t["labels.logits"] = self.labels.logits.detach()
        t["syn_lr"] = self.syn_lr.detach().reshape(1)
        t["rng"] = self.generator.get_state()
        t.update(_optimiser_state(self.opts))
        return t

    def checkpoint(self) -> Path:
        """Write ``checkpoint.safetensors/.json`` atomically (the resume point)."""
        path = save_artifact(
            self.out_dir / "checkpoint",
            self._state_tensors(),
            kind="distill_checkpoint",
            config=self.full_config,
            extra={"iteration": self.iteration, "log": self.log, "clamped": self.clamped},
        )
        self._write_log()
        return path

    def _resume(self) -> None:
        stem = self.out_dir / "checkpoint"
        clean_stale(stem)  # what a killed checkpoint write left behind
        if not stem.with_suffix(".json").is_file():
            return
        t, meta = load_artifact(
            stem,
            kind="distill_checkpoint",
            device=self.device,
            rebuild_hint=f"Delete {stem}.* to restart the run.",
        )
        if meta["config"] != self.full_config:
            diff = "; ".join(config_diff(meta["config"], self.full_config))
            raise ArtifactError(
                f"{stem}.json: checkpoint of a run with other parameters ({diff}; checkpoint's "
                f"value -> this run's); delete {self.out_dir} or choose another out_dir"
            )
        with torch.no_grad():
            for name, p in self.synset.named_parameters():
                p.copy_(t[f"synset.{name}"])
            if self.labels.soft:
                self.labels.logits.copy_(t["labels.logits"])
            self.syn_lr.copy_(t["syn_lr"][0])
        self.generator.set_state(t["rng"].cpu())
        _restore_optimiser_state(self.opts, t)
        self.iteration = int(meta["iteration"])
        self.log = list(meta["log"])
        self.clamped = int(meta.get("clamped", 0))

    def _write_log(self) -> None:
        if not self.log:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.log[0]))
        w.writeheader()
        w.writerows(self.log)
        atomic_write_text(self.out_dir / "log.csv", buf.getvalue())

    def _named_trainables(self):
        yield from (("synset." + n, p) for n, p in self.synset.named_parameters())
        if self.labels.soft:
            yield "labels.logits", self.labels.logits

    # ------------------------------------------------------------------- step
    def step(self) -> dict[str, Any]:
        """One distillation iteration; returns its log row.

        Raises:
            NumericalFault: non-finite loss or gradients, or syn_lr <= 0 after the update.
        """
        cfg, g = self.cfg, self.generator
        t0 = time.perf_counter()
        expert = int(torch.randint(self.buffer.num_experts, (1,), generator=g))
        start_epoch, upper = sample_start_epoch(cfg, self.iteration, g)
        traj = self.buffer.trajectory(expert, self.device)
        start, target = traj[start_epoch], traj[start_epoch + cfg.expert_epochs]
        x = self.synset.images(g)
        y = self.labels.targets()
        strategy = cfg.dsa_strategy if cfg.dsa else None
        plan = make_plan(x.shape[0], cfg.syn_steps, self.batch_syn, x.shape[-1], strategy, g)
        plan = plan_to(plan, self.device)  # one non-blocking copy instead of one per inner step
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        loss = matching_loss(self.spec, start, target, x, y, self.syn_lr, plan, cfg.grad_mode)
        if cfg.grad_mode == "unrolled":
            loss.backward()
        grads = [
            p.grad
            for o in self.opts.values()
            for grp in o.param_groups
            for p in grp["params"]
            if p.grad is not None
        ]
        if not math.isfinite(loss.item()) or any(not torch.isfinite(gr).all() for gr in grads):
            raise NumericalFault(
                f"iteration {self.iteration}: non-finite loss or gradient (loss={loss.detach().item()}); the last good "
                f"checkpoint is {self.out_dir / 'checkpoint.json'}. Lower lr_img/lr_factors or lr_lr."
            )
        for opt in self.opts.values():
            opt.step()
        with torch.no_grad():
            lr_now = self.syn_lr.item()
            if not math.isfinite(lr_now) or lr_now <= 0:
                raise NumericalFault(
                    f"iteration {self.iteration}: syn_lr became {lr_now} (must stay positive); the last good "
                    f"checkpoint is {self.out_dir / 'checkpoint.json'}. Lower lr_lr."
                )
            bad = [n for n, p in self._named_trainables() if not torch.isfinite(p).all()]
            if bad:
                raise NumericalFault(
                    f"iteration {self.iteration}: the update made {', '.join(bad)} non-finite; the last good "
                    f"checkpoint is {self.out_dir / 'checkpoint.json'}. Lower lr_img/lr_factors or lr_y."
                )
            if lr_now < cfg.min_syn_lr:
                self.syn_lr.fill_(cfg.min_syn_lr)
                self.clamped += 1
        row = {
            "iteration": self.iteration,
            "loss": loss.item(),
            "syn_lr": self.syn_lr.item(),
            "start_epoch": start_epoch,
            "upper": upper,
            "expert": expert,
            "seconds": time.perf_counter() - t0,
        }
        self.log.append(row)
        self.iteration += 1
        return row

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> Path:
        """Iterate until ``cfg.iterations``, checkpointing; write the synthetic set.

        Returns:
            Path of ``synset.json``.
        """
        if not (self.out_dir / "checkpoint.json").is_file():
            self.checkpoint()  # a fault in the first iterations still leaves a good state
        while self.iteration < self.cfg.iterations:
            row = self.step()
            if callback is not None:
                callback(row)
            if self.iteration % self.cfg.checkpoint_every == 0:
                self.checkpoint()
        self.checkpoint()
        return self.save()

    def save(self) -> Path:
        """Write ``synset.safetensors/.json``: tensors, labels, syn_lr, layout, storage."""
        st = self.synset.storage(self.labels, self.cfg.strict_budget)
        tensors = {f"synset.{k}": v for k, v in self.synset.tensors().items()}
        tensors["labels.class_index"] = self.labels.class_index
        if self.labels.soft:
            tensors["labels.logits"] = self.labels.logits.detach()
        tensors["syn_lr"] = self.syn_lr.detach().reshape(1)
        return save_artifact(
            self.out_dir / "synset",
            tensors,
            kind="synset",
            config=self.full_config,
            extra={
                "parameterisation": self.synset.kind,
                "layout": self.layout.__dict__,
                "storage": st.to_dict(),
                "syn_lr": self.syn_lr.item(),
                "iterations": self.iteration,
                "syn_lr_clamped": self.clamped,
                "num_classes": self.spec.num_classes,
                "identity": self.buffer.meta["identity"],
            },
        )


@dataclass
class LoadedSynSet:
    """A synthetic set read back from disk."""

    synset: SynSet
    labels: Labels
    syn_lr: float
    meta: dict[str, Any]

    def export(self) -> tuple[Tensor, Tensor]:
        """``(images [M, C, H, W], targets)`` for evaluation; targets int64 ``[M]`` or float32 ``[M, K]``."""
        with torch.no_grad():
            x, idx = self.synset.export()
            y = self.labels.targets()[idx.to(self.labels.class_index.device)]
        return x.detach(), y.detach()


def load_synset(folder: str | Path, device: str | torch.device = "cpu") -> LoadedSynSet:
    """Load ``folder/synset.*`` (checksummed safetensors + JSON).

    Raises:
        ArtifactError: missing, corrupted or of another schema.
    """
    folder = Path(folder)
    t, meta = load_artifact(
        folder / "synset",
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
    return LoadedSynSet(syn.to(device), labels.to(device), float(meta["syn_lr"]), meta)
