"""Expert trajectories: training, resumable storage, lazy loading (MTT ``buffer.py``).

Layout of a buffer folder::

    buffer.json                    index, written last: config, spec, experts, accuracies
    expert_000.safetensors/.json   trajectory float32 [T+1, P] (epochs 0..T), accuracies
    group_000/epoch_003.*          resume state of a group in training (removed when done)
    .lsslib.lock                   present while a process trains into the folder

(each ``NAME.safetensors`` is really ``NAME.<sha12>.safetensors``, named by the JSON:
see :mod:`lsslib.artifacts`).

Experts are trained ``experts_per_group`` at a time (:func:`lsslib.training.train_nets`);
expert ``i`` draws its initialisation, shuffles and DSA from its own generator
seeded ``expert_seed + i``, so the trajectories do not depend on the grouping.
After every epoch the group's parameters, momentum, generator states and
accuracies are saved atomically; a killed run restarts at the group and epoch
where it stopped and ends with the same tensors (bitwise on CPU).

One process trains into a folder at a time (:func:`lsslib.locking.hold_folder`);
the disk check counts the true peak, group states included
(:func:`buffer_peak_bytes`); a finished buffer is reused only after every expert
file's checksum has been verified (:meth:`ExpertBuffer.verify`).

Spread over ranks (``train_experts(..., world=...)`` or under an initialised
``torch.distributed`` process group): rank ``r`` of ``R`` trains the whole expert groups
``g`` (``g = g0 // experts_per_group``) with ``g % R == r`` and writes their expert files
itself; after a barrier rank 0 verifies every expert and writes ``buffer.json``. Only
whole groups move: on the CPU an expert's trajectory does not depend on which experts
share its group (measured: bitwise), but vectorised training (``vectorise=True``, the
default on CUDA) runs grouped convolutions whose float reassociation depends on the
group; whole groups are trained exactly as by one process, so the buffer is bitwise the
single process's on the same device type (the expert files' sha256, the
``buffer.json`` apart from its ``created_utc``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .artifacts import (
    ArtifactError,
    artifact_files,
    check_free_space,
    config_diff,
    load_artifact,
    read_metadata,
    save_artifact,
    sha256_file,
    tensor_digest,
)
from .config import BufferConfig, DataConfig, ModelConfig
from .data import RealData
from .locking import LockBusy, check_output_folder, folder_lock
from .models import ConvNetSpec, init_flat
from .sharded import all_gather_objects, spread_world
from .training import TrainState, accuracy, train_nets

__all__ = [
    "train_experts",
    "ExpertBuffer",
    "buffer_bytes",
    "buffer_peak_bytes",
    "BufferMismatch",
    "model_mismatches",
    "content_identity",
]


#: Test images used for the per-epoch accuracy curves of the experts (a fixed random subset).
CURVE_TEST_IMAGES = 2000


class BufferMismatch(ValueError):
    """The buffer was built for another model, dataset or normalisation."""


def buffer_bytes(spec: ConvNetSpec, cfg: BufferConfig) -> int:
    """Bytes on disk of a finished buffer: E x (T+1) x P float32 (plus small metadata)."""
    return cfg.num_experts * (cfg.train_epochs + 1) * spec.num_params * 4


#: Allowance for the JSON files and safetensors headers of a buffer (bytes).
_METADATA_BYTES = 1 << 20


def buffer_peak_bytes(spec: ConvNetSpec, cfg: BufferConfig, world_size: int = 1) -> int:
    """The most bytes a buffer folder holds at any moment of training.

    A group of ``n`` experts saves after epoch ``k`` a state of ``(k + 3) n P``
    float32 (parameters, momentum and the ``k + 1`` snapshots so far) and the ``n``
    generator states; the state of
    epoch ``k - 1`` is deleted only after it, so two states lie side by side
    (``(2T + 5) n P`` at the last epoch). After the last epoch the group's ``n``
    expert files are written while its last state still exists (``(2T + 4) n P``).
    Experts of earlier groups are on disk throughout. With ``world_size`` R > 1 ranks
    training groups at once (:func:`train_experts`'s spread), a bound: the finished
    buffer plus R groups at their worst.

    Returns:
        Bytes (float32 payload plus :data:`_METADATA_BYTES`).
    """
    per = spec.num_params * 4
    rng = torch.Generator().get_state().numel()  # bytes of one generator's state, per expert
    t = cfg.train_epochs
    if world_size > 1:
        n = min(cfg.experts_per_group, cfg.num_experts)
        worst = (2 * t + 5) * n * per + 2 * n * rng
        return buffer_bytes(spec, cfg) + world_size * worst + _METADATA_BYTES
    peak = done = 0
    for g0 in range(0, cfg.num_experts, cfg.experts_per_group):
        n = min(cfg.experts_per_group, cfg.num_experts - g0)
        peak = max(peak, done + (2 * t + 5) * n * per + 2 * n * rng)
        done += n * (t + 1) * per
    return max(peak, done) + _METADATA_BYTES


def _folder_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


#: ModelConfig field -> ConvNetSpec field.
_MODEL_FIELDS = {
    "net_depth": "depth",
    "net_width": "width",
    "net_norm": "norm",
    "net_pooling": "pooling",
}


def model_mismatches(spec: ConvNetSpec | Mapping[str, object], model_cfg: ModelConfig) -> list[str]:
    """The fields where ``model_cfg`` asks for another network than ``spec``.

    Args:
        spec: a buffer's (or synthetic set's) network, as a spec or its ``to_dict()``.
        model_cfg: the model parameters a stage was given.

    Returns:
        Lines ``"net_width: the buffer has 8, the parameters ask for 32"``; empty if equal.
    """
    have = spec.to_dict() if isinstance(spec, ConvNetSpec) else dict(spec)
    out = []
    for name, field in _MODEL_FIELDS.items():
        want = getattr(model_cfg, name)
        if have.get(field) != want:
            out.append(
                f"{name}: the buffer has {have.get(field)!r}, the parameters ask for {want!r}"
            )
    return out


def _without_paths(data_cfg: Mapping[str, object]) -> dict[str, object]:
    """A data configuration without its path (where the data was found is no part of
    what the data is; its content is fingerprinted instead)."""
    return {k: v for k, v in data_cfg.items() if k != "data_root"}


def content_identity(
    data_cfg: DataConfig, buffer: ExpertBuffer, x_real: Tensor, y_real: Tensor
) -> dict[str, object]:
    """What a distillation run is, apart from its own parameters: no paths.

    Returns:
        ``{"data": data configuration without data_root, "buffer_digest": the buffer's
        :meth:`ExpertBuffer.identity_digest`, "data_digest": sha256 of the real images
        and labels the run starts from}``.
    """
    return {
        "data": _without_paths(data_cfg.to_dict()),
        "buffer_digest": buffer.identity_digest(),
        "data_digest": tensor_digest(x_real, y_real),
    }


def _identity(data_cfg: DataConfig, spec: ConvNetSpec) -> dict[str, Any]:
    """What a buffer must agree on with the stage that reads it."""
    return {
        "dataset": data_cfg.dataset,
        "normalisation": data_cfg.normalisation,
        "zca_eps": data_cfg.zca_eps if data_cfg.normalisation == "zca" else None,
        "zca_input": data_cfg.zca_input if data_cfg.normalisation == "zca" else None,
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
    world: tuple[int, int] | None = None,
) -> ExpertBuffer:
    """Train (or resume, or reuse) a buffer of expert trajectories.

    Args:
        data: the training/test tensors on the training device.
        model_cfg: the ConvNet configuration.
        cfg: the buffer configuration (book/choices.md §7).
        folder: output folder.
        log: receives one line per finished expert group and the disk estimate.
        progress: called as ``progress(epochs_done, epochs_total)`` after every epoch.
        vectorise: see :func:`lsslib.training.train_nets`.
        world: ``(rank, world_size)`` to spread the expert groups over (module
            docstring); ``None`` (default): the default process group's, ``(0, 1)``
            without one (all groups here, as before). Every rank calls with the same
            arguments and sees the same ``folder``; each reports ``log`` and
            ``progress`` for its own groups.

    Returns:
        The finished :class:`ExpertBuffer` (on every rank).

    Raises:
        ValueError: ``folder`` (``buffer_dir``) is an existing file; ``world`` invalid or
            ``world_size`` above the number of expert groups (before any work).
        RuntimeError: spread over ranks, another rank failed (its error named).
        BufferMismatch: ``folder`` holds a buffer of another configuration.
        ArtifactError: ``folder`` holds a finished buffer with a damaged expert file.
        LockBusy: another process is training into ``folder``.
        DiskFull: not enough free disk space for the training's peak (checked before
            training; :func:`buffer_peak_bytes`).
    """
    folder = check_output_folder(folder, "buffer_dir")
    groups = math.ceil(cfg.num_experts / cfg.experts_per_group)
    rank, ws = spread_world(
        world,
        groups,
        f"the {groups} expert groups (num_experts={cfg.num_experts}, "
        f"experts_per_group={cfg.experts_per_group})",
    )
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
        if not _same_config(meta["config"], full_config):
            raise BufferMismatch(
                f"{folder} holds a buffer built with other parameters; choose another buffer_dir or "
                f"delete the folder. Differences: {_diff(meta['config'], full_config)}"
            )
        try:  # sweep the lock files a kill may have left; a live writer is left alone
            if rank == 0:
                with folder_lock(folder, param="buffer_dir", stage="expert buffer"):
                    pass
        except (LockBusy, OSError):  # a live writer, or a read-only folder: nothing to sweep
            pass
        buffer = ExpertBuffer(folder)
        buffer.verify()
        log(f"buffer complete in {folder} (checksums verified): reusing it")
        return buffer
    args = (data, model_cfg, cfg, folder, spec, ident, full_config, log, progress, vectorise)
    if ws == 1:
        with folder_lock(folder, param="buffer_dir", stage="expert buffer"):
            return _train(*args)
    return _train_spread(args, rank, ws)


def _agree(rank: int, exc: BaseException | None) -> None:
    """Every rank's outcome of a step: raise on every rank if one failed (its own error
    on that rank, a RuntimeError naming it on the others)."""
    errors = all_gather_objects(None if exc is None else f"{type(exc).__name__}: {exc}")
    if exc is not None:
        raise exc
    bad = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
    if bad:
        raise RuntimeError(f"expert training failed on another rank: {'; '.join(bad)}")


def _train_spread(args: tuple, rank: int, ws: int) -> ExpertBuffer:
    """Rank ``rank``'s groups, then (rank 0, all ranks done) the index; rank 0 holds the
    folder's lock throughout."""
    folder, cfg = args[3], args[2]
    with contextlib.ExitStack() as stack:
        exc: BaseException | None = None
        try:
            if rank == 0:
                stack.enter_context(folder_lock(folder, param="buffer_dir", stage="expert buffer"))
        except Exception as e:  # noqa: BLE001 - re-raised by _agree on every rank
            exc = e
        _agree(rank, exc)
        try:
            _train(*args, rank=rank, world_size=ws, write_index=False)
        except Exception as e:  # noqa: BLE001
            exc = e
        _agree(rank, exc)  # the barrier: every rank's experts are on disk
        try:
            if rank == 0:
                _write_index_verified(folder, cfg, args[4], args[5], args[6])
        except Exception as e:  # noqa: BLE001
            exc = e
        _agree(rank, exc)
    return ExpertBuffer(folder)


