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

Three further tools make a table of effects honest:

* :func:`holm` corrects the p-values of a family of effects for multiplicity
  (Holm's step-down procedure); pre-declared primary contrasts are kept out of
  the family and tested at the nominal alpha on their own;
* :func:`minimum_detectable_effect` gives, for a paired design, the smallest true
  mean difference it would detect with a given power: the number that must go
  with every verdict "within the noise";
* :func:`label_robust_score` computes DD-Ranking's hard-label recovery,
  improvement over random and label-robust score from accuracies as fractions.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CellSummary",
    "Difference",
    "seed_scores",
    "summarise_cell",
    "paired_difference",
    "HolmVerdict",
    "holm",
    "paired_t_power",
    "minimum_detectable_effect",
    "LabelRobustScore",
    "label_robust_score",
]


def _scipy_stats():
    """``scipy.stats``, with a clear error where scipy is not installed."""
    try:
        from scipy import stats as sps
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lsslib.stats needs scipy for the t interval, the p-value and the power "
            "(pip install scipy; it belongs in lsslib's dependencies)"
        ) from exc
    return sps


def _scipy_t():
    """``scipy.stats.t``, with a clear error where scipy is not installed."""
    return _scipy_stats().t


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


# ------------------------------------------------------------- multiplicity


@dataclass(frozen=True)
class HolmVerdict:
    """One effect's test after the multiplicity correction of :func:`holm`.

    Attributes:
        name: the effect's name.
        p_value: its unadjusted two-sided p-value.
        p_adjusted: Holm-adjusted p-value in ``[0, 1]`` for a member of the family;
            equal to ``p_value`` for a primary contrast (tested on its own).
        primary: whether the effect is a pre-declared primary contrast.
        holds: whether the null "mean difference = 0" is rejected at the family-wise
            ``alpha``: ``p_adjusted <= alpha``.
        family_size: the number ``m`` of effects in the Holm family (1 for a primary).
        alpha: the family-wise (or, for a primary, per-test) level.
    """

    name: str
    p_value: float
    p_adjusted: float
    primary: bool
    holds: bool
    family_size: int
    alpha: float


def holm(
    p_values: Mapping[str, float],
    *,
    alpha: float = 0.05,
    primary: Collection[str] = (),
) -> dict[str, HolmVerdict]:
    """Holm's step-down correction of a family of p-values, primary contrasts apart.

    The effects named in ``primary`` were declared before the data were seen; each is
    tested at ``alpha`` on its own. The other ``m`` effects form the family. With their
    p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted p-value of the ``i``-th is
    ``min(1, max_{j <= i} (m - j + 1) p_(j))``, and an effect holds when its adjusted
    p-value is at most ``alpha``. This keeps the probability of any false "holds" in
    the family at most ``alpha`` whatever the dependence between the tests (Holm 1979,
    "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6,
    65-70). Ties keep their input order (the adjusted values are equal anyway).

    Args:
        p_values: ``{effect name: two-sided p-value}``, e.g. :attr:`Difference.p_value`
            of each paired t test.
        alpha: family-wise error rate, strictly between 0 and 1.
        primary: names of the pre-declared primary contrasts (each must be in
            ``p_values``).

    Returns:
        ``{effect name: HolmVerdict}`` in the order of ``p_values``.

    Raises:
        ValueError: a p-value is not a number in ``[0, 1]`` (NaN included: an effect
            with one pair has no test), a primary name is not among the effects, or
            ``alpha`` is not in ``(0, 1)``.
    """
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    p = {str(k): float(v) for k, v in p_values.items()}
    for name, v in p.items():
        if not 0.0 <= v <= 1.0:  # False for NaN too
            raise ValueError(f"p-value of {name!r} must lie in [0, 1], got {v!r}")
    prim = {str(x) for x in primary}
    unknown = sorted(prim - set(p))
    if unknown:
        raise ValueError(f"primary contrasts {unknown} are not among the effects {sorted(p)}")
    family = [k for k in p if k not in prim]
    m = len(family)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(sorted(family, key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[name]))
        adjusted[name] = running
    out: dict[str, HolmVerdict] = {}
    for name, v in p.items():
        is_primary = name in prim
        adj = v if is_primary else adjusted[name]
        out[name] = HolmVerdict(
            name=name,
            p_value=v,
            p_adjusted=adj,
            primary=is_primary,
            holds=bool(adj <= a),
            family_size=1 if is_primary else m,
            alpha=a,
        )
    return out


