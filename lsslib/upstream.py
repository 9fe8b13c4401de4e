"""What the summary stage reads, and how a summary run alone makes it.

The workflow hands the summary stage what it compares (the profile's description,
``main`` roles, ``compare`` rows, baselines and ablations); :func:`summary_layout`
reads the same from the profile by name, so the notebook alone summarises the same
experiment as the pipeline. In a fresh runtime, :func:`make_summary_inputs` makes what
is missing by calling the stage functions in the pipeline's order (buffer, each run's
distillation and evaluation, the baselines, the ablation sweeps) with the profile's
parameters: the same units the workflow's jobs call, one after the other in-process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import profiles, stages
from .results import Results, check_path_kinds

__all__ = ["summary_layout", "missing_summary_inputs", "make_summary_inputs", "prepare_summary"]


def summary_layout(profile: str | Path) -> dict[str, Any]:
    """The summary stage's layout arguments, from the profile as the workflow expands it.

    Returns:
        ``{"description", "main", "compare", "baselines", "ablations"}``.

    Raises:
        ValueError: unknown profile.
    """
    prof = profiles.expand_profile(profiles.load_profile(profile))
    return {
        "description": str(prof.get("description") or ""),
        "main": dict(prof.get("main") or {}),
        "compare": list(prof.get("compare") or []),
        "baselines": list(prof.get("baselines") or {}),
        "ablations": {k: list(v) for k, v in (prof.get("ablations") or {}).items()},
    }


def _runs(layout: Mapping[str, Any]) -> list[str]:
    """Every run the summary reads: the main roles, the compare rows, the ablations'."""
    ablated = [r for members in layout["ablations"].values() for r in members]
    return list(dict.fromkeys([*layout["main"].values(), *layout["compare"], *ablated]))


def missing_summary_inputs(res: Results, layout: Mapping[str, Any]) -> list[Path]:
    """The records the summary reads that do not exist yet under ``res``."""
    want = [res.buffer_json, *(res.run(r).eval.metrics for r in _runs(layout))]
    want += [res.baseline(b).metrics for b in layout["baselines"]]
    want += [res.ablation(k).table_csv for k in layout["ablations"]]
    return [p for p in want if not p.is_file()]


def make_summary_inputs(
    profile: str, res: Results, layout: Mapping[str, Any], device: torch.device
) -> None:
    """Make every missing record of :func:`missing_summary_inputs` with the stage
    functions and the profile's parameters (every run the summary reads distilled and
    evaluated into ``runs/``, as the pipeline does; baselines evaluated; ablations swept
    over those runs); what exists is reused as the stages reuse it."""
    prof = profiles.expand_profile(profiles.load_profile(profile))
    for run in _runs(layout):
        paths = res.run(run)
        if not paths.eval.metrics.is_file():
            params = stages.stage_parameters("distill", {}, profile, run)
            stages.distill(params, res.buffers, paths.folder, device, profile=profile)
            eparams = stages.stage_parameters("evaluate", {}, profile, run)
            stages.evaluate_set(
                eparams,
                "synset",
                paths.eval.folder,
                device,
                synset_dir=paths.folder,
                buffer_dir=res.buffers,
                profile=profile,
            )
    for name in layout["baselines"]:
        if not res.baseline(name).metrics.is_file():
            kind, ipc, flat = profiles.baseline_parameters(prof, name)
            seed = (prof["baselines"][name] or {}).get("real_seed")
            stages.evaluate_set(
                flat,
                kind,
                res.baseline(name).folder,
                device,
                real_ipc=max(ipc, 1),
                buffer_dir=res.buffers,
                profile=profile,
                real_seed=seed,
            )
    for kind in layout["ablations"]:
        if not res.ablation(kind).table_csv.is_file():
            plan = stages.ablation_plan(prof, kind)
            out = res.ablation(kind).folder
            runs = stages.sweep(
                kind, **plan, results_dir=res.root, out_dir=out, device=device, profile=profile
            )
            stages.ablation(kind, runs, out)


def prepare_summary(
    profile: str,
    results_dir: str | Path | None,
    book_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    make_missing: bool | None = None,
    **given: Any,
) -> tuple[Results, dict[str, Any]]:
    """The summary stage's results folder and layout, its missing records made first.

    Args:
        profile: the profile whose experiment is summarised.
        results_dir: its results (``None``: ``results/<profile>``).
        book_dir: where the summary writes (checked: a folder, with ``tables/`` and
            ``figures/`` folders if present).
        make_missing: make missing records here; ``None``: only in the default
            ``results/<profile>``.
        given: layout entries that replace the profile's (``None`` values ignored).

    Returns:
        ``(results, layout)`` for :func:`lsslib.stages.summarise`.

    Raises:
        ValueError: ``book_dir`` is a file (or its ``tables``/``figures`` are); records
            are missing from an explicitly named ``results_dir``.
    """
    check_path_kinds("book_dir", book_dir, "summary")
    chosen = {k: v for k, v in given.items() if v is not None}
    layout = {**summary_layout(profile), **chosen}
    res = Results(results_dir) if results_dir else Results.of(profile)
    missing = missing_summary_inputs(res, layout)
    if missing and (make_missing or (make_missing is None and results_dir is None)):
        print(f"{len(missing)} records missing under {res.root}: making them here ({profile!r})")
        make_summary_inputs(profile, res, layout, torch.device(device))
    elif missing:
        raise ValueError(
            f"invalid parameter results_dir={str(results_dir)!r}: {len(missing)} records "
            f"missing, e.g. {missing[0]}; allowed a results folder of profile {profile!r} "
            "(make pipeline PROFILE=...), or make_missing=True to make them here"
        )
    return res, layout