def _write_index_verified(folder: Path, cfg, spec, ident, full_config) -> None:
    """Check every expert file of the buffer (its config and sha256), then commit
    ``buffer.json`` with the accuracies their metadata recorded."""
    missing = [i for i in range(cfg.num_experts) if not _expert_ok(folder, i, full_config)]
    if missing:
        raise ArtifactError(
            f"buffer {folder}: experts {missing} missing or damaged after every rank "
            "finished; rerun the buffers stage (only those are trained again)"
        )
    accs = {
        i: read_metadata(folder / f"expert_{i:03d}", kind="expert")["accuracy"]
        for i in range(cfg.num_experts)
    }
    _write_index(folder, cfg, spec, ident, full_config, accs)


def _write_index(folder: Path, cfg, spec, ident, full_config, accs: dict) -> None:
    """Commit ``buffer.json``: the configuration, identity and every expert's accuracy."""
    save_artifact(
        folder / "buffer",
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


def _train(
    data,
    model_cfg,
    cfg,
    folder,
    spec,
    ident,
    full_config,
    log,
    progress,
    vectorise,
    *,
    rank: int = 0,
    world_size: int = 1,
    write_index: bool = True,
):
    final = buffer_bytes(spec, cfg)
    peak = buffer_peak_bytes(spec, cfg, world_size)
    have = _folder_bytes(folder)
    log(
        f"buffer estimate: {cfg.num_experts} experts x {cfg.train_epochs + 1} snapshots x "
        f"{spec.num_params} params = {final / 1e6:.1f} MB; peak during training "
        f"{peak / 1e6:.1f} MB (group states included), {have / 1e6:.1f} MB already there"
    )
    check_free_space(folder, peak - have, what="expert buffer (training peak)")
    dev = data.x_train.device
    x_curve, y_curve = data.test_subset(CURVE_TEST_IMAGES)
    total_epochs = cfg.num_experts * cfg.train_epochs
    strategy = cfg.dsa_strategy if cfg.dsa else None
    accs: dict[int, dict[str, list[float]]] = {}
    for g0 in range(0, cfg.num_experts, cfg.experts_per_group):
        if (g0 // cfg.experts_per_group) % world_size != rank:
            continue  # another rank's group
        ids = list(range(g0, min(g0 + cfg.experts_per_group, cfg.num_experts)))
        done = [_expert_ok(folder, i, full_config) for i in ids]
        gdir = folder / f"group_{g0:03d}"
        if all(done):
            for i in ids:
                accs[i] = read_metadata(folder / f"expert_{i:03d}", kind="expert")["accuracy"]
            shutil.rmtree(gdir, ignore_errors=True)  # a kill after the experts, before this
            continue
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
                    for f in artifact_files(old.with_suffix("")):
                        f.unlink(missing_ok=True)
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
    if not write_index:
        return None
    _write_index(folder, cfg, spec, ident, full_config, accs)
    return ExpertBuffer(folder)


def _comparable(config: Mapping) -> dict:
    """A buffer configuration without the data path (a respelled path is the same data)."""
    out = dict(config)
    if isinstance(out.get("data"), Mapping):
        out["data"] = _without_paths(out["data"])
    return out


def _same_config(a: Mapping, b: Mapping) -> bool:
    return _comparable(a) == _comparable(b)


def _diff(a: dict, b: dict) -> str:
    return "; ".join(config_diff(_comparable(a), _comparable(b))) or "none"


def _expert_ok(folder: Path, i: int, full_config: dict) -> bool:
    """Expert ``i`` is finished, of this configuration, and its tensor file is intact."""
    stem = folder / f"expert_{i:03d}"
    try:
        meta = read_metadata(stem, kind="expert")
    except ArtifactError:
        return False
    files = artifact_files(stem)
    if len(files) != 2 or sha256_file(files[1]) != meta.get("sha256"):
        return False
    return _same_config(meta["config"], full_config)


def _resume_group(
    gdir: Path, spec: ConvNetSpec, ids: list[int], cfg: BufferConfig, dev, full_config: dict
):
    states = sorted(gdir.glob("epoch_*.json"))
    for js in reversed(states):
        try:
            t, meta = load_artifact(js.with_suffix(""), kind="expert_group_state")
        except ArtifactError:
            continue
        if not _same_config(meta["config"], full_config) or meta["experts"] != ids:
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
        for key in ("dataset", "normalisation", "zca_eps", "zca_input", "spec"):
            if have.get(key) != want.get(key):
                raise BufferMismatch(
                    f"buffer {self.folder} was built for {key}={have.get(key)!r}, but this stage asks "
                    f"for {key}={want.get(key)!r}. {_rebuild(self.folder)} Or point buffer_dir at a "
                    "buffer of this configuration."
                )

    def check_model(self, model_cfg: ModelConfig) -> None:
        """Refuse model parameters that ask for another network than the buffer's.

        Raises:
            BufferMismatch: naming every differing field, the buffer's value and the
                requested one.
        """
        bad = model_mismatches(self.spec, model_cfg)
        if bad:
            raise BufferMismatch(
                f"buffer {self.folder} was trained for another network than these model "
                f"parameters ask for: {'; '.join(bad)}. Set the model parameters to the "
                f"buffer's, or point buffer_dir at a buffer of this network. {_rebuild(self.folder)}"
            )

    def verify(self) -> None:
        """Check every expert file against its recorded sha256 (streaming, no tensors built).

        Raises:
            ArtifactError: naming every missing or damaged expert and how to rebuild
                only those.
        """
        bad = []
        for i in range(self.num_experts):
            stem = self.folder / f"expert_{i:03d}"
            try:
                meta = read_metadata(stem, kind="expert")
            except ArtifactError as exc:
                bad.append(f"expert_{i:03d}: {exc}")
                continue
            files = artifact_files(stem)
            if len(files) != 2:
                bad.append(f"{stem.name}: tensor file {meta.get('tensor_file')} missing")
            elif sha256_file(files[1]) != meta.get("sha256"):
                bad.append(f"{files[1].name}: sha256 does not match (truncated or corrupted)")
        if bad:
            raise ArtifactError(
                f"buffer {self.folder} is damaged: {'; '.join(bad)}. Delete "
                f"{self.folder / 'buffer.json'} and the damaged expert_NNN.* files, then rerun the "
                "buffers stage: only those experts are trained again."
            )

    def identity_digest(self) -> str:
        """sha256 of what the buffer is: its configuration (without data paths), its
        network and data identity, and every expert file's recorded sha256.

        Independent of where the folder lies or how its path is spelled.
        """
        experts = []
        for i in range(self.num_experts):
            experts.append(read_metadata(self.folder / f"expert_{i:03d}", kind="expert")["sha256"])
        record = {
            "config": _comparable(self.meta["config"]),
            "identity": self.meta["identity"],
            "experts": experts,
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

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
        """Bytes of the expert tensor files."""
        return sum(p.stat().st_size for p in self.folder.glob("expert_*.safetensors"))

    def __repr__(self) -> str:
        return f"ExpertBuffer({self.folder}, experts={self.num_experts}, epochs={self.epochs}, P={self.spec.num_params})"
