"""Statistics over distillation seeds: a cell's summary, paired differences of cells.

A *cell* of a study (e.g. "pixels + hard labels") is distilled with several
distillation seeds ``s``; each seed's synthetic set is scored by several
evaluation networks. Two levels of noise follow:

* between evaluation networks of one synthetic set (what MTT reports as its
  ``+-``: the population std over eval nets), and
* between distillation seeds (the noise that decides whether one cell beats
  another).

A seed's *score* is the mean accuracy over its eval nets (:func:`seed_scores`).
:func:`summarise_cell` reports both spreads; :func:`paired_difference` compares
two cells seed by seed (seed ``s`` of cell A against seed ``s`` of cell B), which
removes whatever the seed shares between cells (real-data subset, initial images,
expert trajectories) from the comparison.

Every function is unit-agnostic: accuracies may be fractions in ``[0, 1]`` or
percents, and every result is in the unit of its input.

Two intervals come with a difference, and they are not equals:

* the **t interval** (Student's t with ``n_pairs - 1`` degrees of freedom) is the
  one :attr:`Difference.significant` uses. With 3 seeds it is wide on purpose:
  ``t_{0.975, 2} = 4.303``, so the half-width is ``4.303 * sd / sqrt(3)``;
* the **percentile bootstrap** interval is reported beside it. Over a handful of
  pairs it is degenerate-ish: 3 pairs have only 10 distinct resamples, every
  resample mean lies within ``[min, max]`` of the differences, and it ignores
  the t tail, so it is markedly narrower than the t interval and must not be
  read as evidence on its own.

The t quantile and the p-value come from :mod:`scipy.stats`, imported on first
use (summaries need numpy only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CellSummary",
    "Difference",
    "seed_scores",
    "summarise_cell",
    "paired_difference",
]


def _scipy_t():
    """``scipy.stats.t``, with a clear error where scipy is not installed."""
    try:
        from scipy import stats as sps
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lsslib.stats needs scipy for the t interval and the p-value "
            "(pip install scipy; it belongs in lsslib's dependencies)"
        ) from exc
    return sps.t


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    return c


def seed_scores(per_seed_nets: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """Each seed's score: the mean accuracy over its evaluation networks.

    Args:
        per_seed_nets: ``{seed: [acc of eval net 0, acc of eval net 1, ...]}``;
            accuracies as fractions or percents (the result has the same unit).

    Returns:
        ``{seed: mean over its eval nets}``, seeds in ascending order.

    Raises:
        ValueError: if there is no seed, a seed has no eval net, or an accuracy
            is not finite (NaN or inf).
    """
    return {seed: float(nets.mean()) for seed, nets in _nets_by_seed(per_seed_nets).items()}


def _nets_by_seed(per_seed_nets: Mapping[int, Sequence[float]]) -> dict[int, np.ndarray]:
    """Validated ``{int seed: float64 array of eval-net accuracies}``, ascending seeds."""
    if len(per_seed_nets) == 0:
        raise ValueError("no seeds: per_seed_nets is empty")
    out: dict[int, np.ndarray] = {}
    for seed in sorted(per_seed_nets):
        nets = np.asarray(per_seed_nets[seed], dtype=np.float64).reshape(-1)
        if nets.size == 0:
            raise ValueError(f"seed {seed} has no evaluation nets")
        if not np.all(np.isfinite(nets)):
            raise ValueError(f"seed {seed} has a non-finite accuracy: {nets.tolist()}")
        out[int(seed)] = nets
    return out


@dataclass(frozen=True)
class CellSummary:
    """One cell of a study, summarised over its distillation seeds.

    All values are in the unit of the input accuracies (fraction or percent).

    Attributes:
        n_seeds: number of distillation seeds.
        mean: mean over seeds of the seed scores (a seed's score is the mean over
            its eval nets).
        std_seeds: sample std (``ddof=1``) over the seed scores; ``nan`` with one
            seed. This is the noise that matters when comparing cells.
        std_nets: mean over seeds of the population std (``ddof=0``) over that
            seed's eval nets (MTT's ``+-``); ``0.0`` where every seed has one net.
        seed_scores: the seed scores, in ascending seed order.
    """

    n_seeds: int
    mean: float
    std_seeds: float
    std_nets: float
    seed_scores: tuple[float, ...]


def summarise_cell(per_seed_nets: Mapping[int, Sequence[float]]) -> CellSummary:
    """Summarise one cell: seed scores, their mean and both spreads.

    Args:
        per_seed_nets: ``{seed: [acc of eval net 0, acc of eval net 1, ...]}``.
            Seeds may have different numbers of eval nets.

    Returns:
        A :class:`CellSummary` in the unit of the input.

    Raises:
        ValueError: if ``per_seed_nets`` is empty, a seed has no eval net, or an
            accuracy is not finite.
    """
    nets = _nets_by_seed(per_seed_nets)
    vals = np.array([x.mean() for x in nets.values()], dtype=np.float64)
    n = int(vals.size)
    std_seeds = float(vals.std(ddof=1)) if n >= 2 else math.nan
    std_nets = float(np.mean([x.std(ddof=0) for x in nets.values()]))
    return CellSummary(
        n_seeds=n,
        mean=float(vals.mean()),
        std_seeds=std_seeds,
        std_nets=std_nets,
        seed_scores=tuple(float(v) for v in vals),
    )


def _signed(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:+.{digits}f}"


@dataclass(frozen=True)
class Difference:
    """Cell ``a`` minus cell ``b``, paired by distillation seed.

    All values except ``p_value`` are in the unit of the input scores.

    Attributes:
        a, b: the cells' names.
        n_pairs: number of seeds both cells have.
        mean: mean over paired seeds of ``score_a - score_b``.
        ci_low, ci_high: the t interval (``n_pairs - 1`` degrees of freedom) of the
            mean difference at level ``confidence``; ``nan`` if ``n_pairs < 2``.
        boot_low, boot_high: percentile bootstrap interval of the mean paired
            difference at level ``confidence``, reported beside the t interval
            (degenerate-ish over few pairs; see the module docstring); ``nan`` if
            ``n_pairs < 2``.
        p_value: two-sided paired t test of "mean difference = 0"; ``nan`` if
            ``n_pairs < 2``. If every difference is the same: ``1.0`` when they
            are all 0, else ``0.0`` (no noise at all).
        significant: whether the **t** interval excludes 0 (never with one pair).
        confidence: the level of both intervals.
        seeds: the paired seeds, ascending.
        differences: ``score_a - score_b`` per paired seed, in ``seeds`` order.
    """

    a: str
    b: str
    n_pairs: int
    mean: float
    ci_low: float
    ci_high: float
    boot_low: float
    boot_high: float
    p_value: float
    significant: bool
    confidence: float = 0.95
    seeds: tuple[int, ...] = ()
    differences: tuple[float, ...] = ()

    def describe(self, unit: str = " pp", *, scale: float = 1.0, digits: int = 1) -> str:
        """One line for a report.

        e.g. ``"+4.1 pp [95 % CI +1.2, +7.0] over 3 paired seeds: holds"``, or
        ``"... : within the noise"`` when the t interval contains 0.

        Args:
            unit: appended to every number (``" pp"`` for percent points, ``""``
                for fractions).
            scale: multiplies every number first (``100`` turns fractions into
                percent points).
            digits: decimals shown.
        """
        m = _signed(self.mean * scale, digits)
        seeds = f"{self.n_pairs} paired seed{'s' if self.n_pairs != 1 else ''}"
        if self.n_pairs < 2:
            return f"{m}{unit} over {seeds}: no interval from a single pair"
        level = f"{self.confidence * 100:g} %"
        lo = _signed(self.ci_low * scale, digits)
        hi = _signed(self.ci_high * scale, digits)
        verdict = "holds" if self.significant else "within the noise"
        return f"{m}{unit} [{level} CI {lo}, {hi}] over {seeds}: {verdict}"


def paired_difference(
    a_name: str,
    a_scores: Mapping[int, float],
    b_name: str,
    b_scores: Mapping[int, float],
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    rng_seed: int = 0,
) -> Difference:
    """Cell ``a`` minus cell ``b`` over the distillation seeds both have.

    Seeds are paired by key (the intersection of the two mappings); seeds only
    one cell has are left out (see :attr:`Difference.seeds`).

    The t interval is ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` with
    ``sd`` the sample std (``ddof=1``) of the differences; it alone decides
    :attr:`Difference.significant`. The bootstrap resamples the ``n`` differences
    with replacement ``n_boot`` times (``numpy.random.default_rng(rng_seed)``) and
    takes the percentiles of the resample means; it is reported beside the t
    interval, and over few pairs it is too narrow to lean on.

    Args:
        a_name, b_name: the cells' names (for messages and :meth:`Difference.describe`).
        a_scores, b_scores: ``{seed: seed score}`` (e.g. from :func:`seed_scores`),
            in one unit (fraction or percent).
        confidence: level of both intervals, strictly between 0 and 1.
        n_boot: bootstrap resamples (at least 1).
        rng_seed: seed of the bootstrap's generator.

    Returns:
        A :class:`Difference` in the unit of the scores.

    Raises:
        ValueError: if the cells share no seed (the message names both cells and
            their seeds), a paired score is not finite, ``confidence`` is not in
            ``(0, 1)`` or ``n_boot < 1``.
        ImportError: if scipy is missing and there are at least 2 pairs.
    """
    confidence = _check_confidence(confidence)
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot!r}")
    common = sorted(set(a_scores) & set(b_scores))
    if not common:
        raise ValueError(
            f"no common seed to pair: {a_name!r} has seeds {sorted(a_scores)}, "
            f"{b_name!r} has seeds {sorted(b_scores)}"
        )
    d = np.array([float(a_scores[s]) - float(b_scores[s]) for s in common], dtype=np.float64)
    if not np.all(np.isfinite(d)):
        bad = [s for s, x in zip(common, d) if not math.isfinite(x)]
        raise ValueError(f"non-finite score for seed(s) {bad} in {a_name!r} or {b_name!r}")
    n = int(d.size)
    mean = float(d.mean())
    nan = math.nan
    ci_low = ci_high = boot_low = boot_high = p_value = nan
    significant = False
    if n >= 2:
        t_dist = _scipy_t()
        df = n - 1
        se = float(d.std(ddof=1)) / math.sqrt(n)
        tq = float(t_dist.ppf(0.5 + confidence / 2.0, df))
        ci_low, ci_high = mean - tq * se, mean + tq * se
        if se > 0.0:
            p_value = float(2.0 * t_dist.sf(abs(mean) / se, df))
        else:  # every difference equal: no noise, the test is degenerate
            p_value = 1.0 if mean == 0.0 else 0.0
        significant = bool(ci_low > 0.0 or ci_high < 0.0)

        rng = np.random.default_rng(rng_seed)
        idx = rng.integers(0, n, size=(int(n_boot), n))
        boot_means = d[idx].mean(axis=1)
        alpha = 1.0 - confidence
        lo, hi = np.quantile(boot_means, [alpha / 2.0, 1.0 - alpha / 2.0])
        boot_low, boot_high = float(lo), float(hi)

    return Difference(
        a=str(a_name),
        b=str(b_name),
        n_pairs=n,
        mean=mean,
        ci_low=ci_low,
        ci_high=ci_high,
        boot_low=boot_low,
        boot_high=boot_high,
        p_value=p_value,
        significant=significant,
        confidence=confidence,
        seeds=tuple(int(s) for s in common),
        differences=tuple(float(x) for x in d),
    )
