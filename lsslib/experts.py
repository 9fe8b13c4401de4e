"""Expert trajectories: training, resumable storage, lazy loading (MTT ``buffer.py``).

Layout of a buffer folder::

    buffer.json                    index, written last: config, spec, experts, accuracies
    expert_000.safetensors/.json   trajectory float32 [T+1, P] (epochs 0..T), accuracies
    group_000/epoch_003.*          resume state of a group in training (removed when done)

Experts are trained ``experts_per_group`` at a time (:func:`lsslib.training.train_nets`);
expert ``i`` draws its initialisation, shuffles and DSA from its own generator
seeded ``expert_seed + i``, so the trajectories do not depend on the grouping.
After every epoch the group's parameters, momentum, generator states and
accuracies are saved atomically; a killed run restarts at the group and epoch
where it stopped and ends with the same tensors (bitwise on CPU).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import ArtifactError, check_free_space, load_artifact, read_metadata, save_artifact
from .config import BufferConfig, DataConfig, ModelConfig
from .data import RealData
from .models import ConvNetSpec, init_flat
from .training import TrainState, accuracy, train_nets

__all__ = ["train_experts", "ExpertBuffer", "buffer_bytes", "BufferMismatch"]


#: Test images used for the per-epoch accuracy curves of the experts (a fixed random subset).
CURVE_TEST_IMAGES = 2000


class BufferMismatch(ValueError):
    """The buffer was built for another model, dataset or normalisation."""


def buffer_bytes(spec: ConvNetSpec, cfg: BufferConfig) -> int:
    """Bytes on disk of a finished buffer: E x (T+1) x P float32 (plus small metadata)."""
    return cfg.num_experts * (cfg.train_epochs + 1) * spec.num_params * 4


def _identity(data_cfg: DataConfig, spec: ConvNetSpec) -> dict[str, Any]:
    """What a buffer must agree on with the stage that reads it."""
    return {
        "dataset": data_cfg.dataset,
        "normalisation": data_cfg.normalisation,
        "zca_eps": data_cfg.zca_eps if data_cfg.normalisation == "zca" else None,
        "spec": spec.to_dict(),
    }


def _rebuild(folder: Path) -> str:
    return f"Rebuild it: delete {folder} and rerun the buffers stage (notebooks/01_buffers)."


def train_experts(
    data: RealData,
    model_cfg: ModelConfig,
    cfg: BufferConfig,
    folder: str | Path,
    *,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
    vectorise: bool | None = None,
) -> ExpertBuffer:
    """Train (or resume, or reuse) a buffer of expert trajectories.

    Args:
        data: the training/test tensors on the training device.
        model_cfg: the ConvNet configuration.
        cfg: the buffer configuration (PAPER.md 2.7).
        folder: output folder.
        log: receives one line per finished expert group and the disk estimate.
        progress: called as ``progress(epochs_done, epochs_total)`` after every epoch.
        vectorise: see :func:`lsslib.training.train_nets`.

    Returns:
        The finished :class:`ExpertBuffer`.

    Raises:
        BufferMismatch: ``folder`` holds a buffer of another configuration.
        OSError: not enough free disk space for the buffer (checked before training).
    """
    folder = Path(folder)
    spec = ConvNetSpec.from_config(
        model_cfg, channels=data.channels, side=data.side, num_classes=data.num_classes
    )
    ident = _identity(data.config, spec)
    full_config = {
        "data": data.config.to_dict(),
        "model": model_cfg.to_dict(),
        "buffers": cfg.to_dict(),
    }
    index = folder / "buffer"
    if index.with_suffix(".json").is_file():
        meta = read_metadata(index, kind="buffer", rebuild_hint=_rebuild(folder))
        if meta["config"] != full_config:
            raise BufferMismatch(
                f"{folder} holds a buffer built with other parameters; choose another buffer_dir or "
                f"delete the folder. Differences: {_diff(meta['config'], full_config)}"
            )
        log(f"buffer complete in {folder}: reusing it")
        return ExpertBuffer(folder)
    need = buffer_bytes(spec, cfg)
    log(
        f"buffer estimate: {cfg.num_experts} experts x {cfg.train_epochs + 1} snapshots x {spec.num_params} params = {need / 1e6:.1f} MB"
    )
    check_free_space(folder, need, what="expert buffer")
    dev = data.x_train.device
    x_curve, y_curve = data.test_subset(CURVE_TEST_IMAGES)
    total_epochs = cfg.num_experts * cfg.train_epochs
    strategy = cfg.dsa_strategy if cfg.dsa else None
    accs: dict[int, dict[str, list[float]]] = {}
    for g0 in range(0, cfg.num_experts, cfg.experts_per_group):
        ids = list(range(g0, min(g0 + cfg.experts_per_group, cfg.num_experts)))
        done = [_expert_ok(folder, i, full_config) for i in ids]
        if all(done):
            for i in ids:
                accs[i] = read_metadata(folder / f"expert_{i:03d}", kind="expert")["accuracy"]
            continue
        gdir = folder / f"group_{g0:03d}"
        state, snaps, acc = _resume_group(gdir, spec, ids, cfg, dev, full_config)
        if state is None:
            gens = [torch.Generator().manual_seed(cfg.expert_seed + i) for i in ids]
            flats = torch.stack([init_flat(spec, g) for g in gens]).to(dev)
            state = TrainState(flats, torch.zeros_like(flats), gens, 0)
            test0 = accuracy(spec, state.flats, x_curve, y_curve)
            snaps = [state.flats.detach().cpu().clone()]
            acc = {"train": [[float("nan")] * len(ids)], "test": [test0.tolist()]}

        def on_epoch(
            st: TrainState, train_acc: Tensor, gdir=gdir, snaps=snaps, acc=acc, ids=ids, g0=g0
        ) -> None:
            snaps.append(st.flats.detach().cpu().clone())
            acc["train"].append(train_acc.tolist())
            acc["test"].append(accuracy(spec, st.flats, x_curve, y_curve).tolist())
            save_artifact(
                gdir / f"epoch_{st.epoch:03d}",
                {
                    "flats": st.flats,
                    "momentum": st.momentum,
                    "rng": st.rng_states(),
                    "snapshots": torch.stack(snaps),
                },
                kind="expert_group_state",
                config=full_config,
                extra={"epoch": st.epoch, "experts": ids, "accuracy": acc},
            )
            for old in gdir.glob("epoch_*.json"):
                if old.stem != f"epoch_{st.epoch:03d}":
                    old.unlink(missing_ok=True)
                    old.with_suffix(".safetensors").unlink(missing_ok=True)
            if progress is not None:
                progress(g0 * cfg.train_epochs + len(ids) * st.epoch, total_epochs)

        train_nets(
            spec,
            state,
            data.x_train,
            data.y_train,
            epochs=cfg.train_epochs,
            lr=cfg.lr_teacher,
            momentum=cfg.mom_teacher,
            weight_decay=cfg.l2_teacher,
            batch_size=cfg.batch_train,
            dsa_strategy=strategy,
            on_epoch=on_epoch,
            vectorise=vectorise,
        )
        traj = torch.stack(snaps, 1)  # [E, T+1, P]
        for j, i in enumerate(ids):
            accs[i] = {"train": [a[j] for a in acc["train"]], "test": [a[j] for a in acc["test"]]}
            save_artifact(
                folder / f"expert_{i:03d}",
                {"trajectory": traj[j]},
                kind="expert",
                config=full_config,
                extra={"expert": i, "identity": ident, "accuracy": accs[i]},
            )
        shutil.rmtree(gdir, ignore_errors=True)
        last = [accs[i]["test"][-1] for i in ids]
        log(f"experts {ids[0]}-{ids[-1]} done: final test accuracy {sum(last) / len(last):.4f}")
    save_artifact(
        index,
        {},
        kind="buffer",
        config=full_config,
        extra={
            "identity": ident,
            "num_experts": cfg.num_experts,
            "epochs": cfg.train_epochs,
            "num_params": spec.num_params,
            "accuracy": {str(i): accs[i] for i in sorted(accs)},
        },
    )
    return ExpertBuffer(folder)


def _diff(a: dict, b: dict) -> str:
    out = []
    for block in sorted(set(a) | set(b)):
        x, y = a.get(block, {}), b.get(block, {})
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                out.append(f"{block}.{k}: {x.get(k)!r} -> {y.get(k)!r}")
    return "; ".join(out) or "none"


def _expert_ok(folder: Path, i: int, full_config: dict) -> bool:
    try:
        meta = read_metadata(folder / f"expert_{i:03d}", kind="expert")
    except ArtifactError:
        return False
    return meta["config"] == full_config


def _resume_group(
    gdir: Path, spec: ConvNetSpec, ids: list[int], cfg: BufferConfig, dev, full_config: dict
):
    states = sorted(gdir.glob("epoch_*.json"))
    for js in reversed(states):
        try:
            t, meta = load_artifact(js.with_suffix(""), kind="expert_group_state")
        except ArtifactError:
            continue
        if meta["config"] != full_config or meta["experts"] != ids:
            continue
        gens = [torch.Generator() for _ in ids]
        state = TrainState(t["flats"].to(dev), t["momentum"].to(dev), gens, int(meta["epoch"]))
        state.set_rng_states(t["rng"])
        snaps = list(t["snapshots"].unbind(0))
        return state, snaps, meta["accuracy"]
    return None, None, None


class ExpertBuffer:
    """A finished buffer, loaded lazily (one expert file at a time, small LRU cache).

    Args:
        folder: the buffer folder (with ``buffer.json``).

    Attributes:
        meta: the index metadata; ``num_experts``, ``epochs`` (T), ``spec``.

    Raises:
        ArtifactError: the index is missing or of another schema.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = read_metadata(
            self.folder / "buffer", kind="buffer", rebuild_hint=_rebuild(self.folder)
        )
        self.num_experts: int = int(self.meta["num_experts"])
        self.epochs: int = int(self.meta["epochs"])
        self.spec = ConvNetSpec(**self.meta["identity"]["spec"])
        self._load = lru_cache(maxsize=4)(self._load_uncached)

    def check_compatible(self, data_cfg: DataConfig, spec: ConvNetSpec) -> None:
        """Refuse a buffer built for another model, dataset or normalisation.

        Raises:
            BufferMismatch: naming the field, the buffer's value and the requested one.
        """
        want = _identity(data_cfg, spec)
        have = self.meta["identity"]
        for key in ("dataset", "normalisation", "zca_eps", "spec"):
            if have.get(key) != want.get(key):
                raise BufferMismatch(
                    f"buffer {self.folder} was built for {key}={have.get(key)!r}, but this stage asks "
                    f"for {key}={want.get(key)!r}. {_rebuild(self.folder)} Or point buffer_dir at a "
                    "buffer of this configuration."
                )

    def _load_uncached(self, i: int) -> Tensor:
        t, _ = load_artifact(
            self.folder / f"expert_{i:03d}", kind="expert", rebuild_hint=_rebuild(self.folder)
        )
        return t["trajectory"]

    def trajectory(self, i: int, device: str | torch.device = "cpu") -> Tensor:
        """float32 ``[T+1, P]``: expert ``i``'s parameters after epochs 0..T."""
        if not 0 <= i < self.num_experts:
            raise ValueError(f"invalid expert index {i}: allowed 0..{self.num_experts - 1}")
        return self._load(i).to(device)

    def final_params(self, device: str | torch.device = "cpu") -> Tensor:
        """float32 ``[E, P]``: every expert's last checkpoint (DATM's soft-label and init rule)."""
        return torch.stack([self.trajectory(i, device)[-1] for i in range(self.num_experts)])

    def accuracy_curves(self) -> dict[str, list[list[float]]]:
        """Per expert, train and test accuracy after epochs 0..T."""
        acc = self.meta["accuracy"]
        return {
            "train": [acc[str(i)]["train"] for i in range(self.num_experts)],
            "test": [acc[str(i)]["test"] for i in range(self.num_experts)],
        }

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("expert_*.safetensors"))

    def __repr__(self) -> str:
        return f"ExpertBuffer({self.folder}, experts={self.num_experts}, epochs={self.epochs}, P={self.spec.num_params})"
