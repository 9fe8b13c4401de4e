"""The pipeline's stages as functions: what each notebook runs, in one call.

A stage notebook (``notebooks/0N_*.py``) is a thin shell: a ``parameters`` cell whose
values default to ``None`` (= take the profile's value), one call of a function here,
and the display of what it wrote. The defaults are written once, in the profiles of
:mod:`lsslib.profiles`; the paths and records are :mod:`lsslib.results`'; the numbers
are made by the library modules these functions call.

Stages that miss an upstream artifact make it in-process with the same calls as the
upstream stage (a distillation without a buffer trains the buffer from the profile's
buffer parameters) and say so; when the artifact exists with the same configuration,
nothing is recomputed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import archs, data, evaluate, experts, launch, parameters, plots, profiles, report, summary
from .artifacts import atomic_write_text
from .config import (
    STAGE_CONFIGS,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    check_choice,
    check_range,
)
from .distill import Distiller
from .models import ConvNetSpec
from .parameterisations import real_storage
from .results import (
    AblationPaths,
    EvalPaths,
    EvalRecord,
    Results,
    RunPaths,
    check_out_dir,
    check_path_kinds,
    read_json,
    read_log,
    run_facts,
)
from .synset import LoadedSynSet, init_soft_labels, load_synset

__all__ = [
    "stage_parameters",
    "buffers",
    "ensure_buffer",
    "distill",
    "evaluate_set",
    "ablation_plan",
    "find_run",
    "sweep",
    "ablation",
    "summarise",
    "DistillOutput",
]

#: What the ``baseline`` parameter of the evaluation stage may be.
EVAL_SUBJECTS = ("synset", *profiles.BASELINE_KINDS)


def stage_parameters(
    stage: str, namespace: Mapping[str, Any], profile: str | None = "cpu", run: str | None = None
) -> dict[str, Any]:
    """A stage's flat parameters: the profile's values, overridden by every
    ``namespace`` entry that is not ``None`` (a notebook's ``globals()``).

    Args:
        stage: ``buffers``, ``distill`` or ``evaluate``.
        namespace: the notebook's parameters (``None`` = the profile's value).
        profile: a bundled profile name or a YAML path; ``None``: the dataclasses'
            defaults (the workflow passes every parameter).
        run: the profile's run whose overrides apply (``None``: the ``main.lss`` run).

    Returns:
        ``{name: value}`` over the stage's dataclass fields, validated by building them.

    Raises:
        ValueError: a parameter papermill injected that the notebook does not declare
            (:func:`lsslib.parameters.refuse_unknown`); unknown profile, stage or run;
            an invalid value.
    """
    parameters.refuse_unknown(namespace)
    check_choice("stage", stage, tuple(STAGE_CONFIGS))
    if profile is not None:
        flat = _profile_flat(profiles.load_profile(profile), stage, run)
    else:
        flat = {}
        for cls in STAGE_CONFIGS[stage]:
            flat.update(cls().to_dict())
    for name in flat:
        value = namespace.get(name)
        if value is not None:
            flat[name] = value
    try:
        for cls in STAGE_CONFIGS[stage]:
            cls.from_params(flat)
    except ValueError as exc:
        raise ValueError(
            f"{exc} (papermill: -p NAME VALUE for a number or a string, "
            "-y 'NAME: [1, 2]' or -y 'NAME: {key: value}' for a list or a mapping)"
        ) from None
    return flat


def _profile_flat(prof: Mapping[str, Any], stage: str, run: str | None) -> dict[str, Any]:
    """Every parameter of ``stage`` for ``run`` of a loaded profile, defaults filled in."""
    if stage != "buffers" and run is None:
        run = (prof.get("main") or {}).get("lss")
    flat: dict[str, Any] = {}
    for cls in STAGE_CONFIGS[stage]:
        flat.update(cls().to_dict())
    flat.update(profiles.stage_parameters(prof, stage, None if stage == "buffers" else run))
    return flat


def ablation_plan(prof: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A profile's ablation as a sweep: the base run (``main.lss``), the swept values and,
    per value, the distill parameters in which that ablation run differs from the base
    besides the swept one (e.g. a smaller ``batch_syn``).

    Returns:
        ``{"values": [...], "base": {...}, "base_eval": {...}, "overrides": {value: {...}},
        "eval_overrides": {value: {...}}}`` (the arguments of :func:`sweep`).

    Raises:
        ValueError: the profile has no such ablation.
    """
    check_choice("ablation kind", kind, tuple(prof.get("ablations") or {}))
    key, base_run = SWEPT[kind], prof["main"]["lss"]
    base = _profile_flat(prof, "distill", base_run)
    base_eval = _profile_flat(prof, "evaluate", base_run)
    values, overrides, eval_overrides = [], {}, {}
    for run in prof["ablations"][kind]:
        d, e = _profile_flat(prof, "distill", run), _profile_flat(prof, "evaluate", run)
        values.append(d[key])
        extra = {k: v for k, v in d.items() if k != key and base.get(k) != v}
        if extra:
            overrides[d[key]] = extra
        extra_eval = {k: v for k, v in e.items() if base_eval.get(k) != v}
        if extra_eval:
            eval_overrides[d[key]] = extra_eval
    return {
        "values": values,
        "base": base,
        "base_eval": base_eval,
        "overrides": overrides,
        "eval_overrides": eval_overrides,
    }


def _per_value(table: Mapping[Any, Any] | None, v: Any) -> dict[str, Any]:
    """A value's entry of an overrides table (keys as the profile or papermill's -y
    give them: ``2`` or ``"2"``)."""
    table = dict(table or {})
    return dict(table.get(v) or table.get(str(v)) or {})