# ------------------------------------------------------------------- power


def _check_design(sd: float, n: int, alpha: float) -> tuple[float, int, float]:
    s, k, a = float(sd), int(n), float(alpha)
    if k != n or k < 2:
        raise ValueError(f"n must be an integer of at least 2 pairs, got {n!r}")
    if not (math.isfinite(s) and s >= 0.0):
        raise ValueError(f"sd must be a finite number >= 0, got {sd!r}")
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return s, k, a


def paired_t_power(effect: float, sd: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test over ``n`` pairs against a true mean
    difference ``effect``, the per-pair differences having standard deviation ``sd``.

    Exact, from the noncentral t distribution: with ``df = n - 1``,
    ``t_c = t_{1 - alpha/2, df}`` and noncentrality ``nc = effect * sqrt(n) / sd``,
    the power is ``P(T' > t_c) + P(T' < -t_c)`` for ``T' ~ nct(df, nc)`` (e.g. Cohen
    1988, *Statistical Power Analysis for the Behavioral Sciences*, ch. 2).

    Args:
        effect: true mean difference, in the unit of ``sd`` (its sign does not matter).
        sd: standard deviation of the per-pair differences (> 0).
        n: number of pairs (>= 2).
        alpha: two-sided level, in ``(0, 1)``.

    Returns:
        The probability of rejecting "mean difference = 0", in ``[alpha, 1]``.

    Raises:
        ValueError: ``sd <= 0`` or not finite, ``n < 2`` or ``alpha`` not in ``(0, 1)``.
        ImportError: scipy is missing.
    """
    s, k, a = _check_design(sd, n, alpha)
    if s == 0.0:
        raise ValueError("sd must be > 0 for the power of a t test, got 0")
    sps = _scipy_stats()
    df = k - 1
    tc = float(sps.t.ppf(1.0 - a / 2.0, df))
    nc = abs(float(effect)) * math.sqrt(k) / s
    upper = float(sps.nct.sf(tc, df, nc))
    # The lower tail needs Z + nc < 0, so it is at most Phi(-nc); scipy's nct returns
    # NaN or rounding noise there for large nc (df = 1), so it is capped by that bound.
    lower = float(sps.nct.cdf(-tc, df, nc))
    bound = float(sps.norm.cdf(-nc))
    lower = bound if not math.isfinite(lower) else min(lower, bound)
    if not math.isfinite(upper):
        raise ValueError(f"no finite power for effect={effect!r}, sd={sd!r}, n={n!r}")
    return upper + lower


def minimum_detectable_effect(
    sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest true mean difference a paired design detects with ``power``.

    Solves :func:`paired_t_power` ``(effect, sd, n, alpha) = power`` for ``effect`` with
    :func:`scipy.optimize.brentq` on the exact noncentral t power (not the normal
    approximation ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``, which is far too
    optimistic with few pairs: with 3 pairs the exact value is about twice it).
    ``sd`` is meant to be the **observed** std of the per-seed differences, so the
    result is itself uncertain with few seeds: it says what this design, with noise
    of this size, could have told apart from zero.

    Args:
        sd: standard deviation (``ddof=1``) of the per-pair differences, any unit.
        n: number of pairs (>= 2).
        alpha: two-sided level of the test, in ``(0, 1)``.
        power: required power, strictly between ``alpha`` and 1.

    Returns:
        The minimum detectable effect (>= 0), in the unit of ``sd``; ``0.0`` when
        ``sd == 0`` (no noise: any nonzero difference is detected).

    Raises:
        ValueError: ``sd`` negative or not finite, ``n < 2``, ``alpha`` not in
            ``(0, 1)``, or ``power`` not in ``(alpha, 1)``.
        ImportError: scipy is missing.
    """
    s, k, a = _check_design(sd, n, alpha)
    target = float(power)
    if not a < target < 1.0:
        raise ValueError(f"power must lie strictly between alpha={a} and 1, got {power!r}")
    if s == 0.0:
        return 0.0
    from scipy.optimize import brentq

    def gap(nc: float) -> float:  # in units of sd / sqrt(n)
        return paired_t_power(nc, math.sqrt(k), k, alpha=a) - target

    sps = _scipy_stats()
    hi = float(sps.norm.ppf(1.0 - a / 2.0) + sps.norm.ppf(target))
    while gap(hi) < 0.0:
        hi *= 2.0
    nc = brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12, maxiter=500)
    return float(nc) * s / math.sqrt(k)


