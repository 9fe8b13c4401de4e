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
    holm,
    label_robust_score,
    minimum_detectable_effect,
    paired_difference,
    paired_t_power,
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


# ------------------------------------------------------------ Holm's correction


def test_holm_hand_worked_example() -> None:
    # sorted: d 0.005, a 0.01, c 0.03, b 0.04 with m = 4:
    #   4 * 0.005 = 0.02; 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04 -> max(0.06, .04)
    got = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(got) == ["a", "b", "c", "d"]  # input order kept
    adj = {k: v.p_adjusted for k, v in got.items()}
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02}, abs=1e-15)
    assert {k for k, v in got.items() if v.holds} == {"a", "d"}
    # uncorrected, all four are below 0.05: the correction is what removes b and c
    assert all(v.p_value < 0.05 for v in got.values())
    assert {v.family_size for v in got.values()} == {4}


def test_holm_primary_contrasts_are_tested_alone() -> None:
    p = {"primary": 0.04, "x": 0.01, "y": 0.02, "z": 0.5}
    got = holm(p, primary={"primary"})
    assert got["primary"].primary and got["primary"].holds  # 0.04 <= 0.05, no correction
    assert got["primary"].p_adjusted == 0.04 and got["primary"].family_size == 1
    # family of 3: 3 * 0.01 = 0.03, 2 * 0.02 = 0.04, 1 * 0.5 = 0.5
    assert got["x"].p_adjusted == pytest.approx(0.03)
    assert got["y"].p_adjusted == pytest.approx(0.04)
    assert got["z"].p_adjusted == pytest.approx(0.5)
    assert [got[k].holds for k in "xyz"] == [True, True, False]
    # in the family instead, the primary would need 0.04 * ... and lose
    assert not holm(p)["primary"].holds


def test_holm_caps_at_one_and_honours_alpha() -> None:
    got = holm({"a": 0.3, "b": 0.6}, alpha=0.1)
    # 2 * 0.3 = 0.6; 1 * 0.6 = 0.6, and the running maximum keeps the order
    assert got["a"].p_adjusted == pytest.approx(0.6) and got["b"].p_adjusted == pytest.approx(0.6)
    # 3 * 0.4 = 1.2 is capped at 1; the later ones inherit the 1
    capped = holm({"a": 0.4, "b": 0.45, "c": 0.9})
    assert [capped[k].p_adjusted for k in "abc"] == [1.0, 1.0, 1.0]
    assert holm({"a": 0.07}, alpha=0.1)["a"].holds
    assert not holm({"a": 0.07}, alpha=0.05)["a"].holds


def _closed_testing_holm(p: dict[str, float]) -> dict[str, float]:
    """Holm from the closure principle, independently of the step-down formula: the
    adjusted p of H_i is the largest Bonferroni p, min(1, |I| * min_I p), over every
    intersection hypothesis I that contains i."""
    from itertools import combinations

    names = list(p)
    out = {}
    for i in names:
        worst = 0.0
        for k in range(1, len(names) + 1):
            for sub in combinations(names, k):
                if i in sub:
                    worst = max(worst, min(1.0, k * min(p[j] for j in sub)))
        out[i] = worst
    return out


def test_holm_equals_closed_testing_with_bonferroni_on_random_families() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        m = int(rng.integers(1, 8))
        p = {f"e{i}": float(x) for i, x in enumerate(rng.uniform(0, 0.2, size=m) ** 2)}
        got = {k: v.p_adjusted for k, v in holm(p).items()}
        assert got == pytest.approx(_closed_testing_holm(p), abs=1e-12)


