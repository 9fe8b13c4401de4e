"""Experiment profiles: the YAML format that names stage parameters, runs and tables.

A profile (``lsslib/_profiles/NAME.yaml``, shipped with the package so that a notebook
in a fresh Colab runtime finds it) holds the ``data``, ``model``, ``buffers``,
``distill`` and ``eval`` blocks of stage parameters (:mod:`lsslib.config`), the
distillation ``runs`` (each overriding the ``distill``/``eval`` blocks), the
``baselines``, the ``main`` comparison and the ``ablations``. The Snakemake workflow
(``workflow/Snakefile``) and the notebooks' defaults read it from here.
"""

from __future__ import annotations

import itertools
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
    "read_profile",
    "merge_profiles",
    "stage_parameters",
    "baseline_parameters",
    "ABLATION_KINDS",
    "expand_profile",
    "seed_name",
    "EVAL_OPTIONS",
    "EVAL_SEED_STRIDE",
    "common_lr_name",
    "LAUNCH_KEYS",
    "check_world_size",
    "world_size",
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
    "extends",
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
    "seeds",
    "seeded",
    "best_iteration",
    "evals",
    "crossarch",
    "study",
    "eval_seeds",
    "init_controls",
    "common_lr",
    "tuning",
}


def merge_profiles(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` stated as its differences from ``parent``: mappings merge key by key,
    any other value replaces the parent's, and a key set to ``null`` removes it (a run,
    a baseline, the ablations).

    Returns:
        A new dict; neither input is changed.
    """
    out = dict(parent)
    for key, value in child.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_profiles(out[key], value)
        else:
            out[key] = value
    return out


def read_profile(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile file as written, with its ``extends:`` chain merged in (not validated:
    :func:`load_profile` validates the result). ``extends`` names a bundled profile or a
    path relative to the file; the parent's ``name`` and ``description`` are not
    inherited.

    Raises:
        ValueError: an unknown top-level key, a missing parent, or a cycle of
            ``extends``.
    """
    path = Path(path).resolve()
    if path in _seen:
        _fail("extends", str(path), "a chain of profiles without a cycle")
    with open(path) as fh:
        prof = yaml.safe_load(fh) or {}
    unknown = set(prof) - _PROFILE_KEYS
    if unknown:
        _fail("profile key", sorted(unknown)[0], "one of " + ", ".join(sorted(_PROFILE_KEYS)))
    parent = prof.pop("extends", None)
    if parent is None:
        return prof
    local = path.parent / str(parent)
    base = read_profile(
        local if local.suffix and local.is_file() else profile_path(parent), (*_seen, path)
    )
    for key in ("name", "description"):
        base.pop(key, None)
    return merge_profiles(base, prof)


def load_profile(profile: str | Path) -> dict[str, Any]:
    """Read and validate an experiment profile.

    Args:
        profile: a bundled profile name (:func:`names`: ``smoke``, ``cpu``, ``paper`` ...)
            or a YAML path.

    Returns:
        The profile as a dict (``data``, ``model``, ``buffers``, ``distill``, ``eval``,
        ``runs``, ``main`` (the ``lss`` and ``mtt`` runs), ``compare`` (further runs the
        main table lists at the same storage), ``ablations`` ...). Every run is checked by building its
        configs, so a bad profile fails here, before any work. The study keys
        (``seeds``, ``seeded``, ``best_iteration``, ``evals``, ``crossarch``, ``study``)
        are checked too and left as written; :func:`expand_profile` spells them out.

    A profile may ``extends:`` another and state only what differs
    (:func:`read_profile`, :func:`merge_profiles`); the merged profile is what is
    validated and returned.

    Raises:
        ValueError: unknown profile, unknown top-level key, unknown parameter in a
            block, a broken ``extends`` chain, or any invalid parameter of any run.
    """
    path = profile_path(profile)
    prof = read_profile(path)
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
        world_size(prof, run)  # a launch option, checked against the run's batch
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
    expand_profile(prof)  # seeds, evaluations, cross-architecture and study entries
    return prof


#: Baselines a profile may evaluate beside its runs (notebooks/03_evaluate).
BASELINE_KINDS = ("random_real", "full")


def baseline_parameters(profile: Mapping[str, Any], name: str) -> tuple[str, int, dict[str, Any]]:
    """The evaluate-stage parameters of one entry of a profile's ``baselines``.

    An entry holds ``kind`` (``random_real`` or ``full``), ``real_ipc`` (images per
    class of the random real subset), optionally ``real_seed`` (the seed of the random
    real draw; the seeded copies of :func:`expand_profile` set it) and optional eval
    overrides.

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
    real_seed = spec.pop("real_seed", None)
    check_range(f"baselines.{name}.real_seed", real_seed, lo=0, integer=True, allow_none=True)
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
        if k not in _block_names(own) and not (own == "distill" and k in LAUNCH_KEYS):
            _fail(f"{own}.{k}", v, "a parameter of " + ", ".join(sorted(_block_names(own))))
        flat[k] = v
    if stage != "buffers":
        runs = profile.get("runs") or {}
        if run is None or run not in runs:
            _fail("run", run, "one of " + ", ".join(runs))
        allowed = _block_names("distill") | _block_names("eval") | set(LAUNCH_KEYS)
        for k, v in (runs[run] or {}).items():
            if k not in allowed:
                _fail(f"runs.{run}.{k}", v, "a distill or eval parameter, or world_size")
            if k in _block_names(own):
                flat[k] = v
    names = {n for cls in STAGE_CONFIGS[stage] for n in cls.names()}
    flat = {k: v for k, v in flat.items() if k in names}
    for cls in STAGE_CONFIGS[stage]:
        cls.from_params(flat)
    return flat


#: Keys of the ``distill`` block and of a run that are launch options, not
#: :class:`~lsslib.config.DistillConfig` fields: they change how a run is executed,
#: never its numbers or its identity (so existing checkpoints still resume), like the
#: ``snapshot_every`` of ``best_iteration``. ``world_size``: processes (devices) that
#: share one distillation, ``grad_mode: sharded`` (:mod:`lsslib.sharded`,
#: :mod:`lsslib.launch`).
LAUNCH_KEYS = ("world_size",)


def check_world_size(
    cfg: DistillConfig,
    value: Any,
    *,
    name: str = "world_size",
    set_size: int | None = None,
) -> int:
    """Check how many processes one distillation of ``cfg`` may use, before any work.

    Args:
        cfg: the run's distillation parameters.
        value: the number of processes asked for (``None``: 1).
        name: the parameter as the caller spells it (``runs.RUN.world_size``).
        set_size: synthetic images n, the batch when ``cfg.batch_syn`` is ``None``
            (``None``: not known before the data is read; that bound is then checked
            by every rank, :meth:`lsslib.config.DistillConfig.check_sharding`).

    Returns:
        The world size, an int >= 1.

    Raises:
        ValueError: naming ``name``, the value and what is allowed: not an int >= 1;
            more than 1 without ``grad_mode: sharded``; more than ``batch_syn`` (or the
            set size): each process needs at least one image per inner step.
    """
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(name, value, "an int >= 1 (processes sharing one distillation), or None (1)")
    if value > 1 and cfg.grad_mode != "sharded":
        _fail(
            name,
            value,
            f"1 with grad_mode={cfg.grad_mode!r}; more than 1 only with grad_mode: sharded "
            "(the exact gradient split over the processes, lsslib.sharded)",
        )
    batch = cfg.batch_syn if cfg.batch_syn is not None else set_size
    if value > 1 and batch is not None and value > batch:
        what = f"batch_syn={batch}" if cfg.batch_syn is not None else f"the set size {batch}"
        _fail(
            name,
            value,
            f"at most {what} (each process needs at least one synthetic image per inner step)",
        )
    return value


def world_size(profile: Mapping[str, Any], run: str) -> int:
    """The processes one distillation of ``run`` uses: the run's ``world_size``, else the
    ``distill`` block's, else 1 (:data:`LAUNCH_KEYS`), checked against the run's
    parameters (:func:`check_world_size`; the set size bounds it when ``batch_syn`` is
    ``None`` and the dataset's shape is known).

    Raises:
        ValueError: unknown run; an invalid ``world_size``, named as the profile spells
            it (``runs.RUN.world_size`` or ``distill.world_size``).
    """
    runs = profile.get("runs") or {}
    if run not in runs:
        _fail("run", run, "one of " + ", ".join(runs))
    spec, block = runs[run] or {}, profile.get("distill") or {}
    name = f"runs.{run}.world_size" if "world_size" in spec else "distill.world_size"
    value = spec.get("world_size", block.get("world_size"))
    flat = stage_parameters(profile, "distill", run)
    cfg = DistillConfig.from_params(flat)
    set_size = None
    shape = DataConfig.from_params(flat).shape()
    if value not in (None, 1) and cfg.batch_syn is None and shape is not None:
        lay = cfg.check_against(channels=shape[0], side=shape[1], num_classes=shape[2])
        set_size = lay.images_per_class * shape[2]
    return check_world_size(cfg, value, name=name, set_size=set_size)


#: Keys of an ``evals`` entry besides ``of`` and stage parameters: the evaluation
#: variants of :func:`lsslib.stages.evaluate_set`.
EVAL_OPTIONS = ("labels", "arch", "cross_arch", "iteration", "val_per_class")


def seed_name(name: str, seed: int, first: int) -> str:
    """The name of a run, baseline or evaluation for distillation seed ``seed``: the
    name itself for the profile's first seed, ``NAME-sSEED`` for the others."""
    return name if seed == first else f"{name}-s{seed}"


def _seeds(prof: Mapping[str, Any]) -> list[int]:
    seeds = prof.get("seeds")
    if seeds is None:
        return [0]
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        _fail("seeds", seeds, "a non-empty list of distinct ints >= 0, e.g. [0, 1, 2]")
    return list(seeds)


def _eval_entry(
    prof: Mapping[str, Any], name: str, entry: Mapping[str, Any], runs: Mapping, baselines: Mapping
) -> dict[str, Any]:
    """One checked evaluation: what it evaluates, its flat parameters and its variant."""
    entry = dict(entry or {})
    of = entry.pop("of", None)
    if of not in runs and of not in baselines:
        _fail(
            f"evals.{name}.of",
            of,
            "a run or baseline of the profile: " + ", ".join([*runs, *baselines]),
        )
    options = {k: entry.pop(k) for k in EVAL_OPTIONS if k in entry}
    model_keys = set(ModelConfig.names())
    eval_keys = set(EvalConfig.names())
    for k, v in entry.items():
        if k not in model_keys | eval_keys:
            _fail(
                f"evals.{name}.{k}",
                v,
                "of, " + ", ".join(EVAL_OPTIONS) + ", or a model or eval parameter",
            )
    if of in runs:
        subject, real_ipc, real_seed = "synset", 0, None
        flat = stage_parameters(prof, "evaluate", of)
    else:
        subject, real_ipc, flat = baseline_parameters(prof, of)
        real_seed = (baselines[of] or {}).get("real_seed")
    flat = {**flat, **entry}
    for cls in (DataConfig, ModelConfig, EvalConfig):
        cls.from_params(flat)
    labels = options.get("labels", "stored")
    check_choice(f"evals.{name}.labels", labels, ("stored", "hard", "expert"))
    if labels == "expert" and subject != "random_real":
        _fail(f"evals.{name}.labels", labels, "'expert' only for a random_real baseline")
    if labels == "hard" and subject != "synset":
        _fail(f"evals.{name}.labels", labels, "'hard' only for a distillation run")
    arch = options.get("arch", "convnet")
    cross = bool(options.get("cross_arch", arch != "convnet" or bool(set(entry) & model_keys)))
    iteration = options.get("iteration")
    check_range(f"evals.{name}.iteration", iteration, lo=0, integer=True, allow_none=True)
    if iteration is not None and subject != "synset":
        _fail(f"evals.{name}.iteration", iteration, "only for a distillation run")
    val = options.get("val_per_class")
    check_range(f"evals.{name}.val_per_class", val, lo=1, integer=True, allow_none=True)
    return {
        "of": of,
        "subject": subject,
        "real_ipc": real_ipc,
        "params": flat,
        "labels": labels,
        "arch": arch,
        "cross_arch": cross,
        "iteration": iteration,
        "val_per_class": val,
        "real_seed": real_seed,
    }


#: How far apart the evaluation seeds of two distillation seeds lie (network ``i`` of a
#: set uses ``eval_seed + i``, so no two seeds share a network below this many).
EVAL_SEED_STRIDE = 1000


def expand_profile(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The profile with its study entries spelled out, as the workflow runs it.

    - ``seeds: [S0, S1, ...]`` (with ``seeded: [names]``, only those runs and random
      real baselines; default all): every run ``R`` is distilled once per seed: ``R`` itself
      with ``distill_seed: S0``, ``R-sS`` with ``distill_seed: S`` (the seed changes the
      expert draws, the initial real images and DSA); every ``random_real`` baseline
      likewise with ``real_seed``. With ``eval_seeds: per_seed`` (the default) the k-th
      seed also draws the evaluation networks (``eval_seed`` + k x
      :data:`EVAL_SEED_STRIDE`), so no two seeds share them; ``eval_seeds: shared``
      keeps one set of networks for every seed.
    - ``best_iteration: {eval_every: N, val_per_class: V}``: every run saves its set every
      ``N`` iterations; each snapshot gets an evaluation ``R-itK`` and every evaluation
      of a run also tests on ``V`` validation images per class
      (:func:`lsslib.data.validation_split`).
    - ``init_controls: true``: every run also saves its set as initialised, before any
      distillation, and evaluates it (``R-it0``) with the same protocol and seeds: the
      starting-set control.
    - ``common_lr: {grid: [...]}``: every run is also evaluated at each learning rate of
      the grid (``R-lrX``, ``lr_eval: X``, tested on the validation split too), so the
      set can be told apart from the step size it learned; the rate is chosen on
      validation (:mod:`lsslib.study`).
    - ``evals: {NAME: {of: RUN_OR_BASELINE, labels, arch, model/eval overrides}}``:
      further evaluations (hard labels of a soft set, expert soft labels on random
      real, other networks); seeded with their subject.
    - ``crossarch: {sets: [...], nets: {NAME: {arch or model overrides}}, seeds: first|all,
      ...eval overrides}``: one evaluation ``xa-SET-NET`` per set and network.

    Returns:
        A new dict: the profile with ``runs``, ``baselines`` extended, ``evals`` as
        ``{name: checked entry}`` (see :func:`_eval_entry`), ``seed_of``: ``{name:
        (base name, seed)}`` for every run, baseline and evaluation, ``snapshot_every``
        and ``val_per_class`` (``None`` without ``best_iteration``).

    Raises:
        ValueError: a malformed ``seeds``, ``eval_seeds``, ``best_iteration``,
            ``init_controls``, ``common_lr``, ``evals``, ``crossarch`` or ``study``
            entry, naming it.
    """
    prof = dict(profile)
    seeds = _seeds(prof)
    base_runs = dict(prof.get("runs") or {})
    base_baselines = dict(prof.get("baselines") or {})
    runs, baselines, seed_of = _expand_seeds(prof, seeds)
    prof["runs"], prof["baselines"] = runs, baselines
    every, val = _best_iteration(prof)
    tuning, val = _tuning_runs(prof, seeds[0], seed_of, val)
    prof["tuning"] = tuning
    raw_evals = {**dict(prof.get("evals") or {}), **_crossarch_evals(prof.get("crossarch"))}
    evals = _seeded_evals(prof, raw_evals, seeds, seed_of, val)
    snapshot_every, snapshots = _snapshot_evals(prof, seed_of, every, val)
    evals.update(snapshots)
    evals.update(_common_lr_evals(prof, seed_of, val))
    prof["evals"] = evals
    prof["seed_of"] = seed_of
    prof["snapshot_every"] = snapshot_every
    prof["val_per_class"] = val
    _check_study(prof.get("study"), base_runs, base_baselines)
    return prof


def _expand_seeds(
    prof: Mapping[str, Any], seeds: list[int]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tuple[str, int]]]:
    """The seeded copies of the runs and random real baselines, and whose seed each is."""
    first = seeds[0]
    base_runs = dict(prof.get("runs") or {})
    base_baselines = dict(prof.get("baselines") or {})
    seeded = _seeded(prof, seeds, [*base_runs, *base_baselines])
    mode = prof.get("eval_seeds", "per_seed")
    check_choice("eval_seeds", mode, ("per_seed", "shared"))
    num_eval = max(
        (stage_parameters(prof, "evaluate", r)["num_eval"] for r in base_runs), default=0
    )
    if mode == "per_seed" and num_eval >= EVAL_SEED_STRIDE:
        _fail("eval.num_eval", num_eval, f"fewer than {EVAL_SEED_STRIDE} with eval_seeds per_seed")
    runs: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    seed_of: dict[str, tuple[str, int]] = {}
    for k, seed in enumerate(seeds):
        for r, spec in base_runs.items():
            if seed != first and seed not in seeded.get(r, ()):
                continue
            name = seed_name(r, seed, first)
            extra = {"distill_seed": seed} if "seeds" in prof else {}
            if mode == "per_seed" and k:
                e0 = stage_parameters(prof, "evaluate", r).get("eval_seed", 0)
                extra["eval_seed"] = e0 + k * EVAL_SEED_STRIDE
            runs[name] = {**(spec or {}), **extra}
            seed_of[name] = (r, seed)
        for b, spec in base_baselines.items():
            spec = dict(spec or {})
            if spec.get("kind") == "random_real" and (seed == first or seed in seeded.get(b, ())):
                name = seed_name(b, seed, first)
                extra = {"real_seed": seed} if "seeds" in prof else {}
                if mode == "per_seed" and k:
                    e0 = spec.get("eval_seed", (prof.get("eval") or {}).get("eval_seed", 0))
                    extra["eval_seed"] = e0 + k * EVAL_SEED_STRIDE
                baselines[name] = {**spec, **extra}
                seed_of[name] = (b, seed)
            elif seed == first:
                baselines[b] = spec
                seed_of[b] = (b, seed)
    return runs, baselines, seed_of


def _seeded(prof: Mapping[str, Any], seeds: list[int], names: list[str]) -> dict[str, list[int]]:
    """``seeded`` as ``{name: its seeds}``: absent, every run and baseline at every seed;
    a list, those names at every seed (the others at the first only); a mapping, each
    name at the seeds it lists (e.g. 5 seeds for the primary contrasts' cells, 3 for
    the rest)."""
    seeded = prof.get("seeded")
    if seeded is None:
        return {n: list(seeds) for n in names}
    if isinstance(seeded, list):
        seeded = {n: list(seeds) for n in seeded}
    if not isinstance(seeded, Mapping):
        _fail("seeded", seeded, "a list of runs and baselines, or a mapping {name: [seeds]}")
    for n, its in seeded.items():
        check_choice("seeded entry", n, tuple(names))
        if not isinstance(its, list) or not set(its) <= set(seeds):
            _fail(f"seeded.{n}", its, f"a list of the profile's seeds {seeds}")
    return {n: list(v) for n, v in seeded.items()}


def _best_iteration(prof: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``best_iteration``'s ``(eval_every, val_per_class)``, checked (``None`` without)."""
    best = prof.get("best_iteration")
    if best is None:
        return None, None
    if not isinstance(best, Mapping) or set(best) - {"eval_every", "val_per_class"}:
        _fail("best_iteration", best, "a mapping {eval_every: N, val_per_class: V}")
    every, val = best.get("eval_every"), best.get("val_per_class")
    check_range("best_iteration.eval_every", every, lo=1, integer=True)
    check_range("best_iteration.val_per_class", val, lo=1, integer=True)
    if DataConfig.from_params(stage_parameters(prof, "buffers")).train_per_class is None:
        _fail(
            "best_iteration.val_per_class",
            val,
            "only with data.train_per_class set (the validation images are training "
            "images that no stage trains on)",
        )
    return every, val


def _crossarch_evals(xa: Any) -> dict[str, Any]:
    """``crossarch`` spelled out as raw ``evals`` entries ``xa-SET-NET``."""
    if xa is None:
        return {}
    if not isinstance(xa, Mapping) or not {"sets", "nets"} <= set(xa):
        _fail("crossarch", xa, "a mapping with sets: [...] and nets: {NAME: {...}}")
    xa = dict(xa)
    sets, nets = xa.pop("sets"), xa.pop("nets")
    which = xa.pop("seeds", "first")
    check_choice("crossarch.seeds", which, ("first", "all"))
    out = {}
    for s_ in sets:
        for net, over in (nets or {}).items():
            out[f"xa-{s_}-{net}"] = {
                "of": s_,
                **xa,
                **(over or {}),
                "cross_arch": True,
                "_seeds": which,
            }
    return out


def _seeded_evals(
    prof: Mapping[str, Any],
    raw_evals: Mapping[str, Any],
    seeds: list[int],
    seed_of: dict[str, tuple[str, int]],
    val: int | None,
) -> dict[str, Any]:
    """Every raw ``evals`` entry checked, once per seed of its subject."""
    first, runs, baselines = seeds[0], prof["runs"], prof["baselines"]
    evals: dict[str, Any] = {}
    for name, entry in raw_evals.items():
        entry = dict(entry or {})
        which = entry.pop("_seeds", "all")
        of = entry.get("of")
        for seed in seeds if which == "all" else [first]:
            sub = seed_name(of, seed, first) if isinstance(of, str) else of
            if sub not in runs and sub not in baselines:
                if seed != first:
                    continue  # a subject without seeded copies: evaluated once
                sub = of
            ename = seed_name(name, seed, first)
            checked = _eval_entry(prof, ename, {**entry, "of": sub}, runs, baselines)
            if checked["subject"] == "synset" and val is not None:
                checked["val_per_class"] = checked["val_per_class"] or val
            evals[ename] = checked
            seed_of[ename] = (name, seed)
    return evals


def _snapshot_evals(
    prof: Mapping[str, Any], seed_of: dict[str, tuple[str, int]], every: int | None, val: int | None
) -> tuple[int | None, dict[str, Any]]:
    """The snapshot interval every run saves with, and the evaluations ``R-itK`` of its
    snapshots (with ``init_controls``, ``K = 0``: the set as initialised)."""
    init = prof.get("init_controls", False)
    if not isinstance(init, bool):
        _fail("init_controls", init, "true or false")
    runs, evals = prof["runs"], {}
    iters = {
        r: DistillConfig.from_params(stage_parameters(prof, "distill", r)).iterations for r in runs
    }
    snapshot_every = (
        every if every is not None else (max(iters.values()) if init and iters else None)
    )
    for r in runs:
        ks = list(range(every, iters[r], every)) if every is not None else []
        for k in [0, *ks] if init else ks:
            ename = f"{r}-it{k}"
            evals[ename] = _eval_entry(
                prof,
                ename,
                {"of": r, "iteration": k, "val_per_class": val},
                runs,
                prof["baselines"],
            )
            base, seed = seed_of[r]
            seed_of[ename] = (f"{base}-it{k}", seed)
    return snapshot_every, evals


def _tuning_runs(
    prof: dict[str, Any], first: int, seed_of: dict[str, tuple[str, int]], val: int | None
) -> tuple[dict[str, Any] | None, int | None]:
    """``tuning: {grid: {param: [values]}, runs: [names], val_per_class: V}`` spelled out:
    each listed run once per combination of the grid (``R-tuneK``, first seed only),
    evaluated also on ``V`` validation images per class, so that
    :func:`lsslib.study.tuning_table` chooses each run's values on validation only.

    Returns:
        ``({"grid", "runs": {run: [(combination, name), ...]}}, val_per_class)``, or
        ``(None, val)`` without a ``tuning`` block.
    """
    spec = prof.get("tuning")
    if spec is None:
        return None, val
    if not isinstance(spec, Mapping) or set(spec) - {"grid", "runs", "val_per_class"}:
        _fail("tuning", spec, "a mapping {grid: {param: [values]}, runs: [...], val_per_class: V}")
    grid, which = spec.get("grid"), spec.get("runs")
    if (
        not isinstance(grid, Mapping)
        or not grid
        or any(not isinstance(v, list) or not v for v in grid.values())
    ):
        _fail("tuning.grid", grid, "a mapping {distill or eval parameter: [values, ...]}")
    if not isinstance(which, list) or not which:
        _fail("tuning.runs", which, "a non-empty list of the profile's runs")
    v = spec.get("val_per_class", val)
    check_range("tuning.val_per_class", v, lo=1, integer=True)
    out: dict[str, list] = {}
    for r in which:
        check_choice("tuning.runs entry", r, tuple(prof["runs"]))
        out[r] = []
        for k, combo in enumerate(itertools.product(*grid.values())):
            choice = dict(zip(grid, combo, strict=True))
            name = f"{r}-tune{k}"
            prof["runs"][name] = {**(prof["runs"][r] or {}), **choice}
            DistillConfig.from_params(stage_parameters(prof, "distill", name))  # named errors
            seed_of[name] = (name, first)
            out[r].append((choice, name))
    return {"grid": dict(grid), "runs": out}, v


def common_lr_name(run: str, lr: float) -> str:
    """The name of a run's evaluation at the common learning rate ``lr``."""
    return f"{run}-lr{lr:g}"


def _common_lr_evals(
    prof: Mapping[str, Any], seed_of: dict[str, tuple[str, int]], val: int | None
) -> dict[str, Any]:
    """Every run evaluated at each rate of ``common_lr.grid`` (``R-lrX``), also on the
    validation split (``common_lr.val_per_class``, default ``best_iteration``'s)."""
    spec = prof.get("common_lr")
    if spec is None:
        return {}
    if not isinstance(spec, Mapping) or set(spec) - {"grid", "val_per_class"}:
        _fail("common_lr", spec, "a mapping {grid: [lr, ...], val_per_class: V}")
    grid = spec.get("grid")
    if (
        not isinstance(grid, list)
        or not grid
        or any(isinstance(g, bool) or not isinstance(g, (int, float)) or g <= 0 for g in grid)
    ):
        _fail("common_lr.grid", grid, "a non-empty list of learning rates > 0")
    v = spec.get("val_per_class", val)
    check_range("common_lr.val_per_class", v, lo=1, integer=True)
    evals = {}
    for r in prof["runs"]:
        for lr in grid:
            ename = common_lr_name(r, lr)
            evals[ename] = _eval_entry(
                prof,
                ename,
                {"of": r, "lr_eval": float(lr), "val_per_class": v},
                prof["runs"],
                prof["baselines"],
            )
            base, seed = seed_of[r]
            seed_of[ename] = (common_lr_name(base, lr), seed)
    return evals


def _check_study(
    study: Any, base_runs: Mapping[str, Any], base_baselines: Mapping[str, Any]
) -> None:
    """The ``study`` block names the profile's runs and baselines in its roles."""
    if study is None:
        return
    if not isinstance(study, Mapping):
        _fail("study", study, "a mapping (see lsslib.study)")
    for role, run in (study.get("factorial") or {}).items():
        check_choice(
            "study.factorial role",
            role,
            ("pixels_hard", "pixels_soft", "lowrank_hard", "lowrank_soft"),
        )
        check_choice(f"study.factorial.{role}", run, tuple(base_runs))
    for key in ("published", "strict"):
        if study.get(key) is not None:
            check_choice(f"study.{key}", study[key], tuple(base_runs))
    if study.get("real") is not None:
        check_choice("study.real", study["real"], tuple(base_baselines))
