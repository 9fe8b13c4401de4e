"""The study: what makes MTT-LSS work, from the records of a seeded profile.

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
  cells), with a 95 % t interval (:func:`lsslib.stats.paired_difference`) and the
  two-sided paired t test. The two :data:`PRIMARY_EFFECTS` are each tested at
  :data:`ALPHA` on their own; the other effects form one family whose p-values are
  Holm-corrected (:func:`lsslib.stats.holm`, family-wise :data:`ALPHA`). An effect
  *holds* when its (adjusted) p-value is at most :data:`ALPHA`; otherwise it is *within
  the noise*, reported with the minimum detectable effect at :data:`POWER`
  (:func:`lsslib.stats.minimum_detectable_effect`, exact noncentral t, from the observed
  std of the paired differences). The uncorrected verdict (95 % interval excludes 0)
  stays beside it.
- The **DD-Ranking metrics** (:func:`ddranking_table`) of every distilled cell: hard-label
  recovery, improvement over random and label-robust score per seed
  (:func:`lsslib.stats.label_robust_score`, on fractions).
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
from .results import EvalRecord, Results, check_path_kinds, read_json

__all__ = [
    "StudyRecords",
    "study_tables",
    "EFFECTS",
    "PRIMARY_EFFECTS",
    "effects_table",
    "ddranking_table",
]

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

    @property
    def primary(self) -> frozenset[str]:
        """The contrasts declared primary: the study block's ``primary`` (named before
        the run, in the profile), else :data:`PRIMARY_EFFECTS`.

        Raises:
            ValueError: a name that is no effect of :data:`EFFECTS`.
        """
        names = self.study.get("primary")
        if names is None:
            return PRIMARY_EFFECTS
        known = [e[0] for e in EFFECTS]
        for n in names:
            if n not in known:
                raise ValueError(
                    f"invalid parameter study.primary entry {n!r}: allowed one of "
                    + ", ".join(repr(k) for k in known)
                )
        return frozenset(names)

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


#: The study's two questions, tested each at :data:`ALPHA` outside the Holm family: does
#: the parameterisation itself beat pixels (at hard labels, so no label effect is mixed
#: in), and does the method as a whole beat pixel MTT as published.
PRIMARY_EFFECTS: frozenset[str] = frozenset(
    {"low-rank vs pixels, hard labels", "LSS vs pixel MTT as published"}
)
#: Level of every test (per primary contrast; family-wise for the Holm family).
ALPHA = 0.05
#: Power at which the minimum detectable effect is given.
POWER = 0.8

_INTERACTION = "interaction: parameterisation effect with soft minus with hard labels"


def effects_table(rec: StudyRecords) -> tuple[pd.DataFrame, list[stats.Difference]]:
    """The paired effects of :data:`EFFECTS` that the profile's cells allow, plus the
    interaction of the factorial (difference of the two parameterisation effects).

    Each row has the paired difference (pp) with its 95 % t and bootstrap intervals, the
    paired t test's p, the uncorrected verdict, how it was tested (primary, or member
    of the Holm family of the other effects), the Holm-adjusted p, the verdict after the
    correction, a simultaneous interval (the 95 % t interval for a primary; for a family
    member of ``m`` the Bonferroni t interval at level ``1 - ALPHA / m``, which covers all
    ``m`` means at once with probability at least 95 %; Holm's later steps are less
    strict than Bonferroni, so an effect can hold after Holm with this interval touching
    0) and the minimum detectable effect (pp, power :data:`POWER`) both at
    :data:`ALPHA` and at the level the effect was tested at (``ALPHA / m``, the
    strictest step of Holm's procedure, for a family member of ``m``).

    Returns:
        ``(table, the paired differences in its row order)``.
    """
    found: list[tuple[str, str, str, stats.Difference]] = []
    for name, a, b, what in EFFECTS:
        ba, bb = _role_base(rec, a), _role_base(rec, b)
        if not ba or not bb:
            continue
        d = stats.paired_difference(ba, rec.scores(ba), bb, rec.scores(bb))
        found.append((name, f"{ba} − {bb}", what, d))
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
        found.append(
            (
                _INTERACTION,
                f"({f['lowrank_soft']} − {f['pixels_soft']}) − ({f['lowrank_hard']} − {f['pixels_hard']})",
                "whether the low-rank gain depends on the labels",
                d,
            )
        )
    tested = {n: d.p_value for n, _, _, d in found if math.isfinite(d.p_value)}
    holm = stats.holm(tested, alpha=ALPHA, primary=rec.primary & set(tested))
    rows = [_effect_row(n, cells, what, d, holm.get(n)) for n, cells, what, d in found]
    return pd.DataFrame(rows), [d for *_, d in found]


def _mde(d: stats.Difference, alpha: float) -> float:
    """Minimum detectable effect (unit of the scores) of a paired difference's design."""
    if d.n_pairs < 2:
        return math.nan
    sd = float(np.std(d.differences, ddof=1))
    return stats.minimum_detectable_effect(sd, d.n_pairs, alpha=alpha, power=POWER)


def _effect_row(
    name: str, cells: str, what: str, d: stats.Difference, h: stats.HolmVerdict | None
) -> dict[str, Any]:
    ci = f"[{d.ci_low:+.1f}, {d.ci_high:+.1f}]" if math.isfinite(d.ci_low) else "n/a"
    boot = f"[{d.boot_low:+.1f}, {d.boot_high:+.1f}]" if math.isfinite(d.boot_low) else "n/a"
    if h is None:
        tested_as, alpha_tested = "n/a", math.nan
    elif h.primary:
        tested_as, alpha_tested = "primary", ALPHA
    else:
        tested_as, alpha_tested = f"Holm family of {h.family_size}", ALPHA / h.family_size
    mde_nominal = _mde(d, ALPHA)
    mde_tested = _mde(d, alpha_tested) if math.isfinite(alpha_tested) else math.nan
    sim = "n/a"
    if math.isfinite(alpha_tested):  # Bonferroni over the family: level 1 - alpha / m
        diffs = dict(zip(d.seeds, d.differences))
        b = stats.paired_difference(
            "a", diffs, "b", dict.fromkeys(diffs, 0.0), confidence=1 - alpha_tested
        )
        sim = f"[{b.ci_low:+.1f}, {b.ci_high:+.1f}]"
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
        "tested as": tested_as,
        "Holm-adjusted p": f"{h.p_adjusted:.3f}" if h and not h.primary else "-",
        "verdict after Holm": "n/a" if h is None else "holds" if h.holds else "within the noise",
        "simultaneous 95 % CI (pp)": sim,
        f"MDE at α {ALPHA:g} (pp)": _num(mde_nominal),
        "MDE at the α tested (pp)": _num(mde_tested),
        "_mean": d.mean,
        "_p": d.p_value,
        "_lo": d.ci_low,
        "_hi": d.ci_high,
    }


