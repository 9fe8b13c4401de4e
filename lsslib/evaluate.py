"""Meta-test evaluation (MTT ``evaluate_synset``; PAPER.md 2.8).

``num_eval`` fresh networks (network ``i`` seeded ``eval_seed + i``) are trained
on the given images for ``eval_epochs`` epochs with SGD (momentum 0.9, weight
decay 5e-4, lr x0.1 from half of the epochs on), DSA on every batch, soft
cross-entropy for soft labels; the result is the mean +- std (population, as
``np.std`` in MTT) of their test accuracy. The networks are trained together
(:func:`lsslib.training.train_nets`), which gives the same numbers as training
them one after another.

The same routine scores the baselines at equal storage: a class-balanced random
real subset (:func:`random_real_subset`) and the full training set.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .artifacts import check_free_space
from .config import DataConfig, EvalConfig, ModelConfig
from .data import RealData, class_balanced_indices
from .locking import FolderLock, hold_folder
from .models import ConvNetSpec, init_flat
from .training import TrainState, accuracy, train_nets

__all__ = [
    "EvalResult",
    "evaluate_images",
    "random_real_subset",
    "spec_for",
    "eval_lr",
    "check_set_matches",
    "claim_out_dir",
]

#: Bytes an evaluation folder needs at most (metrics JSON, tables, one PNG curve).
EVAL_OUTPUT_BYTES = 5_000_000


def claim_out_dir(out_dir: str | Path, *, need_bytes: int = EVAL_OUTPUT_BYTES) -> FolderLock:
    """Take the evaluation folder for this process, before any work (issue 11).

    Refuses an ``out_dir`` that is a file, a folder another process is writing
    into (one writer per folder, :mod:`lsslib.locking`) and a disk without
    ``need_bytes`` free. Keep the returned lock while writing.

    Raises:
        ValueError: ``out_dir`` is or lies under a file.
        LockBusy: another process holds the folder (its pid and command named).
        DiskFull: not enough free space.
    """
    lock = hold_folder(out_dir, param="out_dir", stage="evaluation")
    check_free_space(out_dir, need_bytes, what="evaluation outputs")
    return lock


@dataclass
class EvalResult:
    """Meta-test accuracy of ``num_eval`` networks.

    Attributes:
        accuracies: final test accuracy of each network (fractions in [0, 1]).
        mean, std: over the networks (std with ``ddof=0``).
        lr: learning rate used.
        epochs: training epochs.
        num_images: training images.
        curve_epochs / curve_mean: test accuracy (mean over networks) on at most
            ``curve_test`` test images after those epochs.
        seconds: wall time.
    """

    accuracies: list[float]
    mean: float
    std: float
    lr: float
    epochs: int
    num_images: int
    curve_epochs: list[int] = field(default_factory=list)
    curve_mean: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_images(
    spec: ConvNetSpec,
    x: Tensor,
    y: Tensor,
    data: RealData,
    cfg: EvalConfig,
    *,
    lr: float,
    curve_points: int = 5,
    curve_test: int = 1000,
    vectorise: bool | None = None,
    progress=None,
) -> EvalResult:
    """Train ``cfg.num_eval`` fresh networks on ``(x, y)`` and test them.

    Args:
        spec: the evaluation architecture.
        x: float32 ``[N, C, H, W]`` training images (on the device of ``data``).
        y: int64 ``[N]`` or float32 ``[N, K]`` targets.
        data: supplies the test split.
        cfg: the :class:`~lsslib.config.EvalConfig`.
        lr: learning rate (the learned syn_lr for synthetic sets).
        curve_points: test evaluations during training, for the curve figure.
        curve_test: test images used for the curve (the final score uses all).
        vectorise: see :func:`lsslib.training.train_nets`.
        progress: optional callable ``progress(epoch, total)``.

    Returns:
        An :class:`EvalResult`.
    """
    t0 = time.perf_counter()
    dev = x.device
    gens = [torch.Generator().manual_seed(cfg.eval_seed + i) for i in range(cfg.num_eval)]
    flats = torch.stack([init_flat(spec, g) for g in gens]).to(dev)
    state = TrainState(flats, torch.zeros_like(flats), gens, 0)
    marks = sorted(
        {max(1, round(cfg.eval_epochs * (i + 1) / curve_points)) for i in range(curve_points)}
    )
    curve_e, curve_m = [], []
    xt, yt = data.test_subset(curve_test)

    def on_epoch(st: TrainState, _acc: Tensor) -> None:
        if st.epoch in marks and st.epoch != cfg.eval_epochs:
            curve_e.append(st.epoch)
            curve_m.append(float(accuracy(spec, st.flats, xt, yt).mean()))
        if progress is not None:
            progress(st.epoch, cfg.eval_epochs)

    train_nets(
        spec,
        state,
        x,
        y,
        epochs=cfg.eval_epochs,
        lr=lr,
        momentum=cfg.mom_eval,
        weight_decay=cfg.l2_eval,
        batch_size=cfg.batch_eval,
        dsa_strategy=cfg.dsa_strategy if cfg.dsa else None,
        lr_decay_epoch=cfg.eval_epochs // 2,
        on_epoch=on_epoch,
        vectorise=vectorise,
    )
    accs = accuracy(spec, state.flats, data.x_test, data.y_test)
    curve_e.append(cfg.eval_epochs)
    curve_m.append(float(accs.mean()))
    return EvalResult(
        accuracies=accs.tolist(),
        mean=float(accs.mean()),
        std=float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0,
        lr=float(lr),
        epochs=cfg.eval_epochs,
        num_images=int(x.shape[0]),
        curve_epochs=curve_e,
        curve_mean=curve_m,
        seconds=time.perf_counter() - t0,
    )


def random_real_subset(data: RealData, ipc: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A class-balanced random real subset: ``ipc`` images per class.

    Returns:
        ``(x float32 [K*ipc, C, H, W], y int64 [K*ipc])`` on the data's device.
    """
    idx = class_balanced_indices(data.y_train.cpu(), ipc, seed=seed).to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]


def spec_for(model_cfg: ModelConfig, data: RealData) -> ConvNetSpec:
    """The evaluation network for ``data``'s shape (C, H, K)."""
    return ConvNetSpec.from_config(
        model_cfg, channels=data.channels, side=data.side, num_classes=data.num_classes
    )


def eval_lr(cfg: EvalConfig, syn_lr: float | None = None) -> float:
    """MTT's evaluation learning rate: ``lr_eval`` if set, else the set's learned
    syn_lr, else 0.01 (real images; PAPER.md 2.8)."""
    if cfg.lr_eval is not None:
        return cfg.lr_eval
    return syn_lr if syn_lr is not None else 0.01


def check_set_matches(
    meta: dict, spec: ConvNetSpec, data_cfg: DataConfig, *, where: str = "synset_dir"
) -> None:
    """Refuse to evaluate a set distilled for another network or dataset.

    Args:
        meta: the synthetic set's metadata (``identity.spec``, ``config.data.dataset``).

    Raises:
        ValueError: naming ``where``, what the set was distilled for and what is asked.
    """
    have_spec, have_data = meta["identity"]["spec"], meta["config"]["data"]["dataset"]
    if have_spec != spec.to_dict() or have_data != data_cfg.dataset:
        raise ValueError(
            f"invalid parameter {where}: the set was distilled for {have_spec} on "
            f"{have_data!r}, this evaluation asks for {spec.to_dict()} on {data_cfg.dataset!r}"
        )