def _common(tables: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The settings every one of ``tables`` shares (e.g. an ablation run at IPC 10)."""
    if not tables:
        return {}
    first = dict(tables[0])
    return {k: v for k, v in first.items() if all(t.get(k, object()) == v for t in tables[1:])}


def merge_sweep(
    plan: Mapping[str, Any],
    values: Sequence[Any] | None = None,
    base: Mapping[str, Any] | None = None,
    base_eval: Mapping[str, Any] | None = None,
    overrides: Mapping[Any, Mapping[str, Any]] | None = None,
    eval_overrides: Mapping[Any, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A user's sweep merged onto the profile's (:func:`ablation_plan`), key by key,
    never replacing it: a partial ``base`` changes only the keys it names; a value of
    the profile keeps its per-value settings; a new value takes the settings all the
    profile's values share (e.g. IPC 10 in the paper profile); the user's per-value
    ``overrides`` come last.

    Returns:
        The arguments of :func:`sweep` (``values``, ``base``, ``base_eval``,
        ``overrides``, ``eval_overrides``).
    """
    vals = list(plan.get("values") or []) if values is None else values
    if not isinstance(vals, (list, tuple)):
        return {**plan, "values": vals}  # sweep refuses it by name
    shared = [
        _common([_per_value(plan.get(t), v) for v in plan.get("values") or []])
        for t in ("overrides", "eval_overrides")
    ]
    known = {str(v) for v in plan.get("values") or []}
    out: dict[str, Any] = {
        "values": list(vals),
        "base": {**(plan.get("base") or {}), **(base or {})},
        "base_eval": {**(plan.get("base_eval") or {}), **(base_eval or {})},
    }
    for i, (name, user) in enumerate(
        (("overrides", overrides), ("eval_overrides", eval_overrides))
    ):
        table = {}
        for v in vals:
            theirs = _per_value(plan.get(name), v) if str(v) in known else dict(shared[i])
            merged = {**theirs, **_per_value(user, v)}
            if merged:
                table[v] = merged
        out[name] = table
    return out


def sweep_changes(plan: Mapping[str, Any], merged: Mapping[str, Any]) -> list[str]:
    """Every setting of ``merged`` that differs from the profile's ``plan``, one line
    each (what a notebook prints before a sweep starts)."""
    lines = []
    if list(merged.get("values") or []) != list(plan.get("values") or []):
        lines.append(f"values: {plan.get('values')} -> {merged.get('values')}")
    for block in ("base", "base_eval"):
        old, new = plan.get(block) or {}, merged.get(block) or {}
        lines += [f"{block}.{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    for block in ("overrides", "eval_overrides"):
        for v in merged.get("values") or []:
            old, new = _per_value(plan.get(block), v), _per_value(merged.get(block), v)
            lines += [
                f"{block}[{v}].{k}: {old.get(k)!r} -> {new[k]!r}"
                for k in new
                if old.get(k) != new[k]
            ]
    return lines


def _bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=2.0)


def main_run(profile: str | None, run: str | None = None) -> str:
    """The run a stage works on: ``run`` if given, else the profile's main LSS run (its
    ``main.lss`` role; ``lss_ipc1`` in the paper profiles, ``lss`` in the CPU ones).

    Raises:
        ValueError: neither ``run`` nor a profile to take it from.
    """
    if run is not None:
        return run
    if profile is None:
        raise ValueError(
            "invalid parameter run=None with profile=None: allowed a run name, or the "
            "input and output folders given explicitly"
        )
    return profiles.load_profile(profile)["main"]["lss"]


def default_eval_dir(
    res: Results,
    subject: str,
    run: str | None,
    *,
    profile: str | None = None,
    real_ipc: int = 1,
    labels: str = "stored",
    arch: str = "convnet",
    iteration: int | None = None,
) -> Path:
    """Where an evaluation writes when no ``out_dir`` is given, derived from what it
    evaluates, so that no two subjects share a record: a set's own evaluation in
    ``runs/RUN/eval``, its variants in ``evals/RUN-labels-hard`` (and the like), a real
    baseline in ``baselines/NAME`` under the profile's name for it (the pipeline's
    folder) or ``random_real_ipcN`` / ``full``."""
    tags = [f"labels-{labels}"] if labels != "stored" else []
    tags += [f"arch-{arch}"] if arch != "convnet" else []
    tags += [f"it{iteration}"] if iteration is not None else []
    if subject == "synset":
        name = main_run(profile, run)
        return res.evaluation("-".join([name, *tags])).folder if tags else res.run(name).eval.folder
    prof = profiles.load_profile(profile) if profile is not None else {}
    for name, spec in (prof.get("baselines") or {}).items():
        spec = spec or {}
        if spec.get("kind") == subject and spec.get("real_ipc", real_ipc) == real_ipc and not tags:
            return res.baseline(name).folder
    name = subject if subject == "full" else f"{subject}_ipc{real_ipc}"
    return res.baseline("-".join([name, *tags])).folder


def _nearest(folder: Path, marker: str) -> str:
    """The existing artifact folder nearest in spelling to a missing ``folder``."""
    base = next((p for p in folder.parents if p.is_dir()), Path("."))
    near = [c.name for c in base.iterdir() if (c / marker).is_file()] if base.is_dir() else []
    close = difflib.get_close_matches(folder.name, near, n=1, cutoff=0.5)
    return (
        f"did you mean {str(base / close[0])!r}? "
        if close
        else f"(nearest existing folder: {base}) "
    )


def require_input(
    name: str,
    folder: str | Path,
    marker: str,
    *,
    default: str | Path | None,
    make_missing: bool | None,
) -> bool:
    """Whether the stage may make a missing input itself (the fresh-Colab path).

    An input folder that holds ``marker`` is used as it is. A missing one is made only
    when it is the profile's default location (``default``) or ``make_missing`` is
    true; an explicitly named folder that does not exist is never silently built.

    Returns:
        ``False`` if the input exists, ``True`` if the stage is to make it.

    Raises:
        ValueError: naming the parameter, the missing folder and the nearest existing
            one, when it is missing and may not be made.
    """
    folder = Path(folder)
    if (folder / marker).is_file():
        return False
    at_default = default is not None and folder.resolve() == Path(default).resolve()
    if make_missing or (make_missing is None and at_default):
        return True
    raise ValueError(
        f"invalid parameter {name}={str(folder)!r}: no {marker} there; "
        + _nearest(folder, marker)
        + "allowed an existing folder, or make_missing=True to make it here"
    )


def buffers(
    params: Mapping[str, Any],
    buffer_dir: str | Path,
    device: torch.device,
    real: data.RealData | None = None,
) -> experts.ExpertBuffer:
    """Stage 1: train (or resume, or reuse) the expert buffer and draw its figures.

    Writes ``expert_curves.png`` and ``experts.csv/.md`` beside the buffer.

    Args:
        params: flat buffer-stage parameters (:func:`stage_parameters`).
        buffer_dir: the buffer folder.
        device: the training device.
        real: the loaded data (``None``: loaded here).

    Raises:
        ValueError: an invalid parameter; a ``buffer_dir`` that is a file or lies inside
            another artifact (:func:`lsslib.results.check_out_dir`).
    """
    check_out_dir(buffer_dir, "buffers", name="buffer_dir")
    data_cfg, model_cfg, buffer_cfg = (cls.from_params(params) for cls in STAGE_CONFIGS["buffers"])
    real = real if real is not None else data.load_data(data_cfg, device)
    bar = _bar(buffer_cfg.num_experts * buffer_cfg.train_epochs, "expert epochs", "epoch")
    buffer = experts.train_experts(
        real,
        model_cfg,
        buffer_cfg,
        buffer_dir,
        progress=lambda done, _total: bar.update(done - bar.n),
        log=bar.write,
    )
    bar.close()
    out = Path(buffer_dir)
    curves = buffer.accuracy_curves()
    report.save_figure(plots.expert_curves(curves), out / "expert_curves.png")
    table = pd.DataFrame(
        {
            "expert": range(buffer.num_experts),
            "final train acc (%)": [100 * c[-1] for c in curves["train"]],
            "final test acc (%)": [100 * c[-1] for c in curves["test"]],
        }
    )
    report.write_table(table, out / "experts")
    return buffer


def ensure_buffer(
    buffer_dir: str | Path,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    profile: str | None,
    device: torch.device,
    real: data.RealData,
) -> experts.ExpertBuffer:
    """The buffer at ``buffer_dir``; trained here from ``profile``'s buffer parameters
    (with this stage's data and model) when it is missing."""
    index = Path(buffer_dir) / "buffer.json"
    if index.is_file():
        return experts.ExpertBuffer(buffer_dir)
    params = stage_parameters(
        "buffers", {**data_cfg.to_dict(), **model_cfg.to_dict()}, profile=profile
    )
    print(f"no expert buffer at {buffer_dir}: training it here ({profile!r} buffer parameters)")
    return buffers(params, buffer_dir, device, real)


@dataclass
class DistillOutput:
    """What the distillation stage leaves: the run (``None`` when its ranks ran under
    ``torchrun``, :mod:`lsslib.launch`), the saved set and its folder."""

    run: Distiller | None
    loaded: LoadedSynSet
    paths: RunPaths


def distill(
    params: Mapping[str, Any],
    buffer_dir: str | Path,
    out_dir: str | Path,
    device: torch.device,
    *,
    profile: str | None = "cpu",
    real: data.RealData | None = None,
    snapshot_every: int | None = None,
    make_missing: bool | None = None,
    world_size: int | None = None,
) -> DistillOutput:
    """Stage 2: one distillation run (resumed if a checkpoint exists) and its figures.

    Validates every parameter and solves the budget layout (once) before loading data;
    trains the buffer first if ``buffer_dir`` holds none. Writes ``synset.*``,
    ``log.csv``, ``curves.png``, ``grid.png`` and, for parameterisations with
    components, ``components.png`` into ``out_dir``; with ``snapshot_every``, also the
    set after every that many iterations (``snapshots/``, for the best iteration).

    A missing buffer is trained here only at the profile's default location or with
    ``make_missing=True`` (:func:`require_input`). With ``world_size`` N > 1
    (``grad_mode='sharded'``) and no process group, the run is N processes started
    through ``torchrun`` (:func:`lsslib.launch.torchrun`; rank 0 writes), and the
    figures are drawn here once they have finished; ``run`` is then ``None``.

    Raises:
        ValueError: an invalid parameter, ``snapshot_every`` < 1; an ``out_dir`` that is
            a file, the buffer folder, or inside another artifact; a ``buffer_dir`` that
            holds no buffer and may not be made; an invalid ``world_size``
            (:func:`_distill_ranks`).
        RuntimeError: a rank of a ``torchrun`` launch failed.
    """
    if snapshot_every is not None:
        check_range("snapshot_every", snapshot_every, lo=1, integer=True)
    data_cfg, model_cfg, cfg = (cls.from_params(params) for cls in STAGE_CONFIGS["distill"])
    shape = data_cfg.shape()
    if real is None and shape is not None:  # fail fast, before loading the data
        cfg.check_against(channels=shape[0], side=shape[1], num_classes=shape[2])
    ranks = _distill_ranks(cfg, world_size, device, real, shape)
    _check_distill_paths(buffer_dir, out_dir, profile, make_missing)
    if real is None:  # the Distiller checks them against data given in-process
        _check_against_buffer(buffer_dir, data_cfg, model_cfg, cfg)
    if ranks > 1:
        return _distill_torchrun(
            params, buffer_dir, out_dir, device, ranks, profile, snapshot_every
        )
    real = real if real is not None else data.load_data(data_cfg, device)
    # the layout of this run, solved once from the data it distils and carried along
    lay = cfg.check_against(channels=real.channels, side=real.side, num_classes=real.num_classes)
    buffer = ensure_buffer(buffer_dir, data_cfg, model_cfg, profile, device, real)
    run = Distiller(
        cfg,
        data_cfg,
        buffer,
        real.x_train,
        real.y_train,
        out_dir,
        device,
        model_cfg,
        layout=lay,
        normaliser=real.normaliser,
        class_names=real.classes,
    )
    st = run.synset.storage(run.labels, cfg.strict_budget)
    print(
        f"{run.synset.kind}: {run.layout.images_per_class} images/class, J={run.layout.bases}, "
        f"{st.used_floats} of {st.budget_floats} budget floats, {st.total_bytes} bytes stored; "
        + (f"resuming at iteration {run.iteration}" if run.iteration else "from iteration 0")
    )
    bar = _bar(cfg.iterations, "distillation", "it", initial=run.iteration)

    def show(row: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", syn_lr=f"{row['syn_lr']:.4g}")

    t0 = time.perf_counter()
    run.run(callback=show, snapshot_every=snapshot_every)
    bar.close()
    print(
        f"{time.perf_counter() - t0:.1f} s, syn_lr {run.syn_lr.item():.4g}, clamped {run.clamped}"
    )
    paths = RunPaths(Path(out_dir))
    report.save_figure(
        plots.distill_curves({run.synset.kind: read_log(paths)}), paths.figure("curves")
    )
    loaded = load_synset(paths.synset, device)
    draw_set(loaded, paths)
    return DistillOutput(run, loaded, paths)


def _distill_ranks(
    cfg: DistillConfig,
    world_size: int | None,
    device: torch.device,
    real: data.RealData | None,
    shape: tuple[int, int, int] | None,
) -> int:
    """The processes the stage starts for a run (1: it runs in this one), checked before
    any work.

    Raises:
        ValueError: ``world_size`` not an int >= 1, > 1 without ``grad_mode='sharded'``,
            more than ``batch_syn`` (or the set size, when the data shape is known)
            (:func:`lsslib.profiles.check_world_size`), more than the visible GPUs, or
            unlike the size of this process's own group; a ``device`` other than cpu or
            cuda; ``real`` given with ``world_size`` > 1 (every rank loads the data).
    """
    set_size = None
    if world_size not in (None, 1) and cfg.batch_syn is None and shape is not None:
        lay = cfg.check_against(channels=shape[0], side=shape[1], num_classes=shape[2])
        set_size = lay.images_per_class * shape[2]
    ranks = profiles.check_world_size(cfg, world_size, set_size=set_size)
    group = launch.in_process_group()
    if group is not None:  # this process is a rank already: the run is here
        if world_size is not None and ranks != group:
            raise ValueError(
                f"invalid parameter world_size={world_size}: allowed {group}, the size of "
                "this process's torch.distributed group, or None"
            )
        return 1
    if ranks == 1 and cfg.grad_mode == "sharded":
        raise ValueError(
            f"invalid parameter world_size={world_size}: allowed an int >= 2 with "
            "grad_mode='sharded' outside torchrun (the stage then starts the ranks), or "
            "grad_mode='checkpointed' for the same exact gradient in one process"
        )
    launch.check_devices(ranks, device)
    if ranks > 1 and real is not None:
        raise ValueError(
            f"invalid parameter real=<{len(real.x_train)} images>: allowed None with "
            f"world_size={ranks} (every rank loads the data from the data parameters)"
        )
    return ranks


def _distill_torchrun(
    params: Mapping[str, Any],
    buffer_dir: str | Path,
    out_dir: str | Path,
    device: torch.device,
    ranks: int,
    profile: str | None,
    snapshot_every: int | None,
) -> DistillOutput:
    """:func:`distill` over ``ranks`` processes: a missing buffer trained here first, the
    ranks run by :func:`lsslib.launch.torchrun`, then what rank 0 wrote read back and
    drawn as after a single-process run."""
    data_cfg, model_cfg = DataConfig.from_params(params), ModelConfig.from_params(params)
    if not (Path(buffer_dir) / "buffer.json").is_file():
        real = data.load_data(data_cfg, device)
        ensure_buffer(buffer_dir, data_cfg, model_cfg, profile, device, real)
        del real
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # rank 0 shares this process's GPU
    print(f"distillation over {ranks} processes (torchrun, grad_mode='sharded', rank 0 writes)")
    t0 = time.perf_counter()
    launch.torchrun(params, buffer_dir, out_dir, device, ranks, snapshot_every=snapshot_every)
    paths = RunPaths(Path(out_dir))
    loaded = load_synset(paths.synset, device)
    print(f"{time.perf_counter() - t0:.1f} s over {ranks} processes, syn_lr {loaded.syn_lr:.4g}")
    report.save_figure(
        plots.distill_curves({loaded.synset.kind: read_log(paths)}), paths.figure("curves")
    )
    draw_set(loaded, paths)
    return DistillOutput(None, loaded, paths)


def _check_distill_paths(
    buffer_dir: str | Path, out_dir: str | Path, profile: str | None, make_missing: bool | None
) -> None:
    """The distillation stage's folders, refused before any work when they conflict."""
    if Path(out_dir).resolve() == Path(buffer_dir).resolve():
        raise ValueError(
            f"invalid parameter out_dir={str(out_dir)!r}: it is the buffer folder; allowed a "
            "folder of its own for the run"
        )
    check_out_dir(out_dir, "distill")
    check_path_kinds("buffer_dir", buffer_dir, "buffers")
    default = Results.of(profile).buffers if profile is not None else None
    require_input(
        "buffer_dir", buffer_dir, "buffer.json", default=default, make_missing=make_missing
    )


def _check_against_buffer(
    buffer_dir: str | Path, data_cfg: DataConfig, model_cfg: ModelConfig, cfg: DistillConfig
) -> None:
    """Before the data is loaded: the network, the data's pixel space and the start and
    expert epochs against an existing buffer's record (its JSON index only).

    Raises:
        ValueError: :class:`lsslib.experts.BufferMismatch` naming the buffer's value and
            the one asked for; ``max_start_epoch`` beyond the buffer's epochs.
    """
    if not (Path(buffer_dir) / "buffer.json").is_file():
        return
    buffer = experts.ExpertBuffer(buffer_dir)
    buffer.check_model(model_cfg)
    _check_subset(buffer, data_cfg)
    shape = data_cfg.shape()
    if shape is None:
        return
    c, side, k = shape
    spec = ConvNetSpec.from_config(model_cfg, channels=c, side=side, num_classes=k)
    cfg.check_against(channels=c, side=side, num_classes=k, buffer_epochs=buffer.epochs)
    buffer.check_compatible(data_cfg, spec)


#: The training-subset parameters a distillation must share with its buffer: the real
#: images it starts from and holds out for validation are drawn from that subset.
SUBSET_KEYS = ("train_per_class", "subset_seed")


def _check_subset(buffer: experts.ExpertBuffer, data_cfg: DataConfig) -> None:
    """Refuse a training subset other than the one the buffer's experts trained on
    (the buffer's value is not taken silently: it would change which real images the
    set starts from).

    Raises:
        ValueError: naming the parameter, the value asked for and the buffer's.
    """
    have = (buffer.meta.get("config") or {}).get("data") or {}
    for key in SUBSET_KEYS:
        if key in have and have[key] != getattr(data_cfg, key):
            raise ValueError(
                f"invalid parameter {key}={getattr(data_cfg, key)!r}: the buffer in "
                f"{buffer.folder} was trained with {key}={have[key]!r}; allowed {have[key]!r}, "
                "or a buffer trained on this subset"
            )


def draw_set(loaded: LoadedSynSet, paths: RunPaths) -> None:
    """A set's image grid (``grid.png``) and its parameterisation's figure (``components.png``)."""
    px = loaded.images01()
    n = loaded.per_class
    names = loaded.class_names
    report.save_figure(
        plots.image_grid(px, names, n, title=f"{loaded.kind}, {n} images/class"),
        paths.figure("grid"),
    )
    comp = loaded.synset.components(0)
    if comp is not None:
        report.save_figure(
            plots.parameterisation_figure(comp, px[:n], names[0]), paths.figure("components")
        )


def evaluate_set(
    params: Mapping[str, Any],
    subject: str,
    out_dir: str | Path,
    device: torch.device,
    *,
    synset_dir: str | Path | None = None,
    real_ipc: int = 1,
    buffer_dir: str | Path | None = None,
    profile: str | None = "cpu",
    real: data.RealData | None = None,
    labels: str = "stored",
    arch: str = "convnet",
    cross_arch: bool = False,
    iteration: int | None = None,
    val_per_class: int | None = None,
    real_seed: int | None = None,
    make_missing: bool | None = None,
) -> EvalRecord:
    """Stage 3: meta-test accuracy of a synthetic set or of a baseline (book/choices.md §8).

    Beyond MTT's protocol, the study evaluates variants, each recorded in
    the record's ``extra["variant"]``: the labels a set is trained with, another
    architecture, an earlier iteration's snapshot, and the accuracy on a validation
    split that no stage trains on.

    Args:
        params: flat evaluate-stage parameters (data, model, eval). With
            ``cross_arch``, the model parameters describe the evaluated ConvNet, which
            may differ from the one the set was distilled with.
        subject: ``synset`` (the set in ``synset_dir``), ``random_real`` (``real_ipc``
            random real images per class) or ``full`` (the whole training (sub)set).
        out_dir: writes the evaluation record (:class:`~lsslib.results.EvalRecord`),
            ``accuracy.csv/.md`` and ``eval_curve.png``.
        buffer_dir: the expert buffer: for a missing synthetic set, the one its
            distillation uses; for ``labels="expert"``, the experts that label.
        labels: ``stored`` (the set's own: soft or hard), ``hard`` (a synthetic set's
            soft labels replaced by their argmax: what the images carry without the
            labels; no label floats stored) or ``expert`` (random real only: soft labels
            given by the experts with DATM's rule,
            :func:`lsslib.synset.init_soft_labels`, counted in the storage).
        arch: ``convnet`` (the model parameters' ConvNet) or a network of
            :data:`lsslib.archs.ARCHS` (ResNet-18 BN, VGG-11 BN, AlexNet).
        cross_arch: allow an evaluation network other than the distillation's.
        iteration: a synthetic set's snapshot after this many iterations
            (``snapshots/`` of the run) instead of its final set; 0 is the set as
            initialised, before any distillation (the starting-set control).
        val_per_class: also test the trained networks on this many validation images
            per class (:func:`lsslib.data.validation_split`).
        real_seed: random real only: seed of the image draw (``None`` = ``eval_seed``);
            the study's distillation seeds use it.
        make_missing: distil a missing synthetic set here even when ``synset_dir`` is
            not the profile's main run folder (``None``: only there).

    Raises:
        ValueError: any bad argument, before any work: ``subject``, ``real_ipc``,
            ``labels`` (``expert`` only for random real, ``hard`` only for a synthetic
            set), ``arch``, ``iteration`` (only for a synthetic set), ``val_per_class``,
            ``real_seed``; a set distilled for another network (without ``cross_arch``)
            or dataset; an ``out_dir`` that is a file, inside another artifact, or holding
            the record of another subject; a ``synset_dir`` without a set that may not be
            distilled here.
    """
    check_choice("baseline", subject, EVAL_SUBJECTS)
    check_range("real_ipc", real_ipc, lo=1, integer=True)
    check_choice("labels", labels, LABEL_MODES)
    if labels == "expert" and subject != "random_real":
        raise ValueError(
            f"invalid parameter labels='expert' with baseline={subject!r}: allowed only with "
            "baseline='random_real' (a synthetic set has labels of its own)"
        )
    if labels == "hard" and subject != "synset":
        raise ValueError(
            f"invalid parameter labels='hard' with baseline={subject!r}: allowed only with "
            "baseline='synset' (real baselines have hard labels already)"
        )
    check_choice("arch", arch, ("convnet", *archs.ARCHS))
    if not isinstance(cross_arch, bool):
        raise ValueError(f"invalid parameter cross_arch={cross_arch!r}: allowed True or False")
    if arch != "convnet" and not cross_arch:
        raise ValueError(
            f"invalid parameter arch={arch!r} with cross_arch=False: allowed only with "
            "cross_arch=True (a set is distilled with a ConvNet)"
        )
    check_range("iteration", iteration, lo=0, integer=True, allow_none=True)
    if iteration is not None and subject != "synset":
        raise ValueError(
            f"invalid parameter iteration={iteration} with baseline={subject!r}: allowed only "
            "with baseline='synset'"
        )
    check_range("val_per_class", val_per_class, lo=1, integer=True, allow_none=True)
    check_range("real_seed", real_seed, lo=0, integer=True, allow_none=True)
    data_cfg, model_cfg, eval_cfg = (cls.from_params(params) for cls in STAGE_CONFIGS["evaluate"])
    if val_per_class is not None and data_cfg.train_per_class is None:
        data.validation_split(data_cfg, val_per_class, None)  # raises the explanation
    variant = {
        "labels": labels,
        "arch": arch,
        "cross_arch": cross_arch,
        "iteration": iteration,
        "val_per_class": val_per_class,
        "real_seed": real_seed,
    }
    _check_eval_paths(subject, out_dir, synset_dir, iteration, profile, make_missing)
    if subject == "synset" and RunPaths(Path(synset_dir)).synset_json.is_file():
        meta = read_json(RunPaths(Path(synset_dir)).synset_json)  # before the data is loaded
        evaluate.check_set_data(meta, data_cfg, where=f"synset_dir={str(synset_dir)!r}")
    with evaluate.claim_out_dir(out_dir):  # one writer, disk checked, before any work
        return _evaluate_set(
            data_cfg,
            model_cfg,
            eval_cfg,
            subject,
            out_dir,
            device,
            synset_dir=synset_dir,
            real_ipc=real_ipc,
            buffer_dir=buffer_dir,
            profile=profile,
            real=real,
            variant=variant,
        )


def _check_eval_paths(
    subject: str,
    out_dir: str | Path,
    synset_dir: str | Path | None,
    iteration: int | None,
    profile: str | None,
    make_missing: bool | None,
) -> None:
    """The evaluation stage's folders, refused before any work when they conflict."""
    if subject != "synset":
        check_out_dir(out_dir, "evaluate", baseline=subject)
        return
    if not synset_dir:
        raise ValueError(
            "invalid parameter synset_dir=None with baseline='synset': allowed a run folder"
        )
    check_out_dir(out_dir, "evaluate", subject=synset_dir, baseline="synset")
    check_path_kinds("synset_dir", synset_dir, "distill")
    if iteration is None:
        res = Results.of(profile) if profile is not None else None
        default = res.run(main_run(profile)).folder if res is not None else None
        require_input(
            "synset_dir", synset_dir, "synset.json", default=default, make_missing=make_missing
        )


#: What a set is trained with in an evaluation (:func:`evaluate_set`'s ``labels``).
LABEL_MODES = ("stored", "hard", "expert")


def _evaluate_set(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    eval_cfg: Any,
    subject: str,
    out_dir: str | Path,
    device: torch.device,
    *,
    synset_dir: str | Path | None,
    real_ipc: int,
    buffer_dir: str | Path | None,
    profile: str | None,
    real: data.RealData | None,
    variant: dict[str, Any],
) -> EvalRecord:
    real = real if real is not None else data.load_data(data_cfg, device)
    spec = evaluate.spec_for(model_cfg, real)
    source = ""
    extra: dict[str, Any] = {"variant": variant}
    if subject == "synset":
        run_paths = RunPaths(Path(synset_dir or ""))
        if variant["iteration"] is not None:
            stem = run_paths.snapshot(variant["iteration"])
            if not stem.with_suffix(".json").is_file():
                raise FileNotFoundError(
                    f"{stem}.json is missing: distil {run_paths.folder} with "
                    f"snapshot_every dividing {variant['iteration']} first"
                )
        elif not run_paths.synset_json.is_file():
            print(f"no synthetic set in {synset_dir}: distilling it here ({profile!r} run)")
            dparams = stage_parameters(
                "distill", {**data_cfg.to_dict(), **model_cfg.to_dict()}, profile
            )
            distill(
                dparams,
                buffer_dir or Results.of(profile or "cpu").buffers,
                run_paths.folder,
                device,
                profile=profile,
                real=real,
            )
        stem = (
            run_paths.snapshot(variant["iteration"])
            if variant["iteration"] is not None
            else run_paths.synset
        )
        loaded = load_synset(stem, device)
        if variant["cross_arch"]:
            evaluate.check_set_matches(
                loaded.meta,
                evaluate.ConvNetSpec(**loaded.meta["identity"]["spec"]),
                data_cfg,
                where=f"synset_dir={str(synset_dir)!r}",
            )
        else:
            evaluate.check_set_matches(
                loaded.meta, spec, data_cfg, where=f"synset_dir={str(synset_dir)!r}"
            )
        x, y = loaded.export()
        lr = evaluate.eval_lr(eval_cfg, loaded.syn_lr)
        storage = dict(loaded.meta["storage"])
        label = f"{loaded.kind} ({synset_dir})"
        extra["iteration"] = int(loaded.meta["iterations"])
        if variant["labels"] == "hard" and y.ndim == 2:
            y = y.argmax(1)  # what the images carry: the soft labels' argmax, nothing stored
            storage = _without_labels(storage)
            label += ", hard labels (argmax)"
        source = str(synset_dir)
    elif subject == "random_real":
        seed = eval_cfg.eval_seed if variant["real_seed"] is None else variant["real_seed"]
        x, y = evaluate.random_real_subset(real, real_ipc, seed=seed)
        lr = evaluate.eval_lr(eval_cfg)
        st = real_storage(len(x), real.num_classes, real.channels, real.side)
        label = f"random real, {real_ipc} per class"
        if variant["labels"] == "expert":
            buffer = experts.ExpertBuffer(buffer_dir or Results.of(profile or "cpu").buffers)
            logits = init_soft_labels(buffer.spec, buffer.final_params(device), x, y)
            y = torch.softmax(logits, dim=-1)
            st = dataclasses.replace(st, label_floats=int(y.numel()))
            label += ", expert soft labels"
        storage = st.to_dict()
    else:
        x, y = real.x_train, real.y_train
        lr = evaluate.eval_lr(eval_cfg)
        storage = real_storage(len(x), real.num_classes, real.channels, real.side).to_dict()
        label = f"full training set ({x.shape[0]} images)"
    val = None
    if variant["val_per_class"] is not None:
        val = data.validation_split(data_cfg, variant["val_per_class"], real.normaliser, device)
    net = spec.describe() if variant["arch"] == "convnet" else variant["arch"]
    if variant["arch"] != "convnet" or variant["cross_arch"]:
        label += f", on {net}"
    print(
        f"{label}: {x.shape[0]} training images, lr {lr:.4g}, {eval_cfg.num_eval} nets x "
        f"{eval_cfg.eval_epochs} epochs"
        + (f", validation on {len(val[1])} held-out training images" if val else "")
    )
    if variant["arch"] == "convnet":
        bar = _bar(eval_cfg.eval_epochs, "eval epochs", "epoch")
        result = evaluate.evaluate_images(
            spec,
            x,
            y,
            real,
            eval_cfg,
            lr=lr,
            progress=lambda done, _t: bar.update(done - bar.n),
            val=val,
        )
    else:
        bar = _bar(eval_cfg.eval_epochs * eval_cfg.num_eval, "eval epochs (all nets)", "epoch")
        mres = archs.evaluate_modules(
            variant["arch"],
            x,
            y,
            real.x_test,
            real.y_test,
            num_classes=real.num_classes,
            num_eval=eval_cfg.num_eval,
            epochs=eval_cfg.eval_epochs,
            lr=lr,
            momentum=eval_cfg.mom_eval,
            weight_decay=eval_cfg.l2_eval,
            batch_size=eval_cfg.batch_eval,
            dsa_strategy=eval_cfg.dsa_strategy if eval_cfg.dsa else None,
            seed=eval_cfg.eval_seed,
            val=val,
            progress=lambda done, _t: bar.update(done - bar.n),
        )
        result = evaluate.EvalResult(
            accuracies=list(mres.accuracies),
            mean=mres.mean,
            std=mres.std,
            lr=float(lr),
            epochs=eval_cfg.eval_epochs,
            num_images=int(x.shape[0]),
            curve_epochs=[eval_cfg.eval_epochs],
            curve_mean=[mres.mean],
            seconds=mres.seconds,
            val_accuracies=None if mres.val_accuracies is None else list(mres.val_accuracies),
        )
        extra["parameters"] = mres.num_params
    bar.close()
    record = EvalRecord(
        baseline=subject,
        label=label,
        result=result.to_dict(),
        storage=storage,
        config={
            "data": data_cfg.to_dict(),
            "model": model_cfg.to_dict(),
            "eval": eval_cfg.to_dict(),
        },
        hardware=report.describe_device(device),
        source=source,
        extra=extra,
    )
    out = EvalPaths(Path(out_dir))
    report.save_figure(
        plots.eval_curves({label: (result.curve_epochs, result.curve_mean)}), out.curve
    )
    table = pd.DataFrame(
        [
            {
                "set": label,
                "images": x.shape[0],
                "accuracy (%)": report.fmt_acc(result.mean, result.std),
            }
        ]
    )
    report.write_table(table, out.table)
    record.write(out.metrics)
    return record


def _without_labels(storage: Mapping[str, Any]) -> dict[str, Any]:
    """A stored set's storage record with its soft labels dropped (hard-label evaluation)."""
    d = dict(storage)
    d["label_floats"] = 0
    d["used_floats"] = d["image_floats"]
    d["total_bytes"] = 4 * (d["image_floats"] + d["lr_floats"])
    d["fits"] = d["used_floats"] <= d["budget_floats"]
    return d


#: The distillation parameter each ablation sweeps.
SWEPT = {"rank": "rank", "schedule": "schedule"}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _same_run(
    meta: Mapping[str, Any], distill_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]
) -> bool:
    have_data = {k: v for k, v in meta["config"].get("data", {}).items() if k != "data_root"}
    want_data = {k: v for k, v in data_cfg.items() if k != "data_root"}
    return meta["config"].get("distill") == dict(distill_cfg) and have_data == want_data


def find_run(
    results: Results, distill_params: Mapping[str, Any], eval_params: Mapping[str, Any]
) -> RunPaths | None:
    """An evaluated run under ``results`` with exactly these distillation and evaluation
    parameters (compared by content, never by name), or ``None``.

    Looks at every run of :meth:`lsslib.results.Results.all_runs` (the profile's runs
    and the runs earlier sweeps made).
    """
    d = DistillConfig.from_params(distill_params).to_dict()
    data_cfg = DataConfig.from_params(distill_params).to_dict()
    e = EvalConfig.from_params(eval_params).to_dict()
    for run in results.all_runs():
        if not run.eval.metrics.is_file() or not _same_run(read_json(run.synset_json), d, data_cfg):
            continue
        if EvalRecord.read(run.eval.metrics).config.get("eval") == e:
            return run
    return None


def sweep(
    kind: str,
    values: Sequence[Any],
    base: Mapping[str, Any],
    base_eval: Mapping[str, Any],
    results_dir: str | Path,
    out_dir: str | Path,
    device: torch.device,
    *,
    overrides: Mapping[Any, Mapping[str, Any]] | None = None,
    eval_overrides: Mapping[Any, Mapping[str, Any]] | None = None,
    profile: str | None = "cpu",
    make_missing: bool | None = None,
) -> list[tuple[str, RunPaths]]:
    """The evaluated runs of an ablation: ``base`` with the swept parameter set to each
    value (plus that value's ``overrides``). A run whose artifacts exist with the same
    configuration (:func:`find_run`) is reused; any other is distilled and evaluated
    here, into the ablation folder's own runs (:meth:`lsslib.results.AblationPaths.run`).

    Args:
        kind: ``rank`` or ``schedule`` (:data:`SWEPT`).
        values: the swept values, e.g. ranks ``[2, 4, 8]``.
        base, base_eval: flat distill and evaluate parameters of the base run.
        overrides: per value, further distill parameters (e.g. a smaller ``batch_syn``).
        eval_overrides: per value, further evaluate parameters.
        make_missing: train a missing buffer in ``results_dir`` even when it is not the
            profile's default results folder (:func:`require_input`).

    Returns:
        ``[(label, run)]`` in the order of ``values``.

    Raises:
        ValueError: unknown kind, empty or ill-typed ``values``, invalid parameters.
    """
    check_choice("ablation kind", kind, profiles.ABLATION_KINDS)
    key = SWEPT[kind]
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(
            f"invalid parameter {kind}s={values!r}: allowed a non-empty list, passed with "
            f"papermill's -y, e.g. -y '{kind}s: [{'2, 4, 8' if kind == 'rank' else 'fixed, linear'}]'"
        )
    check_path_kinds("results_dir", results_dir, "results")
    check_path_kinds("out_dir", out_dir, "ablation")
    results, out = Results(results_dir), AblationPaths(Path(out_dir))

    plans = []
    for v in values:
        params = {**base, key: v, **_per_value(overrides, v)}
        eparams = {**base_eval, **_per_value(eval_overrides, v)}
        for stage, flat in (("distill", params), ("evaluate", eparams)):
            for cls in STAGE_CONFIGS[stage]:
                cls.from_params(flat)  # every value validated before any work
        shape = DataConfig.from_params(params).shape()
        if shape is not None:  # and its budget, before the first value runs
            DistillConfig.from_params(params).check_against(
                channels=shape[0], side=shape[1], num_classes=shape[2]
            )
        plans.append((v, params, eparams))
    runs, real = [], None
    for v, params, eparams in plans:
        run = find_run(results, params, eparams)
        if run is None:
            folder = out.run(f"{key}_{v}_{_digest([params, eparams])}").folder
            print(f"{key}={v}: no run with this configuration; distilling and evaluating it here")
            if real is None:
                real = data.load_data(DataConfig.from_params(params), device)
            distill(
                params,
                results.buffers,
                folder,
                device,
                profile=profile,
                real=real,
                make_missing=make_missing,
            )
            evaluate_set(
                eparams,
                "synset",
                RunPaths(folder).eval.folder,
                device,
                synset_dir=folder,
                profile=profile,
                real=real,
            )
            run = RunPaths(folder)
        else:
            print(f"{key}={v}: reusing {run.folder}")
        runs.append((str(v), run))
    return runs


def _ablation_rows(runs: Sequence[tuple[str, RunPaths]]) -> pd.DataFrame:
    if not runs:
        raise ValueError("invalid parameter runs=[]: allowed a non-empty list of runs")
    return pd.DataFrame([run_facts(path, path.folder.name) for _, path in runs])


def ablation(kind: str, runs: Sequence[tuple[str, RunPaths]], out_dir: str | Path) -> pd.DataFrame:
    """Stages 4 and 5: tabulate and draw evaluated runs that differ in one parameter.

    ``rank``: table (r, images per class, storage, accuracy), ``accuracy_storage.png``
    and the paper's Fig. 5 (``rank_sweep.png``: class 0's images for each r).
    ``schedule``: table (schedule, final loss, syn_lr, accuracy),
    ``schedule_ablation.png`` and the paper's Fig. 3 (``schedule_bounds.png``).

    Args:
        runs: ``[(label, run)]``, e.g. from :func:`sweep`.

    Returns:
        The table, also written to ``out_dir/table.csv/.md`` (and the runs' facts to
        ``facts.csv``, which the summary reads).

    Raises:
        ValueError: unknown kind or no runs.
    """
    check_choice("ablation kind", kind, profiles.ABLATION_KINDS)
    out = AblationPaths(Path(out_dir))
    paths = {path.folder.name: path for _, path in runs}
    df = _ablation_rows(runs)
    acc = [report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"], strict=True)]
    if kind == "rank":
        df = df.sort_values("rank")
        table = pd.DataFrame(
            {
                "run": df["run"],
                "rank r": df["rank"],
                "images/class": df["images_per_class"],
                "stored floats": df["floats"],
                "budget floats": df["budget_floats"],
                "bytes": df["bytes"],
                "accuracy (%)": [
                    report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"], strict=True)
                ],
            }
        )
        points = df.assign(label=[f"r={r}" for r in df["rank"]])
        report.save_figure(
            plots.accuracy_vs_storage(points[["label", "floats", "acc_mean", "acc_std"]]),
            out.figure("accuracy_storage"),
        )
        sweep = []
        for row in df.itertuples():
            loaded = load_synset(paths[row.run].synset)
            n = loaded.per_class
            sweep.append(
                (int(row.rank), loaded.images01()[:n], int(row.images_per_class), int(row.floats))
            )
        report.save_figure(plots.rank_sweep(sweep, loaded.class_names[0]), out.figure("rank_sweep"))
    else:
        logs = {
            f"{r} ({s})": read_log(paths[r]) for r, s in zip(df["run"], df["schedule"], strict=True)
        }
        tail = max(1, min(len(v) for v in logs.values()) // 5)
        table = pd.DataFrame(
            {
                "run": df["run"],
                "schedule": df["schedule"],
                "images/class": df["images_per_class"],
                "final loss (mean of last 20 %)": [
                    v["loss"].tail(tail).mean() for v in logs.values()
                ],
                "syn_lr": df["syn_lr"],
                "accuracy (%)": acc,
            }
        )
        report.save_figure(
            plots.schedule_ablation(df.assign(label=df["schedule"]), logs),
            out.figure("schedule_ablation"),
        )
        cfgs = {
            r: DistillConfig(**read_json(p.synset_json)["config"]["distill"])
            for r, p in paths.items()
        }
        report.save_figure(
            plots.schedule_bounds(cfgs, {r: read_log(p) for r, p in paths.items()}),
            out.figure("schedule_bounds"),
        )
    facts = df.drop(columns=["title"])
    report.write_table(table, out.table)
    facts.to_csv(out.folder / "facts.csv", index=False)
    return table


def summarise(
    results_dir: str | Path,
    book_dir: str | Path,
    *,
    profile: str,
    description: str,
    main: Mapping[str, str],
    baselines: Sequence[str],
    ablations: Mapping[str, Sequence[str]],
    date: str,
    compare: Sequence[str] = (),
) -> str:
    """Stage 6: assemble the book's tables and figures from what the stages wrote.

    Loads no dataset and trains nothing: tables come from the evaluation records and
    the ablation stages' tables, figures from the stages' PNGs (copied) or from the
    synthetic sets' stored pixels (LSS beside pixel MTT, the image grids).

    Returns:
        The run-info box (MyST), also written to ``book_dir/run_info.md``.

    Raises:
        ValueError: ``main`` lacks the ``lss`` or ``mtt`` role.
    """
    for role in ("lss", "mtt"):
        if role not in main:
            raise ValueError(
                f"invalid parameter main={dict(main)!r}: allowed a dict with keys 'lss' and 'mtt'"
            )
    res, book = Results(results_dir), Path(book_dir)
    figs, tabs = book / "figures", book / "tables"
    figs.mkdir(parents=True, exist_ok=True)
    hardware = EvalRecord.read(res.run(main["lss"]).eval.metrics).hardware
    main_df = summary.main_table(res, main, baselines, hardware, profile, compare)
    report.write_table(main_df.drop(columns=["acc_mean", "acc_std"]), tabs / "main")
    facts = {
        k: pd.read_csv(res.ablation(k).folder / "facts.csv") if k in ablations else pd.DataFrame()
        for k in profiles.ABLATION_KINDS
    }
    for kind, key, cols in (
        ("rank", "rank_ablation", ["run", "rank", "images_per_class", "floats", "bytes"]),
        ("schedule", "schedule_ablation", ["run", "schedule", "images_per_class", "syn_lr"]),
    ):
        df = facts[kind]
        if len(df):
            t = df[cols].copy()
            t["accuracy (%)"] = [
                report.fmt_acc(m, s) for m, s in zip(df["acc_mean"], df["acc_std"], strict=True)
            ]
            report.write_table(t, tabs / key)
    rank_df, sched_df = facts["rank"], facts["schedule"]
    report.write_table(
        summary.paper_claims_table(main_df, rank_df, sched_df, profile), tabs / "paper_claims"
    )
    report.write_table(summary.choices_table(rank_df, sched_df), tabs / "choices")
    lss, mtt = load_synset(res.run(main["lss"]).synset), load_synset(res.run(main["mtt"]).synset)
    x0 = lss.synset.images().detach()
    report.write_table(
        summary.storage_table(x0.shape[1], x0.shape[2], lss.synset.num_classes), tabs / "storage"
    )
    buffer_meta = read_json(res.buffer_json)
    report.write_table(summary.buffers_table(buffer_meta), tabs / "buffers")
    repro = summary.reproduce_table(res.benchmarks)
    report.write_table(repro, tabs / "reproduce")

    # figures the stages drew: copied, not redrawn
    copies = {
        "fig1_parameterisation": res.run(main["lss"]).figure("components"),
        "fig5_rank_sweep": res.ablation("rank").figure("rank_sweep"),
        "fig3_schedule": res.ablation("schedule").figure("schedule_bounds"),
        "schedule_ablation": res.ablation("schedule").figure("schedule_ablation"),
        "expert_curves": res.buffers / "expert_curves.png",
        "grid_lss": res.run(main["lss"]).figure("grid"),
        "grid_mtt": res.run(main["mtt"]).figure("grid"),
    }
    for name, src in copies.items():
        if src.is_file():
            shutil.copyfile(src, figs / f"{name}.png")
    # figures that combine stages: drawn from the sets' stored pixels and the records
    n_lss, n_mtt = lss.per_class, mtt.per_class
    comps = [lss.synset.components(c) for c in range(min(5, lss.synset.num_classes))]
    if comps[0] is not None:
        report.save_figure(
            plots.side_by_side(
                comps,
                lss.images01(),
                n_lss,
                type(lss.synset).title,
                mtt.images01(),
                n_mtt,
                type(mtt.synset).title,
                lss.class_names,
            ),
            figs / "fig4_lss_vs_mtt.png",
        )
    runs_for_logs = {f"LSS ({main['lss']})": main["lss"], f"MTT ({main['mtt']})": main["mtt"]}
    report.save_figure(
        plots.distill_curves({k: read_log(res.run(v)) for k, v in runs_for_logs.items()}),
        figs / "distill_curves.png",
    )
    curves = {}
    for label, run in runs_for_logs.items():
        r = EvalRecord.read(res.run(run).eval.metrics).result
        curves[label] = (r["curve_epochs"], r["curve_mean"])
    for b in baselines:
        m = EvalRecord.read(res.baseline(b).metrics)
        curves[m.label] = (m.result["curve_epochs"], m.result["curve_mean"])
    report.save_figure(plots.eval_curves(curves), figs / "eval_curves.png")
    if len(rank_df):
        pts = rank_df.sort_values("rank").assign(label=lambda d: [f"LSS r={r}" for r in d["rank"]])
        mt = main_df.iloc[[1]].assign(
            label=type(mtt.synset).title, floats=main_df.iloc[1]["stored floats"]
        )
        pts = pd.concat(
            [
                pts[["label", "floats", "acc_mean", "acc_std"]],
                mt[["label", "floats", "acc_mean", "acc_std"]],
            ]
        )
        report.save_figure(plots.accuracy_vs_storage(pts), figs / "rank_accuracy_storage.png")
    total = float(repro["wall time (s)"].iloc[:-1].sum()) if len(repro) else 0.0
    dataset = lss.meta["config"]["data"]["dataset"]
    info = summary.run_info_markdown(profile, description, hardware, dataset, total, date)
    atomic_write_text(book / "run_info.md", info)
    return info