def _real_hard_accuracy(rec: StudyRecords) -> tuple[float, str] | None:
    """DD-Ranking's ``acc_real_hard`` at this scale: the experts' mean final test accuracy
    (networks trained on the real training split with hard labels), as a fraction, with
    a note on where it comes from; ``None`` where no buffer index is at hand."""
    for path in (rec.res.buffer_json, rec.res.root / "buffer.json"):  # results, records
        if path.is_file():
            acc = read_json(path)["accuracy"]
            finals = [float(v["test"][-1]) for v in acc.values()]
            note = (
                f"mean final test accuracy of the {len(finals)} experts "
                "(a fixed 2,000-image test subset)"
            )
            return float(np.mean(finals)), note
    return None


def _mean_sd(v: Sequence[float], scale: float = 100.0) -> str:
    x = np.asarray(v, dtype=np.float64) * scale
    return _fmt(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan)


def ddranking_table(rec: StudyRecords) -> pd.DataFrame:
    """DD-Ranking's label-robust metrics of every distilled cell, per seed, on fractions.

    For each cell and seed (:func:`lsslib.stats.label_robust_score`, weight 0.5):
    ``acc_syn_hard`` is the cell on hard labels (its argmax evaluation for a soft-label
    set), ``acc_syn_any`` the cell under its own labels, ``acc_rdm_any`` the same seed's
    random real images under the same kind of labels (hard, or the experts' soft labels
    for a soft-label cell), and ``acc_real_hard`` the experts' test accuracy
    (:func:`_real_hard_accuracy`; HLR and LRS are "n/a" without it). Mean ± sample std
    (ddof 1) over seeds, in pp for HLR and IOR and in % for LRS.

    Returns:
        One row per cell whose records allow the metrics; empty without a random-real
        baseline.
    """
    s = rec.study
    real = s.get("real")
    if not real:
        return pd.DataFrame()
    order = [s["factorial"][r] for r in FACTORIAL if r in s.get("factorial", {})]
    order += [s[k] for k in ("published", "strict") if s.get(k)]
    ref = _real_hard_accuracy(rec)
    rows = []
    for base in order:
        soft = bool((rec.run_meta(base) or {})["config"]["distill"]["soft_labels"])
        syn_hard = _eval_base(rec, base, "hard") if soft else base
        rdm_any = _eval_base(rec, real, "expert") if soft else real
        if not syn_hard or not rdm_any:
            continue
        sh, sa, ra = (
            {k: v / 100.0 for k, v in rec.scores(b).items()} for b in (syn_hard, base, rdm_any)
        )
        seeds = sorted(set(sh) & set(sa) & set(ra))
        ior = [sa[k] - ra[k] for k in seeds]
        if ref is not None:
            got = [stats.label_robust_score(ref[0], sh[k], sa[k], ra[k]) for k in seeds]
            hlr, lrs = [g.hlr for g in got], [g.lrs for g in got]
        rows.append(
            {
                "cell": base,
                "labels": "learned soft" if soft else "hard",
                "syn-hard": syn_hard,
                "random real, same labels": rdm_any,
                "seeds": len(seeds),
                "real-hard (%)": _num(100 * ref[0]) if ref else "n/a",
                "HLR (pp), ± over seeds": _mean_sd(hlr) if ref else "n/a",
                "IOR (pp), ± over seeds": _mean_sd(ior),
                "LRS (%), ± over seeds": _mean_sd(lrs) if ref else "n/a",
                "LRS per seed (%)": ", ".join(f"{100 * x:.1f}" for x in lrs) if ref else "n/a",
                "real-hard from": ref[1] if ref else "no buffer index",
            }
        )
    return pd.DataFrame(rows)


