"""Experiment profiles: the YAML format that names stage parameters, runs and tables.

A profile (``lsslib/_profiles/NAME.yaml``, shipped with the package so that a notebook
in a fresh Colab runtime finds it) holds the ``data``, ``model``, ``buffers``,
``distill`` and ``eval`` blocks of stage parameters (:mod:`lsslib.config`), the
distillation ``runs`` (each overriding the ``distill``/``eval`` blocks), the
``baselines``, the ``main`` comparison and the ``ablations``. The Snakemake workflow
(``workflow/Snakefile``) and the notebooks' defaults read it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import (
    STAGE_CONFIGS,
    BufferConfig,
    DataConfig,
    DistillConfig,
    EvalConfig,
    ModelConfig,
    _fail,
    check_choice,
    check_range,
)

__all__ = [
    "PROFILE_DIR",
    "BASELINE_KINDS",
    "names",
    "profile_path",
    "load_profile",
    "stage_parameters",
    "baseline_parameters",
    "ABLATION_KINDS",
]

#: Folder of the bundled profiles.
PROFILE_DIR = Path(__file__).resolve().parent / "_profiles"

#: Ablations a profile may list, each a sweep over one distillation parameter.
ABLATION_KINDS = ("rank", "schedule")


def names() -> list[str]:
    """The bundled profiles' names."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(profile: str | Path) -> Path:
    """The YAML file of a bundled profile name, or ``profile`` itself if it is a path.

    Raises:
        ValueError: no such file or bundled profile.
    """
    path = Path(profile)
    if not path.suffix:
        path = PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        _fail("profile", str(profile), "a YAML file or one of " + ", ".join(names()))
    return path


_PROFILE_KEYS = {
    "name",
    "description",
    "hardware",
    "data",
    "model",
    "buffers",
    "distill",
    "eval",
    "runs",
    "baselines",
    "main",
    "compare",
    "ablations",
}


def load_profile(profile: str | Path) -> dict[str, Any]:
    """Read and validate an experiment profile.

    Args:
        profile: a bundled profile name (:func:`names`: ``smoke``, ``cpu``, ``paper`` ...)
            or a YAML path.

    Returns:
        The profile as a dict (``data``, ``model``, ``buffers``, ``distill``, ``eval``,
        ``runs``, ``main`` (the ``lss`` and ``mtt`` runs), ``compare`` (further runs the
        main table lists at the same storage), ``ablations`` ...). Every run is checked by building its
        configs, so a bad profile fails here, before any work.

    Raises:
        ValueError: unknown profile, unknown top-level key, unknown parameter in a
            block, or any invalid parameter of any run.
    """
    path = profile_path(profile)
    with open(path) as fh:
        prof = yaml.safe_load(fh) or {}
    unknown = set(prof) - _PROFILE_KEYS
    if unknown:
        _fail("profile key", sorted(unknown)[0], "one of " + ", ".join(sorted(_PROFILE_KEYS)))
    prof.setdefault("name", path.stem)
    runs = list(prof.get("runs") or {})
    buffer_epochs = (prof.get("buffers") or {}).get("train_epochs")
    for run in runs:
        flat = stage_parameters(prof, "distill", run)
        shape = DataConfig.from_params(flat).shape()
        if shape is not None:  # the budget rule, once per run
            DistillConfig.from_params(flat).check_against(
                channels=shape[0], side=shape[1], num_classes=shape[2], buffer_epochs=buffer_epochs
            )
        stage_parameters(prof, "evaluate", run)
    stage_parameters(prof, "buffers")
    for name in prof.get("baselines") or {}:
        baseline_parameters(prof, name)
    for role, run in (prof.get("main") or {}).items():
        check_choice("main role", role, ("lss", "mtt"))
        check_choice(f"main.{role}", run, tuple(runs))
    for run in prof.get("compare") or []:
        check_choice("compare entry", run, tuple(runs))
    for kind, members in (prof.get("ablations") or {}).items():
        check_choice("ablations kind", kind, ABLATION_KINDS)
        for run in members:
            check_choice(f"ablations.{kind} entry", run, tuple(runs))
    return prof


#: Baselines a profile may evaluate beside its runs (notebooks/03_evaluate).
BASELINE_KINDS = ("random_real", "full")