@pytest.mark.parametrize(
    ("p", "kw", "match"),
    [
        ({"a": math.nan}, {}, "p-value of 'a'"),
        ({"a": 1.5}, {}, "p-value of 'a'"),
        ({"a": 0.1}, {"primary": {"b"}}, "primary contrasts \\['b'\\]"),
        ({"a": 0.1}, {"alpha": 0.0}, "alpha"),
    ],
)
def test_holm_rejects_bad_input(p, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        holm(p, **kw)


# ------------------------------------------------------- minimum detectable effect


def test_power_at_zero_effect_is_alpha() -> None:
    for n in (2, 3, 10):
        assert paired_t_power(0.0, 1.0, n) == pytest.approx(0.05, abs=1e-12)
        assert paired_t_power(0.0, 2.0, n, alpha=0.01) == pytest.approx(0.01, abs=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_mde_has_the_required_power(n) -> None:
    for sd, alpha, power in ((1.0, 0.05, 0.8), (0.4, 0.05 / 9, 0.8), (2.5, 0.05, 0.9)):
        m = minimum_detectable_effect(sd, n, alpha=alpha, power=power)
        assert paired_t_power(m, sd, n, alpha=alpha) == pytest.approx(power, abs=1e-6)
        assert paired_t_power(0.99 * m, sd, n, alpha=alpha) < power  # the smallest one


def test_mde_approaches_the_normal_approximation_for_many_pairs() -> None:
    z = 1.959963984540054 + 0.8416212335729143  # z_{0.975} + z_{0.8}
    for n in (400, 2000):
        approx = z * 1.7 / math.sqrt(n)
        exact = minimum_detectable_effect(1.7, n)
        assert exact > approx  # the t tail always costs something
        assert exact == pytest.approx(approx, rel=2.5 / n)  # O(1/n) apart


def test_mde_is_linear_in_sd_and_zero_without_noise() -> None:
    m1 = minimum_detectable_effect(1.0, 3)
    assert minimum_detectable_effect(0.25, 3) == pytest.approx(0.25 * m1, rel=1e-9)
    assert minimum_detectable_effect(0.0, 3) == 0.0
    # three pairs need far more than the normal approximation's 1.62 sd
    assert 3.0 < m1 < 3.5


def test_mde_of_three_pairs_by_simulation() -> None:
    """Draw 3 paired differences with mean = the MDE, many times: the paired t test
    (two-sided, 5 %) rejects in about 80 % of the draws."""
    sd, n = 0.6, 3
    m = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(11)
    d = rng.normal(m, sd, size=(200_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = np.mean(np.abs(t) > T_975_DF2)
    assert rejected == pytest.approx(0.8, abs=0.004)  # binomial se 0.0009


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((1.0, 1), {}, "n must be"),
        ((1.0, 2.5), {}, "n must be"),
        ((-1.0, 3), {}, "sd must be"),
        ((math.nan, 3), {}, "sd must be"),
        ((1.0, 3), {"alpha": 1.0}, "alpha"),
        ((1.0, 3), {"power": 0.04}, "power"),
        ((1.0, 3), {"power": 1.0}, "power"),
    ],
)
def test_mde_rejects_bad_design(args, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        minimum_detectable_effect(*args, **kw)


# ------------------------------------------------------------------ DD-Ranking


def test_label_robust_score_known_points() -> None:
    e = math.e
    # alpha = 0: LRS = (1 - 1/e) / (e - 1/e) = 1 / (1 + e)
    mid = label_robust_score(0.6, 0.6, 0.3, 0.3)
    assert (mid.hlr, mid.ior) == (0.0, 0.0)
    assert mid.lrs == pytest.approx(1.0 / (1.0 + e), abs=1e-15)
    # the extremes: alpha = +1 (syn perfect, random useless, real useless) and -1
    assert label_robust_score(0.0, 1.0, 1.0, 0.0).lrs == pytest.approx(1.0, abs=1e-15)
    assert label_robust_score(1.0, 0.0, 0.0, 1.0).lrs == pytest.approx(0.0, abs=1e-15)


def test_label_robust_score_hand_computed() -> None:
    # HLR = 0.43 - 0.38 = 0.05, IOR = 0.39 - 0.21 = 0.18, alpha = 0.5*0.18 - 0.5*0.05
    got = label_robust_score(0.43, 0.38, 0.39, 0.21)
    assert got.hlr == pytest.approx(0.05) and got.ior == pytest.approx(0.18)
    a = 0.065
    want = (math.exp(a) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    assert got.lrs == pytest.approx(want, abs=1e-12)
    assert got.lrs == pytest.approx(0.29751, abs=5e-6)  # (1.067159 - 0.367879) / 2.350402
    # weight 1: IOR only; weight 0: HLR only
    only_ior = label_robust_score(0.43, 0.38, 0.39, 0.21, weight=1.0).lrs
    assert only_ior == pytest.approx((math.exp(0.18) - math.exp(-1)) / (math.e - math.exp(-1)))
    only_hlr = label_robust_score(0.43, 0.38, 0.39, 0.21, weight=0.0).lrs
    assert only_hlr == pytest.approx((math.exp(-0.05) - math.exp(-1)) / (math.e - math.exp(-1)))


@pytest.mark.parametrize("name", ["acc_real_hard", "acc_syn_hard", "acc_syn_any", "acc_rdm_any"])
def test_label_robust_score_refuses_percentages(name) -> None:
    accs = {"acc_real_hard": 0.43, "acc_syn_hard": 0.38, "acc_syn_any": 0.39, "acc_rdm_any": 0.21}
    accs[name] = 38.0
    with pytest.raises(ValueError, match=f"{name} must be an accuracy in \\[0, 1\\].*percentage"):
        label_robust_score(**accs)
    accs[name] = math.nan
    with pytest.raises(ValueError, match=name):
        label_robust_score(**accs)


def test_label_robust_score_rejects_bad_weight() -> None:
    with pytest.raises(ValueError, match="weight"):
        label_robust_score(0.4, 0.3, 0.3, 0.2, weight=1.5)
