"""Meta-test evaluation (MTT ``evaluate_synset``; book/choices.md §8).

``num_eval`` fresh networks (network ``i`` seeded ``eval_seed + i``) are trained
on the given images for ``eval_epochs`` epochs with SGD (momentum 0.9, weight
decay 5e-4, lr x0.1 from half of the epochs on), DSA on every batch, soft
cross-entropy for soft labels; the result is the mean +- std (population, as
``np.std`` in MTT) of their test accuracy. The networks are trained together
(:func:`lsslib.training.train_nets`), which gives the same numbers as training
them one after another.

The same routine scores the baselines at equal storage: a class-balanced random
real subset (:func:`random_real_subset`) and the full training set.

Spread over ranks (``evaluate_images(..., world=...)`` or under an initialised
``torch.distributed`` process group): rank ``r`` of ``R`` trains the networks ``i`` with
``i % R == r`` and the ranks all-gather each network's final, validation and curve
accuracies, so every rank returns the single process's :class:`EvalResult` (apart from
``seconds``). A network's training does not depend on which networks are trained beside
it on the CPU's loop over the nets (the default there; the tests check it bitwise), so
the spread result is bitwise the single process's; vectorised training
(``vectorise=True``, the default on CUDA) runs grouped convolutions over the nets trained
together, whose float reassociation depends on how many there are, so there it agrees
to float tolerance only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .artifacts import check_free_space
from .config import DataConfig, EvalConfig, ModelConfig
from .data import RealData, class_balanced_indices
from .locking import FolderLock, hold_folder
from .models import ConvNetSpec, flops_per_image, init_flat
from .sharded import all_gather_objects, spread_ids, spread_world
from .training import TrainState, accuracy, train_nets

__all__ = [
    "EvalResult",
    "evaluate_images",
    "random_real_subset",
    "spec_for",
    "eval_lr",
    "check_set_matches",
    "claim_out_dir",
    "curve_test_images",
]

_log = logging.getLogger(__name__)

#: Bytes an evaluation folder needs at most (metrics JSON, tables, one PNG curve).
EVAL_OUTPUT_BYTES = 5_000_000


def claim_out_dir(out_dir: str | Path, *, need_bytes: int = EVAL_OUTPUT_BYTES) -> FolderLock:
    """Take the evaluation folder for this process, before any work.

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
        curve_epochs / curve_mean: test accuracy (mean over networks) after those
            epochs, on a fixed random subset of the test split
            (:func:`curve_test_images` images) except for the last point (all).
        seconds: wall time.
        val_accuracies: each network's accuracy on the validation split, when one was
            given (:func:`lsslib.data.validation_split`), else ``None``.
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
    val_accuracies: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


#: Largest share of an evaluation's arithmetic that the progress curve may take.
CURVE_SHARE = 0.05


def curve_test_images(
    spec: ConvNetSpec,
    num_images: int,
    epochs: int,
    test_images: int,
    points: int,
    limit: int = 1000,
    share: float = CURVE_SHARE,
) -> int:
    """Test images per curve point, so that the curve costs at most ``share`` of an evaluation.

    Per network, training costs about ``3F - F1`` per image and epoch (F: forward
    FLOPs of one image, F1: its first convolution, which needs no input
    gradient), the final test ``F`` per test image, each of the ``points - 1``
    intermediate curve points ``F`` per curve image (the last point is the final
    test). The count is the largest ``n <= limit`` with
    ``(points - 1) n F <= share * (training + final test + curve)``.

    Example: 10 images, 300 epochs, 10,000 test images, 5 points, width 128:
    247 images per point (the fixed 1,000 used before cost about 18 %).

    Returns:
        An int in ``[0, limit]`` (0 when there are no intermediate points).
    """
    mid = max(points - 1, 0)
    if mid == 0 or limit <= 0:
        return 0
    f = flops_per_image(spec)
    f1 = 2 * spec.side * spec.side * spec.width * spec.channels * 9
    rest = num_images * epochs * (3 * f - f1) + test_images * f
    n = int(share * rest / ((1 - share) * mid * f))
    return max(0, min(limit, n))


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
    progress: Callable[[int, int], None] | bool | None = True,
    val: tuple[Tensor, Tensor] | None = None,
    world: tuple[int, int] | None = None,
) -> EvalResult:
    """Train ``cfg.num_eval`` fresh networks on ``(x, y)`` and test them.

    Args:
        spec: the evaluation architecture.
        x: float32 ``[N, C, H, W]`` training images (on the device of ``data``).
        y: int64 ``[N]`` or float32 ``[N, K]`` targets.
        data: supplies the test split.
        cfg: the :class:`~lsslib.config.EvalConfig`.
        lr: learning rate (the learned syn_lr for synthetic sets).
        curve_points: points of the accuracy curve (for the curve figure), the
            last being the final test; ``0`` or ``1`` turns the intermediate tests
            off (use it where no figure needs the curve).
        curve_test: at most this many test images per intermediate point; fewer
            where needed to keep the curve within 5 % of the evaluation's
            arithmetic (:func:`curve_test_images`). The final score uses all.
        vectorise: see :func:`lsslib.training.train_nets`.
        progress: ``True`` (default): a ``tqdm.auto`` bar over the epochs (a
            widget in notebooks); ``False``/``None``: silent; a callable
            ``progress(epoch, total)``: called after every epoch instead.
            Start and end are also logged (``lsslib.evaluate``, INFO).
        val: ``(x [V, C, H, W], y int64 [V])``, a validation split the trained networks
            are also tested on (:attr:`EvalResult.val_accuracies`).
        world: ``(rank, world_size)`` to spread the networks over (module docstring;
            every rank calls with the same arguments); ``None`` (default): the default
            process group's, ``(0, 1)`` without one (all networks here, as before).
            Only rank 0 shows the ``tqdm`` bar.

    Returns:
        An :class:`EvalResult` (the same on every rank).

    Raises:
        ValueError: ``curve_points`` or ``curve_test`` negative; ``world`` invalid or
            ``world_size`` above ``num_eval`` (all before any training).
    """
    if curve_points < 0:
        raise ValueError(f"invalid parameter curve_points={curve_points}: allowed an int >= 0")
    if curve_test < 0:
        raise ValueError(f"invalid parameter curve_test={curve_test}: allowed an int >= 0")
    rank, ws = spread_world(world, cfg.num_eval, f"num_eval={cfg.num_eval}")
    t0 = time.perf_counter()
    dev = x.device
    ids = spread_ids(cfg.num_eval, rank, ws)
    gens = [torch.Generator().manual_seed(cfg.eval_seed + i) for i in ids]
    flats = torch.stack([init_flat(spec, g) for g in gens]).to(dev)
    state = TrainState(flats, torch.zeros_like(flats), gens, 0)
    n_curve = curve_test_images(
        spec, len(x), cfg.eval_epochs, len(data.y_test), curve_points, limit=curve_test
    )
    marks = _curve_marks(cfg.eval_epochs, curve_points) if n_curve > 0 else set()
    curve_e, curve_acc = [], []
    xt, yt = data.test_subset(n_curve)
    _log.info(
        "evaluate_images: %d nets x %d epochs on %d images; curve %d points x %d test images",
        cfg.num_eval,
        cfg.eval_epochs,
        len(x),
        len(marks - {cfg.eval_epochs}),
        n_curve,
    )
    bar = None
    if progress is True and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.eval_epochs, desc="evaluate", unit="epoch", leave=False)

    def on_epoch(st: TrainState, _acc: Tensor) -> None:
        if st.epoch in marks and st.epoch != cfg.eval_epochs:
            curve_e.append(st.epoch)
            curve_acc.append(accuracy(spec, st.flats, xt, yt))
            if bar is not None:  # this rank's networks
                mean = float(curve_acc[-1].mean())
                bar.set_postfix_str(f"test acc {100 * mean:.1f} %", refresh=False)
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(st.epoch, cfg.eval_epochs)

    try:
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
    finally:
        if bar is not None:
            bar.close()
    accs, val_accs, curve_m = _final_tests(spec, state.flats, data, val, curve_acc, ids, cfg, ws)
    curve_e.append(cfg.eval_epochs)
    seconds = time.perf_counter() - t0
    _log.info("evaluate_images: mean accuracy %.4f in %.1f s", float(accs.mean()), seconds)
    return EvalResult(
        accuracies=accs.tolist(),
        mean=float(accs.mean()),
        std=float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0,
        lr=float(lr),
        epochs=cfg.eval_epochs,
        num_images=int(x.shape[0]),
        curve_epochs=curve_e,
        curve_mean=curve_m,
        seconds=seconds,
        val_accuracies=val_accs,
    )


