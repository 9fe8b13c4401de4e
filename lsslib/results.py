"""The results folder: where every artifact of a profile lives, and what its records hold.

This is the one module that spells out the layout of ``results/PROFILE/``; the
Snakefile, the notebooks, the reports and the summary ask it for paths::

    results/PROFILE/
      buffers/                     expert trajectories (buffer.json + expert_NNN.*)
      runs/RUN/                    one distillation run (:class:`RunPaths`)
        synset.json/.safetensors   the synthetic set        checkpoint.*  the resume point
        snapshots/synset_itN.*     the set after N iterations (for the best iteration)
        log.csv                    one row per iteration    *.png         its figures
        eval/metrics.json          its evaluation record (:class:`EvalRecord`)
      baselines/NAME/metrics.json  random real / full-set baselines (:class:`EvalPaths`)
      evals/NAME/metrics.json      further evaluations of a run or baseline: hard labels,
                                   other architectures, snapshots (:meth:`Results.evaluation`)
      study/                       the study's tables and figures (:mod:`lsslib.study`)
      ablation_KIND/table.csv      an ablation's table and figures (:class:`AblationPaths`)
        runs/NAME/                 runs the ablation's sweep made itself
      notebooks/ logs/ benchmarks/ executed notebooks, job logs, Snakemake benchmark TSVs

Records are JSON, written atomically; nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import parameterisations
from .artifacts import atomic_write_json

__all__ = [
    "Results",
    "RunPaths",
    "EvalPaths",
    "AblationPaths",
    "EvalRecord",
    "read_json",
    "run_facts",
    "read_log",
]


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON record or artifact metadata file; never unpickles anything.

    Raises:
        FileNotFoundError: naming the file and that its stage must run first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run the stage that writes it first (see workflow/Snakefile)"
        )
    return json.loads(path.read_text())


@dataclass(frozen=True)
class EvalPaths:
    """An evaluation's output folder: ``metrics.json``, ``accuracy.csv/.md``, ``eval_curve.png``."""

    folder: Path

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def table(self) -> Path:
        """Stem of the accuracy table (``.csv`` and ``.md``)."""
        return self.folder / "accuracy"

    @property
    def curve(self) -> Path:
        return self.folder / "eval_curve.png"


@dataclass(frozen=True)
class RunPaths:
    """One distillation run's folder (any folder: a notebook may be pointed anywhere)."""

    folder: Path

    @property
    def synset(self) -> Path:
        """Stem of the synthetic-set artifact (``.json`` + ``.safetensors``)."""
        return self.folder / "synset"

    @property
    def synset_json(self) -> Path:
        return self.folder / "synset.json"

    @property
    def checkpoint(self) -> Path:
        """Stem of the resume checkpoint."""
        return self.folder / "checkpoint"

    @property
    def log_csv(self) -> Path:
        return self.folder / "log.csv"

    def snapshot(self, iteration: int) -> Path:
        """Stem of the set as it was after ``iteration`` iterations
        (``snapshots/synset_itNNNNN``; written when the run is given ``snapshot_every``)."""
        return self.folder / "snapshots" / f"synset_it{iteration:05d}"

    def figure(self, name: str) -> Path:
        """``NAME.png`` of the run (``curves``, ``grid``, ``components``)."""
        return self.folder / f"{name}.png"

    @property
    def eval(self) -> EvalPaths:
        return EvalPaths(self.folder / "eval")


@dataclass(frozen=True)
class AblationPaths:
    """An ablation's folder: ``table.csv/.md`` and its figures."""

    folder: Path

    @property
    def table(self) -> Path:
        """Stem of the table (``.csv`` and ``.md``)."""
        return self.folder / "table"

    @property
    def table_csv(self) -> Path:
        return self.folder / "table.csv"

    def figure(self, name: str) -> Path:
        return self.folder / f"{name}.png"

    def run(self, name: str) -> RunPaths:
        """A run the ablation made itself (outside a profile's runs)."""
        return RunPaths(self.folder / "runs" / name)


