"""A distillation run's lifecycle: set-up, iterations, checkpoints, resume, log, save.

The numbers are made elsewhere: the start-epoch schedules and the plan of an
iteration in :mod:`lsslib.plan`, the matching loss and its gradient modes in
:mod:`lsslib.matching`, the synthetic set by its parameterisation's unit
(:mod:`lsslib.parameterisations`, built by :func:`lsslib.synset.build_synset`). This
module runs them: every ``checkpoint_every`` iterations it writes a checkpoint
(trainable tensors, optimiser momenta, generator state, iteration, log) and resumes
from it; it appends one row per iteration to ``log.csv``; a non-finite loss or
gradient, or a syn_lr that an update makes non-positive, stops the run with
:class:`NumericalFault` and leaves the last good checkpoint. Where each file lives is
:class:`lsslib.results.RunPaths`. Under ``grad_mode='sharded'`` every rank of the process
group (:mod:`lsslib.sharded`) runs the same iterations on the same set; rank 0 alone
holds the folder and writes, every rank reads the checkpoint to resume.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
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
from .config import DataConfig, DistillConfig, ModelConfig
from .experts import ExpertBuffer, content_identity
from .locking import check_output_folder, hold_folder
from .matching import matching_loss
from .parameterisations import Labels, Layout, SynSet
from .plan import make_plan, plan_to, sample_start_epoch
from .results import RunPaths
from .sharded import barrier, ensure_process_group, is_writer
from .synset import build_synset, init_soft_labels, save_synset

__all__ = ["NumericalFault", "Distiller"]


class NumericalFault(RuntimeError):
    """A non-finite loss/gradient or a non-positive syn_lr stopped the run."""


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
        out_dir: run folder (:class:`lsslib.results.RunPaths`: ``checkpoint.*``,
            ``synset.*``, ``log.csv``); held locked by this object (one writer per run
            folder, :mod:`lsslib.locking`).
        device: where the student runs.
        model_cfg: the stage's model parameters, checked against the buffer's network
            (``None``: take the buffer's network unchecked).
        layout: the run's :class:`~lsslib.parameterisations.Layout` when the caller has
            solved it already (:meth:`lsslib.config.DistillConfig.check_against`);
            ``None`` solves it here.
        normaliser: the data's :class:`lsslib.data.Normaliser`, saved with the set so
            that it can be shown without the dataset (``None``: not saved).
        class_names: class names in label order, saved with the set.

    The run's identity (what a checkpoint must match to be resumed) is its
    configuration, the buffer's identity digest and a digest of the real data
    (:func:`lsslib.experts.content_identity`), never a path.

    Raises:
        ValueError: ``out_dir`` is an existing file; invalid cross-field parameters
            (rank vs image side, budget, start epochs vs the buffer's epochs, batch_syn
            vs the set size); ``grad_mode='sharded'`` without a process group or a
            ``torchrun`` rendezvous, or with more ranks than images per inner step
            (:meth:`lsslib.config.DistillConfig.check_sharding`).
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
        *,
        layout: Layout | None = None,
        normaliser: Any = None,
        class_names: list[str] | None = None,
    ) -> None:
        self.cfg, self.data_cfg, self.buffer = cfg, data_cfg, buffer
        self.device = torch.device(device)
        self.out_dir = check_output_folder(out_dir, "out_dir")
        if model_cfg is not None:
            buffer.check_model(model_cfg)
        self.paths = RunPaths(self.out_dir)
        self.normaliser, self.class_names = normaliser, class_names
        c, side = x_real.shape[1], x_real.shape[2]
        k = buffer.spec.num_classes
        if layout is None:
            layout = cfg.check_against(
                channels=c, side=side, num_classes=k, buffer_epochs=buffer.epochs
            )
        self.spec = buffer.spec
        buffer.check_compatible(data_cfg, self.spec)
        self.layout: Layout = layout
        self._writer = True  # the process that writes the run's files
        if cfg.grad_mode == "sharded":
            cfg.check_sharding(set_size=layout.images_per_class * k)
            ensure_process_group(self.device)
            self._writer = is_writer()
        self.generator = torch.Generator().manual_seed(cfg.distill_seed)
        last_expert = buffer.trajectory(0, self.device)[-1]
        self.synset: SynSet = build_synset(
            cfg.parameterisation,
            self.layout,
            cfg.budget(channels=c, side=side, num_classes=k),
            x_real=x_real,
            y_real=y_real,
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
        lr_f = type(self.synset).learning_rate(cfg.lr_img, cfg.lr_factors)
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
        self._lock = None
        if self._writer:
            check_outputs_fit(self.out_dir, outputs, what="distillation run")
            self._lock = hold_folder(self.out_dir, param="out_dir", stage="distillation")
        try:
            self._resume()
        except BaseException:
            if self._lock is not None:
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
        """Write ``checkpoint.safetensors/.json`` atomically (the resume point; rank 0 only)."""
        if not self._writer:
            stem = self.paths.checkpoint
            return stem.with_name(stem.name + ".json")
        path = save_artifact(
            self.paths.checkpoint,
            self._state_tensors(),
            kind="distill_checkpoint",
            config=self.full_config,
            extra={"iteration": self.iteration, "log": self.log, "clamped": self.clamped},
        )
        self._write_log()
        return path

    def _resume(self) -> None:
        stem = self.paths.checkpoint
        if self._writer:
            clean_stale(stem)  # what a killed checkpoint write left behind
        barrier()  # every rank reads what rank 0 left
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
        self._write_log()  # drop rows appended after this checkpoint by the killed run

    def _write_log(self) -> None:
        """Rewrite ``log.csv`` atomically from the rows of the last checkpoint."""
        if not self.log or not self._writer:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.log[0]))
        w.writeheader()
        w.writerows(self.log)
        atomic_write_text(self.paths.log_csv, buf.getvalue())

    def _append_log(self, row: dict[str, Any]) -> None:
        """Append one iteration's row to ``log.csv`` so that a run can be followed live
        (rows past the last checkpoint are dropped again on resume)."""
        if not self._writer:
            return
        path = self.paths.log_csv
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

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
                f"checkpoint is {self.paths.checkpoint.with_suffix('.json')}. Lower lr_img/lr_factors or lr_lr."
            )
        for opt in self.opts.values():
            opt.step()
        with torch.no_grad():
            lr_now = self.syn_lr.item()
            if not math.isfinite(lr_now) or lr_now <= 0:
                raise NumericalFault(
                    f"iteration {self.iteration}: syn_lr became {lr_now} (must stay positive); the last good "
                    f"checkpoint is {self.paths.checkpoint.with_suffix('.json')}. Lower lr_lr."
                )
            bad = [n for n, p in self._named_trainables() if not torch.isfinite(p).all()]
            if bad:
                raise NumericalFault(
                    f"iteration {self.iteration}: the update made {', '.join(bad)} non-finite; the last good "
                    f"checkpoint is {self.paths.checkpoint.with_suffix('.json')}. Lower lr_img/lr_factors or lr_y."
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
        self._append_log(row)
        self.iteration += 1
        return row

    def run(
        self,
        callback: Callable[[dict[str, Any]], None] | None = None,
        *,
        snapshot_every: int | None = None,
    ) -> Path:
        """Iterate until ``cfg.iterations``, checkpointing; write the synthetic set.

        Args:
            callback: called with each iteration's log row.
            snapshot_every: also save the set as initialised (iteration 0, the
                starting-set control) and after every this many iterations
                (:meth:`lsslib.results.RunPaths.snapshot`), for choosing the best
                iteration on a validation split afterwards. An output option, not a
                distillation parameter: it changes no number of the run.

        Returns:
            The JSON path of the synthetic-set artifact.

        Raises:
            ValueError: ``snapshot_every`` < 1.
        """
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise ValueError(
                f"invalid parameter snapshot_every={snapshot_every!r}: allowed an int >= 1 or None"
            )
        if not self.paths.checkpoint.with_suffix(".json").is_file():
            self.checkpoint()  # a fault in the first iterations still leaves a good state
        if snapshot_every and self.iteration == 0:
            self.save(self.paths.snapshot(0))  # the set as initialised: the starting-set control
        while self.iteration < self.cfg.iterations:
            row = self.step()
            if callback is not None:
                callback(row)
            if (
                snapshot_every
                and self.iteration % snapshot_every == 0
                and self.iteration < self.cfg.iterations
            ):
                self.save(self.paths.snapshot(self.iteration))  # before the checkpoint
            if self.iteration % self.cfg.checkpoint_every == 0:
                self.checkpoint()
        self.checkpoint()
        return self.save()

    def save(self, stem: Path | None = None) -> Path:
        """Write ``synset.safetensors/.json`` (:func:`lsslib.synset.save_synset`): the
        set's tensors, labels, syn_lr, layout, storage, and its images in pixel space
        with the class names when the run was given the normaliser.

        Args:
            stem: where (default: the run's ``synset``; a snapshot's stem otherwise).

        Under ``grad_mode='sharded'`` rank 0 writes and every rank returns once it has.
        """
        stem = stem or self.paths.synset
        if not self._writer:
            barrier()
            return stem.with_name(stem.name + ".json")
        path = save_synset(
            stem,
            self.synset,
            self.labels,
            self.syn_lr,
            strict_budget=self.cfg.strict_budget,
            config=self.full_config,
            extra={
                "syn_lr": self.syn_lr.item(),
                "iterations": self.iteration,
                "syn_lr_clamped": self.clamped,
                "identity": self.buffer.meta["identity"],
            },
            normaliser=self.normaliser,
            class_names=self.class_names,
        )
        barrier()
        return path