def _num(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def best_iteration_table(rec: StudyRecords) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Final vs best iteration per cell: the best chosen on the validation split, and
    (only to measure the optimism of MTT's practice) on the test set.

    Returns:
        ``(per cell summary, per cell and seed detail)``; accuracies in %.
    """
    snaps: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for name, e in rec.profile["evals"].items():
        if e["iteration"] in (None, 0):  # 0: the starting-set control, not a candidate
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


def choose_on_validation(val_accuracies: Mapping[Any, Sequence[float]]) -> Any:
    """The candidate whose validation accuracies have the highest mean; ties go to the
    first in order. It sees nothing but validation accuracies, so no choice it makes
    can depend on the test set.

    Args:
        val_accuracies: ``{candidate: [validation accuracy of each evaluation, ...]}``.

    Raises:
        ValueError: no candidate, or one without validation accuracies.
    """
    if not val_accuracies:
        raise ValueError("invalid parameter val_accuracies={}: allowed at least one candidate")
    best, best_mean = None, -math.inf
    for cand, accs in val_accuracies.items():
        if not accs or not all(math.isfinite(a) for a in accs):
            raise ValueError(
                f"invalid parameter val_accuracies[{cand!r}]={list(accs)!r}: allowed finite "
                "validation accuracies (run with val_per_class)"
            )
        m = float(np.mean(accs))
        if m > best_mean:
            best, best_mean = cand, m
    return best


def _variant_base(rec: StudyRecords, base: str, suffix: str) -> str | None:
    """The base name of a run's controlled evaluation (``R-it0``, ``R-lrX``), if any."""
    name = f"{base}{suffix}"
    return name if any(b == name for b, _ in rec.profile["seed_of"].values()) else None


def _contrast_rows(rec: StudyRecords, suffix: str, label: str) -> list[dict[str, Any]]:
    """The two primary contrasts, each cell taken at its ``suffix`` evaluation."""
    rows = []
    for name, a, b, _ in EFFECTS:
        if name not in rec.primary:
            continue
        ba, bb = _role_base(rec, a), _role_base(rec, b)
        va = _variant_base(rec, ba, suffix) if ba else None
        vb = _variant_base(rec, bb, suffix) if bb else None
        if va and vb:
            d = stats.paired_difference(va, rec.scores(va), vb, rec.scores(vb))
            rows.append({"contrast": f"{name}, {label}", "cells": f"{va} − {vb}",
                         "difference (pp, 95 % CI)": _ci_text(d), "seeds": d.n_pairs})  # fmt: skip
    return rows


def tuning_table(rec: StudyRecords) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Each tuned run's grid (the profile's ``tuning`` block): validation and test
    accuracy of every combination, and the one chosen on validation only
    (:func:`choose_on_validation`); test accuracy is shown, never used.

    Returns:
        ``(table, {run: chosen combination})``; empty without ``tuning``.
    """
    spec = rec.profile.get("tuning") or {}
    rows, chosen = [], {}
    for run, cands in (spec.get("runs") or {}).items():
        recs = {name: rec.record(name) for _, name in cands}
        val = {name: r.result.get("val_accuracies") or [math.nan] for name, r in recs.items()}
        best = choose_on_validation(val)
        for choice, name in cands:
            rows.append({
                "run": run,
                **{k: f"{v:g}" if isinstance(v, float) else v for k, v in choice.items()},
                "validation (%)": f"{100 * np.mean(val[name]):.1f}",
                "test (%), not used": f"{100 * recs[name].mean:.1f}",
                "chosen on validation": "yes" if name == best else "",
            })  # fmt: skip
            if name == best:
                chosen[run] = choice
    return pd.DataFrame(rows), chosen


def starting_set_table(rec: StudyRecords) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each cell's set as initialised (``R-it0``, before any distillation) against the
    distilled one, paired by seed: how much of a cell's accuracy is its starting set
    (for low-rank sets the SVD of real images, compressed real data at equal storage)
    and how much the distillation adds; and the primary contrasts at initialisation.

    Returns:
        ``(per cell table, primary contrasts at initialisation)``, accuracies in %;
        both empty without ``init_controls``.
    """
    rows = []
    for base in dict.fromkeys(b for b, _ in rec.profile["seed_of"].values()):
        init = _variant_base(rec, base, "-it0")
        if base not in rec.profile["runs"] or not init:
            continue
        a, b = rec.scores(base), rec.scores(init)
        d = stats.paired_difference(base, a, init, b)
        rows.append({
            "cell": base,
            "initialised (%)": _fmt(np.mean(list(b.values())), _sd(b)),
            "distilled (%)": _fmt(np.mean(list(a.values())), _sd(a)),
            "distillation gain (pp, 95 % CI)": _ci_text(d),
            "seeds": d.n_pairs,
        })  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(_contrast_rows(rec, "-it0", "as initialised"))


def common_lr_table(rec: StudyRecords) -> tuple[pd.DataFrame, pd.DataFrame, float | None]:
    """Every cell at its own learned ``syn_lr`` and at one common evaluation rate, chosen
    once for all cells on the validation split from the profile's ``common_lr.grid``
    (:func:`choose_on_validation`: the highest mean validation accuracy over every
    cell and seed), so the set is told apart from the step size it learned.

    Returns:
        ``(per cell table, primary contrasts at the common rate, the rate)``;
        empty tables and ``None`` without ``common_lr``.
    """
    grid = (rec.profile.get("common_lr") or {}).get("grid") or []
    cells = [b for b in rec.profile["runs"] if rec.profile["seed_of"][b][0] == b]
    if not grid or not cells:
        return pd.DataFrame(), pd.DataFrame(), None
    val = {}
    for lr in grid:
        names = [n for c in cells for n in rec.names_of(profiles.common_lr_name(c, lr)).values()]
        val[lr] = [float(np.mean(rec.record(n).result.get("val_accuracies") or [math.nan]))
                   for n in names]  # fmt: skip
    chosen = choose_on_validation(val)
    suffix = "-lr" + f"{chosen:g}"
    rows = []
    for c in cells:
        a, b = rec.scores(c), rec.scores(f"{c}{suffix}")
        d = stats.paired_difference(f"{c}{suffix}", b, c, a)
        rows.append({
            "cell": c,
            "at its learned syn_lr (%)": _fmt(np.mean(list(a.values())), _sd(a)),
            f"at the common rate {chosen:g} (%)": _fmt(np.mean(list(b.values())), _sd(b)),
            "common − learned (pp, 95 % CI)": _ci_text(d),
        })  # fmt: skip
    contrasts = _contrast_rows(rec, suffix, f"at the common rate {chosen:g}")
    return pd.DataFrame(rows), pd.DataFrame(contrasts), float(chosen)


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
    """The effects in sentences generated from the numbers (the book includes them):
    each verdict after Holm's correction, the minimum detectable effect of every effect
    within the noise, and how many would hold with the primary contrasts in the family.
    """
    rows = effects.to_dict("records")
    prim = [d["effect"] for d in rows if d["tested as"] == "primary"]
    m = len(rows) - len(prim)
    lines = [
        f"Measured over {len(seeds)} distillation seeds ({', '.join(map(str, seeds))}); "
        "each difference is paired by seed, with a 95 % t interval and a two-sided "
        f"paired t test. The primary contrasts ({', '.join(f'*{p}*' for p in prim)}) are "
        f"each tested at α = {ALPHA:g}; the other {m} effects form one family, corrected "
        f"with Holm's step-down procedure at a family-wise α = {ALPHA:g}. A difference "
        f"*holds* when its p-value (Holm-adjusted in the family) is at most {ALPHA:g}; "
        "otherwise it is *within the noise*, given with its minimum detectable effect "
        f"(MDE): the smallest true difference this design detects with {POWER * 100:g} % power, "
        "from the observed spread of the paired differences (exact noncentral t), at the "
        f"level the effect was tested at (α/{m} in the family), with the MDE at an "
        f"uncorrected α = {ALPHA:g} beside it. A family member that holds is given with its "
        f"simultaneous 95 % interval (Bonferroni, level 1 − α/{m}).",
        "",
    ]
    for d in rows:
        head = (
            f"- **{d['effect']}** ({d['cells (a − b)']}): {d['difference (pp)']} pp, 95 % CI "
            f"{d['95 % t CI (pp)']}, p {d['p (paired t)']}"
        )
        if d["tested as"] == "primary":
            head += f" (primary): {d['verdict after Holm']}"
        else:
            head += f", Holm-adjusted p {d['Holm-adjusted p']}: {d['verdict after Holm']}"
            if d["verdict after Holm"] != d["verdict"]:
                head += f" after the correction ({d['verdict']} uncorrected)"
            elif d["verdict after Holm"] == "holds":
                head += f", simultaneous 95 % CI {d['simultaneous 95 % CI (pp)']}"
        if d["verdict after Holm"] != "holds":
            head += (
                f"; MDE {d['MDE at the α tested (pp)']} pp "
                f"({d[f'MDE at α {ALPHA:g} (pp)']} pp uncorrected)"
            )
        lines.append(head + ".")
    p_all = {d["effect"]: d["_p"] for d in rows if math.isfinite(d["_p"])}
    if p_all and prim:
        held = [k for k, v in stats.holm(p_all, alpha=ALPHA).items() if v.holds]
        lines += [
            "",
            f"Were the primary contrasts in the family too (all {len(p_all)} effects "
            f"Holm-corrected together), {len(held)} would hold"
            + (": " + ", ".join(f"*{k}*" for k in held) if held else "")
            + ".",
        ]
    return "\n".join(lines) + "\n"


def study_tables(
    results_dir: str | Path, profile: str | Path, out_dir: str | Path
) -> dict[str, pd.DataFrame]:
    """Write the study's tables, figure and generated findings into ``out_dir``.

    Writes ``cells``, ``effects``, ``ddranking``, ``best_iteration``,
    ``best_iteration_seeds`` and ``crossarch`` (``.csv`` + ``.md``), with
    ``init_controls`` also ``starting_set`` and ``starting_set_contrasts``, with ``tuning``
    also ``tuning``, with
    ``common_lr`` also ``common_lr`` and ``common_lr_contrasts``; ``effects.png``, ``findings.md`` (the effects in
    sentences) and ``study_info.md`` (the run's provenance box).

    Returns:
        The tables by name.

    Raises:
        ValueError: the profile has no study block; ``results_dir`` is no folder;
            ``out_dir`` is a file (or its ``effects.csv``/``findings.md`` are folders).
        FileNotFoundError: a record is missing.
    """
    if not Path(results_dir).is_dir():
        raise ValueError(
            f"invalid parameter results_dir={str(results_dir)!r}: no such folder; allowed the "
            "results of a study profile (make study) or a folder of its records of record "
            "(records/study in the repository)"
        )
    check_path_kinds("out_dir", out_dir, "study")
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
        "ddranking": ddranking_table(rec),
        "best_iteration": best,
        "best_iteration_seeds": best_detail,
        "crossarch": xa,
    }
    tuning, _chosen = tuning_table(rec)
    init, init_contrasts = starting_set_table(rec)
    common, common_contrasts, _rate = common_lr_table(rec)
    controls = {
        "tuning": tuning,
        "starting_set": init,
        "starting_set_contrasts": init_contrasts,
        "common_lr": common,
        "common_lr_contrasts": common_contrasts,
    }
    tables.update({k: v for k, v in controls.items() if len(v)})  # only what the profile has
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