def baseline_parameters(profile: Mapping[str, Any], name: str) -> tuple[str, int, dict[str, Any]]:
    """The evaluate-stage parameters of one entry of a profile's ``baselines``.

    An entry holds ``kind`` (``random_real`` or ``full``), ``real_ipc`` (images per
    class of the random real subset) and optional eval overrides.

    Returns:
        ``(kind, real_ipc, flat)``: ``real_ipc`` is 0 for ``full``; ``flat`` holds the
        data, model and eval parameters with the entry's overrides, validated.

    Raises:
        ValueError: unknown baseline or kind, a bad ``real_ipc``, a key that is no eval
            parameter, or an invalid value.
    """
    baselines = profile.get("baselines") or {}
    if name not in baselines:
        _fail("baseline", name, "one of " + ", ".join(baselines))
    spec = dict(baselines[name] or {})
    kind = spec.pop("kind", None)
    check_choice(f"baselines.{name}.kind", kind, BASELINE_KINDS)
    real_ipc = spec.pop("real_ipc", None)
    if kind == "random_real":
        check_range(f"baselines.{name}.real_ipc", real_ipc, lo=1, integer=True)
    flat: dict[str, Any] = {}
    for block, cls in (("data", DataConfig), ("model", ModelConfig), ("eval", EvalConfig)):
        flat.update({k: v for k, v in (profile.get(block) or {}).items() if k in cls.names()})
    for k, v in spec.items():
        if k not in EvalConfig.names():
            _fail(f"baselines.{name}.{k}", v, "kind, real_ipc or an eval parameter")
        flat[k] = v
    for cls in (DataConfig, ModelConfig, EvalConfig):
        cls.from_params(flat)
    return kind, int(real_ipc or 0), flat


def _block_names(block: str) -> set[str]:
    owners = {
        "data": (DataConfig,),
        "model": (ModelConfig,),
        "buffers": (BufferConfig,),
        "distill": (DistillConfig,),
        "eval": (EvalConfig,),
    }[block]
    return {n for cls in owners for n in cls.names()}


def stage_parameters(
    profile: Mapping[str, Any], stage: str, run: str | None = None
) -> dict[str, Any]:
    """The flat parameter dict of one stage of a profile (what papermill receives).

    Args:
        profile: a profile dict from :func:`load_profile`.
        stage: ``buffers``, ``distill`` or ``evaluate``.
        run: the run name under ``runs`` (distill/evaluate); its entries override
            the profile's ``distill`` block (and ``eval`` block for ``eval_*`` keys).

    Returns:
        ``{name: value}`` restricted to the stage's dataclass fields, validated.

    Raises:
        ValueError: unknown stage or run, a key that is no parameter of its block,
            or an invalid value. The budget rules are checked once, by
            :func:`load_profile`, not here.
    """
    check_choice("stage", stage, tuple(STAGE_CONFIGS))
    flat: dict[str, Any] = {}
    for block in ("data", "model"):
        for k, v in (profile.get(block) or {}).items():
            if k not in _block_names(block):
                _fail(f"{block}.{k}", v, "a parameter of " + ", ".join(sorted(_block_names(block))))
            flat[k] = v
    own = {"buffers": "buffers", "distill": "distill", "evaluate": "eval"}[stage]
    for k, v in (profile.get(own) or {}).items():
        if k not in _block_names(own):
            _fail(f"{own}.{k}", v, "a parameter of " + ", ".join(sorted(_block_names(own))))
        flat[k] = v
    if stage != "buffers":
        runs = profile.get("runs") or {}
        if run is None or run not in runs:
            _fail("run", run, "one of " + ", ".join(runs))
        allowed = _block_names("distill") | _block_names("eval")
        for k, v in (runs[run] or {}).items():
            if k not in allowed:
                _fail(f"runs.{run}.{k}", v, "a distill or eval parameter")
            if k in _block_names(own):
                flat[k] = v
    names = {n for cls in STAGE_CONFIGS[stage] for n in cls.names()}
    flat = {k: v for k, v in flat.items() if k in names}
    for cls in STAGE_CONFIGS[stage]:
        cls.from_params(flat)
    return flat