class Results:
    """The results folder of one profile, ``results/PROFILE`` by default.

    Args:
        root: the folder (``Results.of("cpu")`` = ``results/cpu``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, profile: str, base: str | Path = "results") -> Results:
        return cls(Path(base) / profile)

    def __repr__(self) -> str:
        return f"Results({str(self.root)!r})"

    @property
    def buffers(self) -> Path:
        """The expert buffer folder."""
        return self.root / "buffers"

    @property
    def buffer_json(self) -> Path:
        """The buffer's index (written last: the buffer is complete when it exists)."""
        return self.buffers / "buffer.json"

    def run(self, name: str) -> RunPaths:
        return RunPaths(self.root / "runs" / name)

    def baseline(self, name: str) -> EvalPaths:
        return EvalPaths(self.root / "baselines" / name)

    def evaluation(self, name: str) -> EvalPaths:
        """A further evaluation of a profile (its ``evals`` entry ``name``)."""
        return EvalPaths(self.root / "evals" / name)

    @property
    def study(self) -> Path:
        """The study stage's folder (tables, figures)."""
        return self.root / "study"

    def ablation(self, kind: str) -> AblationPaths:
        return AblationPaths(self.root / f"ablation_{kind}")

    def notebook(self, name: str) -> Path:
        """An executed notebook, ``notebooks/NAME.ipynb``."""
        return self.root / "notebooks" / f"{name}.ipynb"

    def log(self, job: str) -> Path:
        return self.root / "logs" / f"{job}.log"

    def benchmark(self, job: str) -> Path:
        """Snakemake's ``benchmark:`` TSV of a job."""
        return self.root / "benchmarks" / f"{job}.tsv"

    def all_runs(self) -> list[RunPaths]:
        """Every distillation run under this folder with a saved set: the profile's runs
        and the runs the ablation sweeps made themselves (sorted, profile runs first)."""
        sets = sorted(self.root.glob("runs/*/synset.json"))
        sets += sorted(self.root.glob("ablation_*/runs/*/synset.json"))
        return [RunPaths(p.parent) for p in sets]

    @property
    def benchmarks(self) -> Path:
        return self.root / "benchmarks"

    @property
    def pipeline_time(self) -> Path:
        return self.root / "pipeline_time.txt"


@dataclass
class EvalRecord:
    """What an evaluation writes to ``metrics.json`` (made by the library, read by the tables).

    Attributes:
        baseline: ``synset``, ``random_real`` or ``full``.
        label: how tables name the evaluated set.
        result: :meth:`lsslib.evaluate.EvalResult.to_dict` (accuracies are fractions).
        storage: :meth:`lsslib.parameterisations.Storage.to_dict` of the evaluated set.
        config: ``{"data": ..., "model": ..., "eval": ...}`` parameter dicts.
        hardware: the device line of :func:`lsslib.report.describe_device`.
        source: for a synthetic set, its run folder.
    """

    baseline: str
    label: str
    result: dict[str, Any]
    storage: dict[str, Any]
    config: dict[str, Any]
    hardware: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: str | Path) -> Path:
        """Write the record atomically as JSON."""
        atomic_write_json(path, asdict(self))
        return Path(path)

    @classmethod
    def read(cls, path: str | Path) -> EvalRecord:
        """Read a record.

        Raises:
            FileNotFoundError: the evaluation has not run.
        """
        d = read_json(path)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @property
    def mean(self) -> float:
        return float(self.result["mean"])

    @property
    def std(self) -> float:
        return float(self.result["std"])


def run_facts(run: RunPaths, name: str | None = None) -> dict[str, Any]:
    """One evaluated distillation run's facts for the tables.

    Reads the run's ``synset.json`` and ``eval/metrics.json``.

    Returns:
        A flat dict: ``run``, ``parameterisation``, ``title``, ``rank`` (``None`` when the
        parameterisation has none), ``schedule``, ``soft_labels``, ``images_per_class``,
        ``floats`` (everything stored: images or factors, labels, syn_lr), ``bytes``,
        ``budget_floats``, ``acc_mean``, ``acc_std`` (fractions), ``syn_lr``,
        ``iterations``.

    Raises:
        FileNotFoundError: a stage's output is missing.
    """
    meta = read_json(run.synset_json)
    rec = EvalRecord.read(run.eval.metrics)
    cfg = meta["config"]["distill"]
    st = meta["storage"]
    unit = parameterisations.get(meta["parameterisation"])
    return {
        "run": name or run.folder.name,
        "parameterisation": meta["parameterisation"],
        "title": unit.title,
        "rank": cfg["rank"] if unit.uses_rank else None,
        "schedule": cfg["schedule"],
        "soft_labels": cfg["soft_labels"],
        "images_per_class": meta["layout"]["images_per_class"],
        "floats": st["image_floats"] + st["label_floats"] + st["lr_floats"],
        "bytes": st["total_bytes"],
        "budget_floats": st["budget_floats"],
        "acc_mean": rec.mean,
        "acc_std": rec.std,
        "syn_lr": meta["syn_lr"],
        "iterations": meta["iterations"],
    }


def read_log(run: RunPaths) -> pd.DataFrame:
    """The per-iteration log (``log.csv``) of a distillation run.

    Raises:
        FileNotFoundError: the run has not started.
    """
    if not run.log_csv.is_file():
        raise FileNotFoundError(f"{run.log_csv} is missing: run the distillation stage first")
    return pd.read_csv(run.log_csv)