# -------------------------------------------------------------- DD-Ranking


@dataclass(frozen=True)
class LabelRobustScore:
    """DD-Ranking's label-robust metrics of one evaluation, all fractions.

    Attributes:
        hlr: hard-label recovery, ``acc_real_hard - acc_syn_hard`` in ``[-1, 1]``
            (lower is better: how far the set's images on hard labels are from the
            real training set).
        ior: improvement over random, ``acc_syn_any - acc_rdm_any`` in ``[-1, 1]``
            (higher is better).
        lrs: label-robust score in ``[0, 1]`` (multiply by 100 for DD-Ranking's %).
        weight: the weight ``w`` of IOR (``1 - w`` is HLR's).
    """

    hlr: float
    ior: float
    lrs: float
    weight: float


def label_robust_score(
    acc_real_hard: float,
    acc_syn_hard: float,
    acc_syn_any: float,
    acc_rdm_any: float,
    *,
    weight: float = 0.5,
) -> LabelRobustScore:
    """DD-Ranking's hard-label recovery (HLR), improvement over random (IOR) and
    label-robust score (LRS), from test accuracies as **fractions** in ``[0, 1]``.

    The metrics of Li et al. 2025, "DD-Ranking: Rethinking the Evaluation of Dataset
    Distillation" (arXiv:2505.13300), as the DD-Ranking project states them on its
    documentation's introduction page (``doc/introduction.md`` of
    NUS-HPC-AI-Lab/DD-Ranking, where the formulas below were read)::

        HLR   = acc_real_hard - acc_syn_hard
        IOR   = acc_syn_any  - acc_rdm_any
        a     = w * IOR - (1 - w) * HLR          # in [-1, 1] for fractions
        LRS   = (exp(a) - exp(-1)) / (exp(1) - exp(-1))   # in [0, 1]

    The normalisation maps ``a = -1, 0, 1`` to ``0, 1/(1 + e), 1``; it needs ``a`` in
    ``[-1, 1]``, i.e. accuracies as fractions. The released ``ddranking`` 0.2.0 code
    (``ddranking/metrics/hard_label.py`` and ``soft_label.py``) forms HLR and IOR from
    accuracies in percent (its ``accuracy`` returns ``100 * correct / n``) and feeds
    them to ``np.exp`` unscaled, so its LRS is not on this scale and its scores are not
    comparable with these (nor bounded by 1).

    Args:
        acc_real_hard: accuracy of a network trained on the real training set with hard
            labels.
        acc_syn_hard: accuracy of a network trained on the synthetic set with hard
            labels (the argmax of its labels, for a soft-label set).
        acc_syn_any: accuracy of the synthetic set under its own evaluation (its soft
            labels, if it has them).
        acc_rdm_any: accuracy of a random real subset of the same storage under the
            same evaluation as ``acc_syn_any``.
        weight: ``w`` in ``[0, 1]``; DD-Ranking's leaderboard uses 0.5.

    Returns:
        A :class:`LabelRobustScore` (fractions).

    Raises:
        ValueError: an accuracy is not a finite number in ``[0, 1]`` (the message names
            the parameter; values above 1 are most likely percentages), or ``weight``
            is not in ``[0, 1]``.
    """
    accs = {
        "acc_real_hard": acc_real_hard,
        "acc_syn_hard": acc_syn_hard,
        "acc_syn_any": acc_syn_any,
        "acc_rdm_any": acc_rdm_any,
    }
    vals: dict[str, float] = {}
    for name, v in accs.items():
        x = float(v)
        if not 0.0 <= x <= 1.0:  # False for NaN too
            hint = " (a percentage? pass fractions of the test set)" if x > 1.0 else ""
            raise ValueError(f"{name} must be an accuracy in [0, 1], got {v!r}{hint}")
        vals[name] = x
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight!r}")
    hlr = vals["acc_real_hard"] - vals["acc_syn_hard"]
    ior = vals["acc_syn_any"] - vals["acc_rdm_any"]
    a = w * ior - (1.0 - w) * hlr
    lrs = (math.exp(a) - math.exp(-1.0)) / (math.exp(1.0) - math.exp(-1.0))
    return LabelRobustScore(hlr=hlr, ior=ior, lrs=lrs, weight=w)
