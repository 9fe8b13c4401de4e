"""The study of issue 12: what makes MTT-LSS work, from the records of a seeded profile.

Reads only evaluation records (``metrics.json``) and set metadata of a profile with
``seeds`` and a ``study`` block (``lsslib/_profiles/study.yaml``); trains nothing.
Every number is a fraction of the test set in the records and a percentage here.

Conventions (the book's "What makes it work" page states them too):

- A **seed's score** is the mean test accuracy over its evaluation networks.
- A **cell** (one configuration) reports the mean ± sample std (ddof 1) of its seed
  scores, and beside it the eval-net std (ddof 0, MTT's ±) averaged over seeds.
- An **effect** is a difference between two cells **paired by seed** (the seeds share
  the expert draws' generator state only through the seed number; pairing removes the
  part of the noise that a seed's initial real images and DSA draws share across
  cells), with a 95 % t interval (:func:`lsslib.stats.paired_difference`). An effect
  *holds* when its interval excludes 0; otherwise it is *within the noise*.
- The **best iteration** is chosen on a validation split of held-out training images
  (:func:`lsslib.data.validation_split`), never on the test set; the test-chosen
  ("peeking", as MTT reports) value is shown beside it only to measure the optimism.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import __version__, parameterisations, plots, profiles, report, stats
from .artifacts import atomic_write_text
from .results import EvalRecord, Results, read_json

__all__ = ["StudyRecords", "study_tables", "EFFECTS"]

#: The factorial's roles (profile ``study.factorial``).
FACTORIAL = ("pixels_hard", "pixels_soft", "lowrank_hard", "lowrank_soft")


class StudyRecords:
    """The seeded records of an expanded profile, keyed by base name and seed.

    Args:
        results_dir: the profile's results folder.
        profile: the profile (name, path, or loaded dict).

    Raises:
        ValueError: the profile has no ``study`` block.
        FileNotFoundError: a record is missing (its stage has not run).
    """

    def __init__(self, results_dir: str | Path, profile: str | Path | Mapping[str, Any]) -> None:
        raw = profile if isinstance(profile, Mapping) else profiles.load_profile(profile)
        self.profile = profiles.expand_profile(raw)
        if not self.profile.get("study"):
            raise ValueError(
                f"invalid parameter profile={self.profile.get('name')!r}: allowed a profile "
                "with a study block (e.g. study)"
            )
        self.res = Results(results_dir)
        self.study = dict(self.profile["study"])
        self.seeds = list(self.profile.get("seeds") or [0])
        self._records: dict[str, EvalRecord] = {}

    def _path(self, name: str) -> Path:
        p = self.profile
        if name in p["runs"]:
            return self.res.run(name).eval.metrics
        if name in p["baselines"]:
            return self.res.baseline(name).metrics
        return self.res.evaluation(name).metrics

    def record(self, name: str) -> EvalRecord:
        """The evaluation record of a run, baseline or further evaluation (any seed's name)."""
        if name not in self._records:
            self._records[name] = EvalRecord.read(self._path(name))
        return self._records[name]

    def names_of(self, base: str) -> dict[int, str]:
        """``{seed: name}`` of a base run, baseline or evaluation."""
        return {seed: n for n, (b, seed) in self.profile["seed_of"].items() if b == base}

    def nets(self, base: str) -> dict[int, list[float]]:
        """``{seed: [test accuracy (%) of each eval net]}``."""
        return {
            s: [100 * a for a in self.record(n).result["accuracies"]]
            for s, n in sorted(self.names_of(base).items())
        }

    def scores(self, base: str) -> dict[int, float]:
        """``{seed: mean test accuracy (%) over the eval nets}``."""
        return stats.seed_scores(self.nets(base))

    def storage(self, base: str) -> dict[str, Any]:
        """The storage record of the first seed's evaluation (equal across seeds)."""
        return self.record(self.names_of(base)[self.seeds[0]]).storage

    def run_meta(self, base: str) -> dict[str, Any] | None:
        """The distilled set's metadata of a run's first seed (``None`` for baselines)."""
        name = self.names_of(base)[self.seeds[0]]
        if name in self.profile["runs"]:
            return read_json(self.res.run(name).synset_json)
        return None


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if math.isfinite(std) else f"{mean:.1f}"


def _describe_cell(rec: StudyRecords, base: str) -> dict[str, Any]:
    meta = rec.run_meta(base)
    st = rec.storage(base)
    cell = stats.summarise_cell(rec.nets(base))
    if meta is not None:
        cfg = meta["config"]["distill"]
        unit = parameterisations.get(meta["parameterisation"])
        kind = meta["parameterisation"] + (f" r={cfg['rank']}" if unit.uses_rank else "")
        labels = "learned soft" if cfg["soft_labels"] else "hard"
        if cfg.get("strict_budget") and cfg["soft_labels"]:
            labels += " (counted in the budget)"
        schedule, per_class = cfg["schedule"], meta["layout"]["images_per_class"]
    else:
        kind, labels, schedule, per_class = "random real", "hard", "-", st["images_per_class"]
    return {
        "cell": base,
        "set": kind,
        "labels": labels,
        "schedule": schedule,
        "images/class": per_class,
        "stored floats": st["image_floats"] + st["label_floats"] + st["lr_floats"],
        "bytes": st["total_bytes"],
        "seeds": cell.n_seeds,
        "accuracy (%), ± over seeds": _fmt(cell.mean, cell.std_seeds),
        "± over eval nets": f"{cell.std_nets:.1f}",
        "seed scores (%)": ", ".join(f"{v:.1f}" for v in cell.seed_scores),
        "_mean": cell.mean,
    }


def _eval_base(rec: StudyRecords, of: str, labels: str) -> str | None:
    """The base name of the further evaluation of base run/baseline ``of`` with ``labels``."""
    for name, e in rec.profile["evals"].items():
        base, seed = rec.profile["seed_of"][name]
        if seed != rec.seeds[0] or e["cross_arch"] or e["iteration"] is not None:
            continue
        if e["of"] == of and e["labels"] == labels:
            return base
    return None


def cells_table(rec: StudyRecords) -> pd.DataFrame:
    """One row per cell: the factorial, pixel MTT as published, strict LSS, random real,
    and the label-robust evaluations (a soft set on its argmax; random real with the
    experts' soft labels)."""
    s = rec.study
    order = [s["factorial"][r] for r in FACTORIAL if r in s.get("factorial", {})]
    order += [s[k] for k in ("published", "strict") if s.get(k)]
    rows = [_describe_cell(rec, b) for b in order]
    for b in order:
        hb = _eval_base(rec, b, "hard")
        if hb:
            row = _describe_cell(rec, hb)
            row.update(cell=hb, set=rows[order.index(b)]["set"], labels="argmax of the soft labels")
            row["schedule"] = rows[order.index(b)]["schedule"]
            row["images/class"] = rows[order.index(b)]["images/class"]
            rows.append(row)
    if s.get("real"):
        rows.append(_describe_cell(rec, s["real"]))
        eb = _eval_base(rec, s["real"], "expert")
        if eb:
            row = _describe_cell(rec, eb)
            row.update(cell=eb, set="random real", labels="expert soft (DATM's rule)")
            rows.append(row)
    return pd.DataFrame(rows)


#: The effects the study reports: (name, cell a, cell b, what a - b measures). Cells are
#: study roles (``factorial`` roles, ``published``, ``strict``, ``real``) or
#: ``hard:ROLE`` (the role's set on the argmax of its labels), ``expert:real``.
EFFECTS: tuple[tuple[str, str, str, str], ...] = (
    (
        "low-rank vs pixels, hard labels",
        "lowrank_hard",
        "pixels_hard",
        "the parameterisation at fixed (hard) labels",
    ),
    (
        "low-rank vs pixels, soft labels",
        "lowrank_soft",
        "pixels_soft",
        "the parameterisation at fixed (learned soft) labels",
    ),
    (
        "soft vs hard labels, pixels",
        "pixels_soft",
        "pixels_hard",
        "the soft labels at a fixed parameterisation (pixels)",
    ),
    (
        "soft vs hard labels, low-rank",
        "lowrank_soft",
        "lowrank_hard",
        "the soft labels at a fixed parameterisation (low-rank)",
    ),
    (
        "LSS vs pixel MTT as published",
        "lowrank_soft",
        "published",
        "everything at once: parameterisation, labels, schedule",
    ),
    ("linear vs fixed schedule, pixels hard", "pixels_hard", "published", "the schedule alone"),
    (
        "strict vs uncounted labels, LSS",
        "strict",
        "lowrank_soft",
        "counting the labels in the budget",
    ),
    (
        "soft labels vs their argmax, LSS",
        "lowrank_soft",
        "hard:lowrank_soft",
        "what the learned labels add to LSS's images",
    ),
    (
        "LSS images (argmax) vs pixel MTT as published",
        "hard:lowrank_soft",
        "published",
        "what LSS's images carry, without labels",
    ),
    (
        "expert soft labels vs hard, random real",
        "expert:real",
        "real",
        "what soft labels alone do for real images",
    ),
)


def _role_base(rec: StudyRecords, role: str) -> str | None:
    s = rec.study
    if role.startswith("hard:"):
        base = _role_base(rec, role[5:])
        return _eval_base(rec, base, "hard") if base else None
    if role.startswith("expert:"):
        base = _role_base(rec, role[7:])
        return _eval_base(rec, base, "expert") if base else None
    if role in FACTORIAL:
        return (s.get("factorial") or {}).get(role)
    return s.get(role)


def effects_table(rec: StudyRecords) -> tuple[pd.DataFrame, list[stats.Difference]]:
    """The paired effects of :data:`EFFECTS` that the profile's cells allow, plus the
    interaction of the factorial (difference of the two parameterisation effects)."""
    rows, diffs = [], []
    for name, a, b, what in EFFECTS:
        ba, bb = _role_base(rec, a), _role_base(rec, b)
        if not ba or not bb:
            continue
        d = stats.paired_difference(ba, rec.scores(ba), bb, rec.scores(bb))
        diffs.append(d)
        rows.append(_effect_row(name, f"{ba} − {bb}", what, d))
    f = rec.study.get("factorial") or {}
    if set(FACTORIAL) <= set(f):
        lh, ph, ls, ps = (
            rec.scores(f[r]) for r in ("lowrank_hard", "pixels_hard", "lowrank_soft", "pixels_soft")
        )
        common = sorted(set(lh) & set(ph) & set(ls) & set(ps))
        soft_eff = {s: ls[s] - ps[s] for s in common}
        hard_eff = {s: lh[s] - ph[s] for s in common}
        d = stats.paired_difference(
            "parameterisation effect, soft", soft_eff, "parameterisation effect, hard", hard_eff
        )
        diffs.append(d)
        rows.append(
            _effect_row(
                "interaction: parameterisation effect with soft minus with hard labels",
                f"({f['lowrank_soft']} − {f['pixels_soft']}) − ({f['lowrank_hard']} − {f['pixels_hard']})",
                "whether the low-rank gain depends on the labels",
                d,
            )
        )
    return pd.DataFrame(rows), diffs


def _effect_row(name: str, cells: str, what: str, d: stats.Difference) -> dict[str, Any]:
    ci = f"[{d.ci_low:+.1f}, {d.ci_high:+.1f}]" if math.isfinite(d.ci_low) else "n/a"
    boot = f"[{d.boot_low:+.1f}, {d.boot_high:+.1f}]" if math.isfinite(d.boot_low) else "n/a"
    return {
        "effect": name,
        "cells (a − b)": cells,
        "measures": what,
        "paired seeds": d.n_pairs,
        "difference (pp)": f"{d.mean:+.1f}",
        "95 % t CI (pp)": ci,
        "bootstrap CI (pp)": boot,
        "p (paired t)": f"{d.p_value:.3f}" if math.isfinite(d.p_value) else "n/a",
        "verdict": "holds" if d.significant else "within the noise",
        "_mean": d.mean,
        "_lo": d.ci_low,
        "_hi": d.ci_high,
    }


def best_iteration_table(rec: StudyRecords) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Final vs best iteration per cell: the best chosen on the validation split, and
    (only to measure the optimism of MTT's practice) on the test set.

    Returns:
        ``(per cell summary, per cell and seed detail)``; accuracies in %.
    """
    snaps: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for name, e in rec.profile["evals"].items():
        if e["iteration"] is None:
            continue
        run = e["of"]
        base, seed = rec.profile["seed_of"][run]
        snaps.setdefault(base, {}).setdefault(seed, []).append((e["iteration"], name))
    detail, summary_rows = [], []
    for base in snaps:
        finals, bests, peeks = {}, {}, {}
        for seed, name in sorted(rec.names_of(base).items()):
            final = rec.record(name)
            cands = [(int(final.extra.get("iteration", 0)) or 10**9, final)]
            cands += [(it, rec.record(n)) for it, n in sorted(snaps[base].get(seed, []))]
            vals = [(np.mean(r.result.get("val_accuracies") or [np.nan]), it, r) for it, r in cands]
            if any(not np.isfinite(v) for v, _, _ in vals):
                raise ValueError(
                    f"{base} seed {seed}: an evaluation without validation accuracy; run the "
                    "profile with best_iteration.val_per_class"
                )
            v_best = max(vals, key=lambda t: (t[0], t[1]))  # ties: the later iteration
            t_best = max(cands, key=lambda t: (t[1].mean, t[0]))
            finals[seed] = 100 * final.mean
            bests[seed] = 100 * v_best[2].mean
            peeks[seed] = 100 * t_best[1].mean
            detail.append(
                {
                    "cell": base,
                    "seed": seed,
                    "final test (%)": f"{finals[seed]:.1f}",
                    "validation per iteration (%)": ", ".join(
                        f"{it if it < 10**9 else 'final'}: {100 * v:.1f}"
                        for v, it, _ in sorted(vals, key=lambda t: t[1])
                    ),
                    "chosen on validation": v_best[1] if v_best[1] < 10**9 else "final",
                    "its test (%)": f"{bests[seed]:.1f}",
                    "chosen on test (peeking)": t_best[0] if t_best[0] < 10**9 else "final",
                    "its test (%) ": f"{peeks[seed]:.1f}",
                }
            )
        d_val = stats.paired_difference("best on validation", bests, "final", finals)
        d_peek = stats.paired_difference("best on test", peeks, "final", finals)
        summary_rows.append(
            {
                "cell": base,
                "final (%)": _fmt(np.mean(list(finals.values())), _sd(finals)),
                "best on validation (%)": _fmt(np.mean(list(bests.values())), _sd(bests)),
                "best on validation − final (pp, 95 % CI)": _ci_text(d_val),
                "best on test, peeking (%)": _fmt(np.mean(list(peeks.values())), _sd(peeks)),
                "peeking − final (pp)": f"{d_peek.mean:+.1f}",
            }
        )
    return pd.DataFrame(summary_rows), pd.DataFrame(detail)


def _sd(d: Mapping[int, float]) -> float:
    v = list(d.values())
    return float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def _ci_text(d: stats.Difference) -> str:
    if not math.isfinite(d.ci_low):
        return f"{d.mean:+.1f}"
    return f"{d.mean:+.1f} [{d.ci_low:+.1f}, {d.ci_high:+.1f}]"


def crossarch_table(rec: StudyRecords) -> pd.DataFrame:
    """Sets (rows) x evaluation networks (columns): mean ± std over the eval nets of one
    distillation seed (the first), the distillation network's own column first."""
    cols: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for name, e in rec.profile["evals"].items():
        if not e["cross_arch"]:
            continue
        r = rec.record(name)
        base_set = rec.profile["seed_of"].get(e["of"], (e["of"], 0))[0]
        net = name.split("-", 2)[-1] if name.startswith("xa-") else e["arch"]
        net = f"{net}: " + (e["arch"] if e["arch"] != "convnet" else _net_text(e["params"]))
        if net not in order:
            order.append(net)
        cols.setdefault(base_set, {})[net] = _fmt(100 * r.mean, 100 * r.std)
    rows = []
    for base_set, by_net in cols.items():
        own = rec.record(rec.names_of(base_set)[rec.seeds[0]])
        spec = own.config["model"]
        row = {
            "set": base_set,
            f"distillation net: {_net_text(spec)}": _fmt(100 * own.mean, 100 * own.std),
        }
        row.update({n: by_net.get(n, "") for n in order})
        rows.append(row)
    return pd.DataFrame(rows)


def _net_text(p: Mapping[str, Any]) -> str:
    return f"ConvNetD{p['net_depth']} w{p['net_width']} {p['net_norm']}"


def findings_markdown(effects: pd.DataFrame, seeds: Sequence[int]) -> str:
    """The effects in sentences generated from the numbers (the book includes them)."""
    lines = [
        f"Measured over {len(seeds)} distillation seeds ({', '.join(map(str, seeds))}); "
        "each difference is paired by seed, with a 95 % t interval. "
        "A difference *holds* when its interval excludes 0.",
        "",
    ]
    for d in effects.to_dict("records"):
        lines.append(
            f"- **{d['effect']}** ({d['cells (a − b)']}): {d['difference (pp)']} pp, 95 % CI "
            f"{d['95 % t CI (pp)']}, {d['verdict']}."
        )
    return "\n".join(lines) + "\n"


def study_tables(
    results_dir: str | Path, profile: str | Path, out_dir: str | Path
) -> dict[str, pd.DataFrame]:
    """Write the study's tables, figure and generated findings into ``out_dir``.

    Writes ``cells``, ``effects``, ``best_iteration``, ``best_iteration_seeds`` and
    ``crossarch`` (``.csv`` + ``.md``), ``effects.png``, ``findings.md`` (the effects in
    sentences) and ``study_info.md`` (the run's provenance box).

    Returns:
        The tables by name.

    Raises:
        ValueError: the profile has no study block.
        FileNotFoundError: a record is missing.
    """
    rec = StudyRecords(results_dir, profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = cells_table(rec)
    effects, _ = effects_table(rec)
    best, best_detail = best_iteration_table(rec)
    xa = crossarch_table(rec)
    tables = {
        "cells": cells,
        "effects": effects,
        "best_iteration": best,
        "best_iteration_seeds": best_detail,
        "crossarch": xa,
    }
    for name, df in tables.items():
        visible = df[[c for c in df.columns if not c.startswith("_")]]
        report.write_table(visible, out / name)
    if len(effects):
        report.save_figure(plots.effects_figure(effects), out / "effects.png")
    atomic_write_text(out / "findings.md", findings_markdown(effects, rec.seeds))
    atomic_write_text(out / "study_info.md", study_info_markdown(rec))
    return tables


def study_info_markdown(rec: StudyRecords) -> str:
    """The MyST box naming the run behind the study's numbers: profile, seeds, eval nets,
    hardware, software, the date of the newest record and the stage jobs' time."""
    names = [*rec.profile["runs"], *rec.profile["baselines"], *rec.profile["evals"]]
    newest = max(rec._path(n).stat().st_mtime for n in names)
    date = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).date().isoformat()
    first = (
        rec.record(rec.study["factorial"]["lowrank_soft"]) if rec.study.get("factorial") else None
    )
    hardware = first.hardware if first else "?"
    nets = len(first.result["accuracies"]) if first else "?"
    seconds = 0.0
    for tsv in rec.res.benchmarks.glob("*.tsv"):
        try:
            seconds += float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])
        except (ValueError, KeyError, IndexError, pd.errors.ParserError):
            continue
    return (
        ":::{admonition} The run behind the study's numbers\n"
        ":class: note\n"
        f"Profile **{rec.profile['name']}** ({str(rec.profile.get('description') or '').strip()}) "
        f"· distillation seeds {', '.join(map(str, rec.seeds))} · {nets} evaluation networks per "
        f"set · hardware: {hardware} · torch {torch.__version__} · lsslib {__version__} · "
        f"date {date} · stage jobs {seconds / 60:.1f} min in all (two at a time).\n"
        ":::\n"
    )