#: The file that marks a folder as a stage's artifact, and what that artifact is.
ARTIFACT_MARKERS = {
    "buffer.json": "an expert buffer",
    "synset.json": "a distillation run",
    "checkpoint.json": "a distillation run",
    "metrics.json": "an evaluation",
}

#: What each stage writes into its output folder: ``file`` or ``folder`` per entry.
STAGE_ENTRIES = {
    "buffers": {"buffer.json": "file"},
    "distill": {"synset.json": "file", "checkpoint.json": "file", "snapshots": "folder"},
    "evaluate": {"metrics.json": "file"},
    "summary": {"tables": "folder", "figures": "folder", "notebooks": "folder"},
    "study": {"effects.csv": "file", "findings.md": "file"},
    "ablation": {"table.csv": "file", "runs": "folder"},
    "results": {"runs": "folder", "buffers": "folder", "baselines": "folder"},
}
_OWN_KIND = {
    "buffers": "an expert buffer",
    "distill": "a distillation run",
    "evaluate": "an evaluation",
}


def artifact_kind(folder: str | Path) -> str | None:
    """What artifact ``folder`` holds (a value of :data:`ARTIFACT_MARKERS`), or ``None``."""
    folder = Path(folder)
    for marker, kind in ARTIFACT_MARKERS.items():
        if (folder / marker).exists():
            return kind
    return None


def check_path_kinds(name: str, path: str | Path, stage: str) -> None:
    """Refuse, before any work, an output folder that is a file (or lies under one), and
    a stage entry inside it of the wrong kind (``synset.json`` as a folder, ``snapshots``
    as a file).

    Raises:
        ValueError: naming the parameter ``name``, the path and what is allowed.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies under the file {p}"
                raise ValueError(
                    f"invalid parameter {name}={str(path)!r}: it {where}; allowed a folder "
                    "(existing or to be made)"
                )
            break
    for entry, want in STAGE_ENTRIES[stage].items():
        e = path / entry
        if e.exists() and e.is_dir() != (want == "folder"):
            raise ValueError(
                f"invalid parameter {name}={str(path)!r}: its {entry} is a "
                f"{'folder' if e.is_dir() else 'file'}; allowed a {want} there (move it away)"
            )


def check_out_dir(
    out_dir: str | Path,
    stage: str,
    *,
    subject: str | Path | None = None,
    baseline: str = "synset",
    name: str = "out_dir",
) -> None:
    """Refuse an output folder that is, or lies inside, another artifact's folder.

    A stage may write into a folder of its own kind (a run resumes, an evaluation of the
    same subject is redone) and an evaluation may write inside the run it evaluates
    (``RUN/eval``); nothing else. Also runs :func:`check_path_kinds`.

    Args:
        out_dir: the folder the stage would write.
        stage: ``buffers``, ``distill`` or ``evaluate``.
        subject: for ``evaluate``, the folder of the evaluated run (``None`` for a real
            baseline).
        baseline: for ``evaluate``, what is evaluated (``synset``, ``random_real``,
            ``full``); a folder holding the record of another subject is refused.

    Raises:
        ValueError: naming ``name``, the folder, the artifact it would mix with, and
            what is allowed.
    """
    check_path_kinds(name, out_dir, stage)
    out = Path(out_dir).resolve()
    own = artifact_kind(out)
    if own is not None and own != _OWN_KIND[stage]:
        raise ValueError(
            f"invalid parameter {name}={str(out_dir)!r}: the folder holds {own}; allowed a "
            f"folder of its own for {_OWN_KIND[stage]}"
        )
    home = Path(subject).resolve() if subject is not None else None
    for parent in out.parents:
        kind = artifact_kind(parent)
        if kind is not None and parent != home:
            raise ValueError(
                f"invalid parameter {name}={str(out_dir)!r}: it lies inside {kind} ({parent}); "
                f"allowed a folder outside every other artifact"
            )
    if stage == "evaluate" and own is not None:
        _check_same_subject(name, out_dir, read_json(out / "metrics.json"), baseline, home)


def _check_same_subject(
    name: str, out_dir: str | Path, record: dict[str, Any], baseline: str, home: Path | None
) -> None:
    """An existing evaluation record may be redone only for the subject it evaluated."""
    theirs = (
        record.get("baseline"),
        Path(record["source"]).resolve() if record.get("source") else None,
    )
    if theirs != (baseline, home):
        what = f"{theirs[0]} {theirs[1] or ''}".strip()
        raise ValueError(
            f"invalid parameter {name}={str(out_dir)!r}: it holds the evaluation of {what}; "
            f"allowed a folder of its own for {baseline} {home or ''}".rstrip()
        )