def _curve_marks(epochs: int, points: int) -> set[int]:
    """The epochs after which the curve is measured (the last: ``epochs``)."""
    return {max(1, round(epochs * (i + 1) / points)) for i in range(points)}


def _final_tests(spec, flats, data, val, curve_acc, ids, cfg, ws: int):
    """Every network's test accuracies (float32 ``[num_eval]``), validation accuracies
    (a list, or None) and the curve's means (the last point: the final test)."""
    accs = accuracy(spec, flats, data.x_test, data.y_test)
    val_t = [accuracy(spec, flats, *val)] if val is not None else []
    accs, *rest = _all_networks(cfg.num_eval, ids, [accs, *val_t, *curve_acc], ws)
    val_accs = rest.pop(0).tolist() if val is not None else None
    return accs, val_accs, [float(t.mean()) for t in rest] + [float(accs.mean())]


def _all_networks(num_eval: int, ids: list[int], local: list[Tensor], ws: int) -> list[Tensor]:
    """Every network's values, in network order, from every rank's ``local`` float32
    ``[len(ids)]`` tensors (the same list on every rank); ``local`` itself with one
    process. Exact: the values travel as Python floats."""
    if ws == 1:
        return local
    full = [[0.0] * num_eval for _ in local]
    for their_ids, values in all_gather_objects((ids, [t.tolist() for t in local])):
        for row, vals in zip(full, values, strict=True):
            for i, v in zip(their_ids, vals, strict=True):
                row[i] = v
    dev = local[0].device
    return [torch.tensor(row, dtype=torch.float32, device=dev) for row in full]


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
    syn_lr, else 0.01 (real images; book/choices.md §8)."""
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
    check_set_data(meta, data_cfg, where=where)


#: The data parameters a set's images only mean something under (its pixel space).
SET_DATA_KEYS = ("normalisation", "zca_eps", "zca_input")


def check_set_data(meta: dict, data_cfg: DataConfig, *, where: str = "synset_dir") -> None:
    """Refuse to evaluate a set under another pixel space than it was distilled in: its
    images are ZCA-whitened (or normalised) values, and another normalisation would
    train the networks on other data and test them on it too, silently.

    Args:
        meta: the synthetic set's metadata (``config.data``).

    Raises:
        ValueError: naming the parameter, the set's value and the value asked for.
    """
    have = meta["config"]["data"]
    zca = data_cfg.normalisation == "zca"
    for key in SET_DATA_KEYS:
        if key != "normalisation" and not zca:
            continue
        if key in have and have[key] != getattr(data_cfg, key):
            raise ValueError(
                f"invalid parameter {key}={getattr(data_cfg, key)!r}: the set in {where} was "
                f"distilled with {key}={have[key]!r}; allowed {have[key]!r} (leave it None to "
                "take the set's)"
            )
