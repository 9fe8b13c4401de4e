"""lsslib.stats: cell summaries and paired differences over distillation seeds.

Known answers are computed by hand (or from closed forms of Student's t with 2
degrees of freedom), never by calling scipy, so a wrong quantile or a wrong
std convention fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsslib.stats import (
    CellSummary,
    Difference,
    paired_difference,
    seed_scores,
    summarise_cell,
)

# Student's t with 2 degrees of freedom has closed forms:
#   quantile  t_{p,2} = (2p - 1) / sqrt(2 p (1 - p))
#   two-sided p-value of |t|:  1 - |t| / sqrt(2 + t^2)
# t_{0.975,2} = 0.95 / sqrt(0.04875) = 4.302652729749462... (the often-quoted
# 4.302652729911275 is off by 1.6e-10; scipy.stats.t.ppf agrees with the closed form).
T_975_DF2 = 4.302652729749462


def _t_quantile_df2(p: float) -> float:
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def _paired(diffs, **kw) -> Difference:
    """Cell "a" minus cell "b" where b scores 0: the differences are ``diffs``."""
    a = {s: float(x) for s, x in enumerate(diffs)}
    b = dict.fromkeys(a, 0.0)
    return paired_difference("a", a, "b", b, **kw)


# ---------------------------------------------------------------- summaries


def test_seed_scores_are_means_over_eval_nets() -> None:
    got = seed_scores({2: [0.38, 0.40], 0: [0.30, 0.32], 1: [0.34, 0.36]})
    assert list(got) == [0, 1, 2]  # ascending seeds
    assert got == pytest.approx({0: 0.31, 1: 0.35, 2: 0.39}, abs=1e-12)


def test_summarise_cell_hand_computed() -> None:
    s = summarise_cell({0: [0.30, 0.32], 1: [0.34, 0.36], 2: [0.38, 0.40]})
    assert isinstance(s, CellSummary)
    assert s.n_seeds == 3
    assert s.seed_scores == pytest.approx((0.31, 0.35, 0.39), abs=1e-12)
    assert s.mean == pytest.approx(0.35, abs=1e-12)
    # ddof=1 over (0.31, 0.35, 0.39): sqrt((0.04^2 + 0 + 0.04^2) / 2) = 0.04
    assert s.std_seeds == pytest.approx(0.04, abs=1e-12)
    # ddof=0 over two nets 0.02 apart is 0.01 for every seed
    assert s.std_nets == pytest.approx(0.01, abs=1e-12)


def test_summarise_cell_unequal_nets_and_percent_units() -> None:
    # seed 0: nets (40, 44, 48) -> score 44, pop std sqrt(32/3); seed 1: one net 50 -> std 0
    s = summarise_cell({0: [40.0, 44.0, 48.0], 1: [50.0]})
    assert s.seed_scores == pytest.approx((44.0, 50.0))
    assert s.mean == pytest.approx(47.0)
    assert s.std_seeds == pytest.approx(math.sqrt(18.0))  # (3^2 + 3^2) / 1
    assert s.std_nets == pytest.approx(math.sqrt(32.0 / 3.0) / 2.0)


def test_summarise_cell_one_seed_has_nan_seed_std() -> None:
    s = summarise_cell({7: [0.5, 0.7]})
    assert s.n_seeds == 1
    assert s.mean == pytest.approx(0.6)
    assert math.isnan(s.std_seeds)
    assert s.std_nets == pytest.approx(0.1)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({}, "no seeds"),
        ({0: [0.3], 1: []}, "seed 1 has no evaluation nets"),
        ({0: [0.3, float("nan")]}, "non-finite"),
    ],
)
def test_summarise_cell_rejects_bad_input(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        summarise_cell(bad)
    with pytest.raises(ValueError, match=match):
        seed_scores(bad)


# ---------------------------------------------------------- paired differences


def test_t_constant_from_closed_form() -> None:
    assert _t_quantile_df2(0.975) == pytest.approx(T_975_DF2, rel=1e-14)
    assert _t_quantile_df2(0.975) == pytest.approx(4.302652729911275, rel=1e-10)


def test_paired_difference_known_t_interval_and_p_value() -> None:
    d = _paired([1.0, 2.0, 3.0])
    assert d.n_pairs == 3
    assert d.seeds == (0, 1, 2)
    assert d.differences == (1.0, 2.0, 3.0)
    assert d.mean == pytest.approx(2.0)
    half = T_975_DF2 * 1.0 / math.sqrt(3.0)  # sd of (1, 2, 3) with ddof=1 is 1
    assert d.ci_low == pytest.approx(2.0 - half, rel=1e-9)
    assert d.ci_high == pytest.approx(2.0 + half, rel=1e-9)
    # 2 +- 2.484 = [-0.484, 4.484]: with 3 seeds a mean of 2 sd units is NOT enough
    assert d.ci_low < 0.0
    assert d.significant is False
    t = 2.0 / (1.0 / math.sqrt(3.0))
    assert d.p_value == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)  # 0.0742
    assert d.p_value > 0.05  # consistent with the interval
    assert d.confidence == 0.95


def test_paired_difference_significant_when_the_t_interval_excludes_zero() -> None:
    d = _paired([2.0, 3.0, 4.0])  # 3 +- 2.484 = [0.516, 5.484]
    assert d.ci_low == pytest.approx(3.0 - T_975_DF2 / math.sqrt(3.0), rel=1e-9)
    assert d.ci_low > 0.0
    assert d.significant is True
    t = 3.0 * math.sqrt(3.0)
    assert d.p_value == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)  # 0.0345
    assert d.p_value < 0.05
    negative = _paired([-2.0, -3.0, -4.0])
    assert negative.ci_high < 0.0 and negative.significant is True


def test_paired_difference_straddling_zero_is_not_significant() -> None:
    d = _paired([-1.0, 0.0, 1.0])
    assert d.mean == pytest.approx(0.0)
    assert d.ci_low < 0.0 < d.ci_high
    assert d.ci_high == pytest.approx(T_975_DF2 / math.sqrt(3.0), rel=1e-9)
    assert d.significant is False
    assert d.p_value == pytest.approx(1.0)


def test_paired_difference_other_confidence_level() -> None:
    d = _paired([1.0, 2.0, 3.0], confidence=0.90)
    half = _t_quantile_df2(0.95) / math.sqrt(3.0)
    assert d.ci_high - d.mean == pytest.approx(half, rel=1e-9)
    assert d.confidence == 0.90


def test_paired_difference_pairs_by_seed_key() -> None:
    a = {0: 10.0, 1: 20.0, 2: 30.0}
    b = {1: 18.0, 2: 29.0, 3: 1000.0}
    d = paired_difference("A", a, "B", b)
    assert d.n_pairs == 2
    assert d.seeds == (1, 2)
    assert d.differences == (2.0, 1.0)
    assert d.mean == pytest.approx(1.5)
    # 2 pairs: df 1, t_{0.975,1} = tan(pi * 0.475) = 12.706..., sd = sqrt(0.5)
    half = math.tan(math.pi * 0.475) * math.sqrt(0.5) / math.sqrt(2.0)
    assert d.ci_high == pytest.approx(1.5 + half, rel=1e-9)
    assert d.significant is False
    assert (d.a, d.b) == ("A", "B")


def test_paired_difference_single_pair_has_no_interval() -> None:
    d = paired_difference("A", {0: 0.5, 1: 0.6}, "B", {1: 0.4})
    assert d.n_pairs == 1
    assert d.mean == pytest.approx(0.2)
    for v in (d.ci_low, d.ci_high, d.boot_low, d.boot_high, d.p_value):
        assert math.isnan(v)
    assert d.significant is False
    assert "1 paired seed:" in d.describe()


def test_bootstrap_interval_contains_mean_and_stays_within_the_differences() -> None:
    diffs = [0.8, 2.5, 1.1, 3.9, 2.0]
    d = _paired(diffs)
    assert d.boot_low <= d.mean <= d.boot_high
    assert min(diffs) <= d.boot_low < d.boot_high <= max(diffs)
    # seeded: the same call gives the same interval, another rng_seed may not
    again = _paired(diffs)
    assert (again.boot_low, again.boot_high) == (d.boot_low, d.boot_high)
    # over 5 pairs the bootstrap is narrower than the t interval
    assert d.ci_low < d.boot_low and d.boot_high < d.ci_high


def test_bootstrap_of_three_pairs_is_degenerate() -> None:
    # 3 pairs: the resample mean is 1.0 (all three draws the minimum) with
    # probability 1/27 = 3.7 % > 2.5 %, so the 95 % percentile interval is exactly
    # [min, max] = [1, 3], whatever the generator's seed
    for rng_seed in (0, 1, 2):
        d = _paired([1.0, 2.0, 3.0], rng_seed=rng_seed)
        assert (d.boot_low, d.boot_high) == (1.0, 3.0)


def test_bootstrap_interval_width_over_many_pairs() -> None:
    # many pairs: the resample mean is ~normal with sd = pop. sd / sqrt(n)
    diffs = np.random.default_rng(3).normal(1.0, 2.0, size=60)
    d = _paired(diffs.tolist())
    half = 1.959964 * diffs.std(ddof=0) / math.sqrt(diffs.size)
    assert (d.boot_high - d.boot_low) / 2 == pytest.approx(half, rel=0.05)
    assert (d.boot_low + d.boot_high) / 2 == pytest.approx(diffs.mean(), abs=0.1 * half)


def test_zero_variance_differences() -> None:
    same = _paired([0.0, 0.0, 0.0])
    assert (same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 1.0)
    assert same.significant is False
    shifted = _paired([1.0, 1.0, 1.0])
    assert (shifted.ci_low, shifted.ci_high, shifted.p_value) == (1.0, 1.0, 0.0)
    assert shifted.significant is True


def test_unit_agnostic_fraction_vs_percent() -> None:
    frac = _paired([0.01, 0.02, 0.04])
    pct = _paired([1.0, 2.0, 4.0])
    for f, p in [
        (frac.mean, pct.mean),
        (frac.ci_low, pct.ci_low),
        (frac.ci_high, pct.ci_high),
        (frac.boot_low, pct.boot_low),
        (frac.boot_high, pct.boot_high),
    ]:
        assert f * 100 == pytest.approx(p, rel=1e-9)
    assert frac.p_value == pytest.approx(pct.p_value, rel=1e-9)
    assert frac.significant == pct.significant


def test_no_common_seed_names_both_cells_and_their_seeds() -> None:
    with pytest.raises(ValueError) as err:
        paired_difference("pixels", {0: 0.4, 1: 0.5}, "lss", {2: 0.45, 3: 0.46})
    msg = str(err.value)
    assert "'pixels'" in msg and "'lss'" in msg
    assert "[0, 1]" in msg and "[2, 3]" in msg


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"n_boot": 0}, "n_boot"),
    ],
)
def test_paired_difference_rejects_bad_arguments(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        _paired([1.0, 2.0], **kw)


def test_non_finite_score_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        paired_difference("a", {0: 0.5, 1: float("nan")}, "b", {0: 0.4, 1: 0.4})


def test_describe() -> None:
    d = Difference(
        a="lss", b="pixels", n_pairs=3, mean=4.1, ci_low=1.2, ci_high=7.0,
        boot_low=2.0, boot_high=6.0, p_value=0.02, significant=True,
    )  # fmt: skip
    assert d.describe() == "+4.1 pp [95 % CI +1.2, +7.0] over 3 paired seeds: holds"
    noise = _paired([-1.0, 0.0, 1.5])
    assert noise.describe().endswith("over 3 paired seeds: within the noise")
    frac = _paired([0.01, 0.02, 0.03])
    lo = 0.02 - T_975_DF2 * 0.01 / math.sqrt(3.0)
    hi = 0.02 + T_975_DF2 * 0.01 / math.sqrt(3.0)
    assert frac.describe(scale=100, digits=2) == (
        f"+2.00 pp [95 % CI {lo * 100:+.2f}, {hi * 100:+.2f}] over 3 paired seeds: within the noise"
    )


# ------------------------------------------------------------------- coverage


def test_t_interval_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(20240611)
    n_exp, n_pairs = 400, 5
    covered = 0
    for _ in range(n_exp):
        diffs = rng.normal(loc=0.0, scale=2.0, size=n_pairs)
        d = _paired(diffs.tolist(), n_boot=50)
        covered += d.ci_low <= 0.0 <= d.ci_high
        assert d.significant == (not d.ci_low <= 0.0 <= d.ci_high)
    assert 0.93 <= covered / n_exp <= 0.97, covered
