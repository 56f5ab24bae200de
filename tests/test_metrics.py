"""Accuracy statistics against closed forms, published t tables, hand computations and scipy itself."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fewshot.evaluation import Comparison, EpisodeSpec, EvaluationResult, LearnerResult, read_json, write_json
from fewshot.evaluation.bootstrap import SeedEpisodeCI, bootstrap_ci, seed_and_episode_ci, two_level_bootstrap_means
from fewshot.evaluation.metrics import (
    PairedComparison,
    mean_ci95,
    paired_comparison,
    regularized_incomplete_beta,
    sign_flip_p_value,
    student_t_cdf,
    student_t_ppf,
    student_t_two_sided_p,
    wilcoxon_p_value,
)

T_VALUES = [-40.0, -3.0, -1.0, -0.2, 0.0, 0.5, 1.0, 2.5, 10.0, 300.0]


@pytest.mark.parametrize("t", T_VALUES)
def test_t_cdf_df1_is_cauchy(t: float) -> None:
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-13)


@pytest.mark.parametrize("t", T_VALUES)
def test_t_cdf_df2_closed_form(t: float) -> None:
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-13)


@pytest.mark.parametrize("t", T_VALUES)
def test_t_cdf_df4_closed_form(t: float) -> None:
    # F(t) = 1/2 + (3/8) * (t / sqrt(1 + t^2/4)) * (1 - t^2 / (12 (1 + t^2/4))) for df = 4.
    u = 1 + t * t / 4
    expected = 0.5 + 0.375 * t / math.sqrt(u) * (1 - t * t / (12 * u))
    assert student_t_cdf(t, 4) == pytest.approx(expected, abs=1e-13)


def test_two_sided_p_tiny_tail_keeps_relative_precision() -> None:
    # df = 1: P(|T| >= t) = 1 - 2 atan(t) / pi = 2 atan(1 / t) / pi for t > 0.
    assert student_t_two_sided_p(1e6, 1) == pytest.approx(2 * math.atan(1e-6) / math.pi, rel=1e-10)
    assert student_t_two_sided_p(math.inf, 5) == 0.0


@pytest.mark.parametrize(("q", "df", "expected"), [
    (0.975, 1, 12.706204736174698),
    (0.975, 2, 4.302652729749464),
    (0.975, 10, 2.228138851986274),
    (0.975, 30, 2.042272456301238),
    (0.995, 5, 4.032142983557536),
    (0.95, 999, 1.646380345427535),
])
def test_t_ppf_matches_tables(q: float, df: int, expected: float) -> None:
    assert student_t_ppf(q, df) == pytest.approx(expected, rel=1e-10)
    assert student_t_ppf(1 - q, df) == pytest.approx(-expected, rel=1e-10)


def test_t_ppf_df2_closed_form_and_normal_limit() -> None:
    for q in (0.6, 0.9, 0.99, 0.9999):
        assert student_t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-11)
    assert student_t_ppf(0.975, 1e6) == pytest.approx(1.959966356814107, rel=1e-9)  # normal: 1.95996398
    with pytest.raises(ValueError, match="quantile level"):
        student_t_ppf(1.0, 3)


@pytest.mark.parametrize("x", [1e-6, 0.1, 0.5, 0.7, 0.95, 1 - 1e-9])
def test_incomplete_beta_closed_forms(x: float) -> None:
    assert regularized_incomplete_beta(1.0, 1.0, x) == pytest.approx(x, rel=1e-12)
    assert regularized_incomplete_beta(3.5, 1.0, x) == pytest.approx(x**3.5, rel=1e-11, abs=1e-300)
    assert regularized_incomplete_beta(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-11)


def test_incomplete_beta_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="a > 0"):
        regularized_incomplete_beta(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        regularized_incomplete_beta(1.0, 1.0, 1.5)


def test_mean_ci95_three_values_exact() -> None:
    # n = 3 -> df = 2, whose 0.975 quantile is 0.95 / sqrt(2 * 0.975 * 0.025); s = 2 for (1, 3, 5).
    mean, half = mean_ci95([1.0, 3.0, 5.0])
    assert mean == 3.0
    assert half == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025) * 2 / math.sqrt(3), rel=1e-12)


def test_mean_ci95_uses_sample_std_and_matches_convention_for_many_episodes() -> None:
    values = torch.rand(600, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, half = mean_ci95(values)
    assert mean == pytest.approx(float(values.mean()), rel=1e-15)
    conventional = 1.96 * float(values.std(correction=1)) / math.sqrt(600)
    assert half / conventional == pytest.approx(student_t_ppf(0.975, 599) / 1.96, rel=1e-12)
    assert 1.0 < half / conventional < 1.0021


def test_mean_ci95_constant_values_and_errors() -> None:
    assert mean_ci95([0.8, 0.8, 0.8]) == (pytest.approx(0.8), 0.0)
    with pytest.raises(ValueError, match="at least 2 value"):
        mean_ci95([0.5])
    with pytest.raises(ValueError, match="NaN or infinite"):
        mean_ci95([0.5, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        mean_ci95(torch.zeros(2, 3))


def test_paired_comparison_known_answer() -> None:
    # Differences (1, 2, 3): mean 2, s = 1, t = 2 sqrt(3), df = 2 -> two-sided p = 1 - t / sqrt(2 + t^2).
    a = torch.tensor([1.5, 2.0, 3.25], dtype=torch.float64)
    b = a - torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = paired_comparison(a, b, permutations=100)
    t = 2 * math.sqrt(3)
    assert result.n == 3
    assert result.mean_difference == pytest.approx(2.0)
    assert result.t_statistic == pytest.approx(t, rel=1e-12)
    assert result.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (result.ci95_low, result.ci95_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    # Exact sign flips: only all-plus and all-minus reach |sum| = 6, so p = 2 / 8.
    assert result.permutation_p_value == 0.25
    assert result.permutations == 8
    assert result.mean_a == pytest.approx(float(a.mean())) and result.mean_b == pytest.approx(float(b.mean()))


def test_paired_comparison_df1_is_cauchy_and_antisymmetric() -> None:
    forward = paired_comparison([1.0, 3.0], [0.0, 0.0])  # mean 2, s = sqrt(2), se = 1, t = 2
    assert forward.p_value == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-12)
    assert forward.permutation_p_value is None and forward.permutations == 0
    backward = paired_comparison([0.0, 0.0], [1.0, 3.0])
    assert backward.t_statistic == -forward.t_statistic
    assert backward.p_value == forward.p_value
    assert (backward.ci95_low, backward.ci95_high) == (-forward.ci95_high, -forward.ci95_low)


def test_paired_comparison_degenerate_differences() -> None:
    same = paired_comparison([0.2, 0.4, 0.6], [0.2, 0.4, 0.6])
    assert (same.t_statistic, same.p_value, same.mean_difference) == (0.0, 1.0, 0.0)
    shifted = paired_comparison([0.5, 0.75, 1.0], [0.25, 0.5, 0.75])
    assert shifted.t_statistic == math.inf and shifted.p_value == 0.0
    with pytest.raises(ValueError, match="same episodes"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])


def test_sign_flip_monte_carlo_agrees_with_exact_enumeration() -> None:
    d = torch.linspace(-0.3, 0.5, 18, dtype=torch.float64) + 0.05 * torch.cos(torch.arange(18.0, dtype=torch.float64))
    signs = 1 - 2 * ((torch.arange(2**18).unsqueeze(1) >> torch.arange(18)) & 1).to(torch.float64)
    exact = float(((signs @ d).abs() >= abs(float(d.sum())) - 1e-12).double().mean())
    p, used = sign_flip_p_value(d, permutations=20_000, seed=3)
    assert used == 20_000
    assert p == pytest.approx(exact, abs=0.015)  # about 4 standard errors of the Monte Carlo estimate
    assert sign_flip_p_value(d, permutations=20_000, seed=3) == (p, used)
    assert 1 / 20_001 <= p <= 1.0


def test_permutation_and_t_test_agree_on_many_episodes() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 76, (400,), generator=g).double() / 75
    b = (a + 0.01 * torch.randn(400, generator=g, dtype=torch.float64) + 0.002).clamp(0, 1)
    result = paired_comparison(a, b, permutations=5_000, seed=0)
    assert result.permutation_p_value == pytest.approx(result.p_value, abs=0.03)


# --- the wrappers against scipy itself -------------------------------------------------------------------------------


def test_t_wrappers_agree_with_scipy_and_validate() -> None:
    for t, df in [(-2.5, 3), (0.0, 7.5), (1.7, 29), (40.0, 2)]:
        assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-14)
        assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-14)
    assert student_t_two_sided_p(0.0, 4) == 1.0 and student_t_ppf(0.5, 4) == 0.0
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_two_sided_p(1.0, 0)
    with pytest.raises(ValueError, match="degrees of freedom"):
        student_t_ppf(0.9, -1)
    with pytest.raises(ValueError, match="NaN"):
        student_t_cdf(math.nan, 3)


def test_incomplete_beta_both_branches_give_the_t_tail() -> None:
    # P(|T| >= t) = I_x(df/2, 1/2) with x = df / (df + t^2) and 1 - x = t^2 / (df + t^2) passed exactly as y:
    # small t takes the complement branch (y < x), large t the direct one.
    for t, df in [(1e-4, 10), (0.3, 3), (2.0, 7), (50.0, 4)]:
        x, y = df / (df + t * t), t * t / (df + t * t)
        assert regularized_incomplete_beta(df / 2, 0.5, x, y) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-13)
    assert regularized_incomplete_beta(2.0, 3.0, 0.3) == pytest.approx(stats.beta.cdf(0.3, 2.0, 3.0), rel=1e-14)
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0 and regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0


def test_paired_t_test_matches_scipy_ttest_rel() -> None:
    g = np.random.default_rng(4)
    a = g.integers(0, 76, 200) / 75
    b = np.clip(a + g.normal(0.01, 0.05, 200), 0, 1)
    result = paired_comparison(a, b)
    reference = stats.ttest_rel(a, b)
    low, high = reference.confidence_interval(0.95)
    assert result.t_statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert (result.ci95_low, result.ci95_high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))


def test_exact_sign_flips_match_scipy_permutation_test() -> None:
    d = np.array([0.3, -0.1, 0.25, 0.05, -0.2, 0.4, 0.15, 0.1, -0.05, 0.35])
    reference = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                       vectorized=True)
    p, used = sign_flip_p_value(d, permutations=0, seed=0)
    assert used == 2**10
    assert p == pytest.approx(reference.pvalue, rel=1e-12)


# --- Wilcoxon signed-rank test ---------------------------------------------------------------------------------------


def test_wilcoxon_small_samples_by_hand() -> None:
    # Five positive differences, no ties: only the all-plus and all-minus sign patterns reach rank sum 15 or 0.
    assert wilcoxon_p_value([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32, rel=1e-12)
    assert wilcoxon_p_value([-1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 * 2 / 32, rel=1e-12)  # sums 14, 15
    # Pratt: the zero takes rank 1 and drops out, so the signed ranks are 2, 3, 4; the observed sum 9 is the largest
    # of the 8 subset sums of {2, 3, 4}, and the zero's sign is irrelevant: p = 2 * 1/8.
    assert wilcoxon_p_value([0.0, 1.0, 2.0, 3.0]) == pytest.approx(0.25, rel=1e-12)
    # A single non-zero difference among zeros: its two signs give rank sums 0 and 3, p = 2 * min(1/2, 1) -> 1.
    assert wilcoxon_p_value([0.0, 0.0, 0.7]) == 1.0


def test_wilcoxon_all_zero_differences_give_one() -> None:
    assert wilcoxon_p_value([0.0, 0.0, 0.0]) == 1.0
    assert wilcoxon_p_value([0.4 - 0.4, 1e-17, -1e-16]) == 1.0  # rounding residue counts as no difference
    same = paired_comparison([0.2, 0.4, 0.6], [0.2, 0.4, 0.6])
    assert same.wilcoxon_p_value == 1.0


def test_wilcoxon_large_sample_is_the_normal_approximation_by_hand() -> None:
    # n = 60 > 50 distinct magnitudes: z = (W+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24), p = erfc(|z| / sqrt 2).
    n = 60
    magnitudes = np.arange(1, n + 1, dtype=np.float64)
    signs = np.where(np.arange(n) % 3 == 0, -1.0, 1.0)
    d = signs * magnitudes / 100
    w_plus = magnitudes[signs > 0].sum()
    z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert wilcoxon_p_value(d) == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-12)
    assert wilcoxon_p_value(-d) == wilcoxon_p_value(d)


def test_wilcoxon_treats_rounded_equal_accuracy_differences_as_ties() -> None:
    # Accuracies k / 75: a difference of j / 75 computed from different pairs differs in the last bit, but must tie.
    g = np.random.default_rng(7)
    k_a = g.integers(0, 76, 300)
    k_b = np.clip(k_a + g.integers(-3, 5, 300), 0, 75)
    a, b = k_a / 75, k_b / 75
    assert len(np.unique(np.abs(a - b))) > len(np.unique(np.abs(k_a - k_b)))  # rounding did break ties
    expected = stats.wilcoxon((k_a - k_b).astype(np.float64), zero_method="pratt").pvalue
    assert wilcoxon_p_value(a - b) == pytest.approx(expected, rel=1e-12)
    assert paired_comparison(a, b).wilcoxon_p_value == wilcoxon_p_value(a - b)


def test_wilcoxon_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 1 value"):
        wilcoxon_p_value([])
    with pytest.raises(ValueError, match="NaN or infinite"):
        wilcoxon_p_value([0.1, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        wilcoxon_p_value(np.zeros((2, 2)))


def test_paired_comparison_wilcoxon_field_and_opt_out() -> None:
    a, b = [0.5, 0.7, 0.9, 0.6], [0.4, 0.4, 0.5, 0.7]  # differences 0.1, 0.3, 0.4, -0.1: ranks 1.5, 3, 4, 1.5
    result = paired_comparison(a, b)
    assert result.wilcoxon_p_value == pytest.approx(wilcoxon_p_value(np.subtract(a, b)))
    # Exact over the 16 sign patterns of ranks (1.5, 1.5, 3, 4): W+ = 8.5 is reached or exceeded by 3 patterns.
    assert result.wilcoxon_p_value == pytest.approx(2 * 3 / 16, rel=1e-12)
    off = paired_comparison(a, b, wilcoxon=False)
    assert off.wilcoxon_p_value is None
    assert dataclasses.replace(off, wilcoxon_p_value=result.wilcoxon_p_value) == result


def test_result_files_without_the_wilcoxon_field_still_read(tmp_path: Path) -> None:
    old_fields = {f.name: 0.0 for f in dataclasses.fields(PairedComparison) if f.name != "wilcoxon_p_value"}
    assert PairedComparison.from_dict(old_fields).wilcoxon_p_value is None
    g = torch.Generator().manual_seed(0)
    acc = {name: torch.randint(0, 16, (6,), generator=g).double() / 15 for name in ("a", "b")}
    learners = tuple(LearnerResult(name, x, *mean_ci95(x)) for name, x in acc.items())
    result = EvaluationResult(EpisodeSpec("toy", 5, 1, 3, 6, 0), learners,
                              (Comparison("a", "b", paired_comparison(acc["a"], acc["b"])),), None, "toy")
    path = write_json(tmp_path / "new.json", result, provenance={})
    assert read_json(path)[0][0].comparisons[0].result == result.comparisons[0].result
    document = json.loads(path.read_text())
    for entry in document["results"][0]["comparisons"]:
        del entry["wilcoxon_p_value"]  # as written before the field existed
    (tmp_path / "old.json").write_text(json.dumps(document))
    old = read_json(tmp_path / "old.json")[0][0].comparisons[0].result
    assert old == dataclasses.replace(result.comparisons[0].result, wilcoxon_p_value=None)


# --- bootstrap interval of a mean ------------------------------------------------------------------------------------


def test_bootstrap_ci_is_scipy_percentile_and_reproducible() -> None:
    values = np.random.default_rng(0).integers(0, 76, 300) / 75
    low, high = bootstrap_ci(values, resamples=2000, seed=3)
    reference = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
                                rng=np.random.default_rng(3)).confidence_interval
    assert (low, high) == (pytest.approx(reference.low, rel=1e-12), pytest.approx(reference.high, rel=1e-12))
    assert bootstrap_ci(torch.tensor(values), resamples=2000, seed=3) == (low, high)
    assert bootstrap_ci(values, resamples=2000, seed=4) != (low, high)
    narrow = bootstrap_ci(values, resamples=2000, seed=3, level=0.5)
    assert low < narrow[0] < values.mean() < narrow[1] < high


def test_bootstrap_ci_agrees_with_the_t_interval_for_many_episodes() -> None:
    values = np.random.default_rng(1).normal(0.6, 0.1, 2000)
    mean, half = mean_ci95(values)
    low, high = bootstrap_ci(values, resamples=5000, seed=0)
    assert low == pytest.approx(mean - half, abs=0.1 * half)
    assert high == pytest.approx(mean + half, abs=0.1 * half)


def test_bootstrap_ci_constant_values_and_errors() -> None:
    assert bootstrap_ci([0.8, 0.8, 0.8], resamples=100, seed=0) == (0.8, 0.8)
    with pytest.raises(ValueError, match="at least 2 value"):
        bootstrap_ci([0.5], resamples=100, seed=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        bootstrap_ci([0.5, float("inf")], resamples=100, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(np.zeros((3, 2)), resamples=100, seed=0)
    with pytest.raises(ValueError, match="resamples must be a positive integer"):
        bootstrap_ci([0.5, 0.6], resamples=0, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        bootstrap_ci([0.5, 0.6], resamples=10, seed=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        bootstrap_ci([0.5, 0.6], resamples=10, seed=0, level=95)


# --- variance over training seeds ------------------------------------------------------------------------------------


def test_seed_and_episode_ci_by_hand() -> None:
    # 3 seeds x 4 episodes. Per-seed means 0.5, 0.6, 0.7 (s = 0.1, df = 2); per-episode seed means 0.5, 0.7, 0.5, 0.7.
    table = np.array([[0.4, 0.6, 0.4, 0.6],
                      [0.5, 0.7, 0.5, 0.7],
                      [0.6, 0.8, 0.6, 0.8]])
    result = seed_and_episode_ci(table, resamples=500, seed=1)
    assert isinstance(result, SeedEpisodeCI)
    assert (result.seeds, result.episodes, result.resamples) == (3, 4, 500)
    assert result.mean == pytest.approx(0.6, rel=1e-14)
    t_df2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    seed_half = t_df2 * 0.1 / math.sqrt(3)
    assert (result.seed_ci95_low, result.seed_ci95_high) == (pytest.approx(0.6 - seed_half, rel=1e-12),
                                                             pytest.approx(0.6 + seed_half, rel=1e-12))
    episode_half = student_t_ppf(0.975, 3) * math.sqrt(4 * 0.01 / 3) / 2  # s of (0.5, 0.7, 0.5, 0.7)
    assert (result.episode_ci95_low, result.episode_ci95_high) == (pytest.approx(0.6 - episode_half, rel=1e-12),
                                                                   pytest.approx(0.6 + episode_half, rel=1e-12))
    means = two_level_bootstrap_means(table, resamples=500, seed=1)
    assert (result.bootstrap_ci95_low, result.bootstrap_ci95_high) == tuple(np.quantile(means, [0.025, 0.975]))
    assert result.bootstrap_ci95_low < 0.6 < result.bootstrap_ci95_high
    assert SeedEpisodeCI.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_two_level_bootstrap_resamples_seeds_then_shared_episodes() -> None:
    table = np.random.default_rng(2).random((4, 7))
    means = two_level_bootstrap_means(table, resamples=300, seed=9)
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 4, size=(300, 4))
    cols = rng.integers(0, 7, size=(300, 7))
    expected = [table[np.ix_(r, c)].mean() for r, c in zip(rows, cols, strict=True)]
    np.testing.assert_allclose(means, expected, rtol=1e-13)
    np.testing.assert_array_equal(two_level_bootstrap_means(table, resamples=300, seed=9), means)


def test_seed_interval_reflects_variation_between_seeds() -> None:
    g = np.random.default_rng(5)
    episodes = g.integers(0, 76, 500) / 75
    shifts = np.array([-0.03, 0.0, 0.02, 0.04, -0.01])  # seeds differ far more than the episode noise
    table = np.clip(episodes + shifts[:, None] + g.normal(0, 0.01, (5, 500)), 0, 1)
    result = seed_and_episode_ci(table, resamples=2000, seed=0)
    seed_width = result.seed_ci95_high - result.seed_ci95_low
    episode_width = result.episode_ci95_high - result.episode_ci95_low
    bootstrap_width = result.bootstrap_ci95_high - result.bootstrap_ci95_low
    assert seed_width > episode_width
    assert bootstrap_width > episode_width  # the bootstrap includes the seed variation
    assert seed_and_episode_ci(table, resamples=2000, seed=0) == result


def test_seed_and_episode_ci_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds and 2 episodes"):
        seed_and_episode_ci([[0.5, 0.6, 0.7]])
    with pytest.raises(ValueError, match="at least 2 seeds and 2 episodes"):
        seed_and_episode_ci([[0.5], [0.6]])
    with pytest.raises(ValueError, match=r"\(seeds, episodes\) table"):
        seed_and_episode_ci([0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match=r"\(seeds, episodes\) table"):
        seed_and_episode_ci(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        seed_and_episode_ci([[0.5, float("nan")], [0.6, 0.7]])
    with pytest.raises(ValueError, match="resamples"):
        seed_and_episode_ci([[0.5, 0.6], [0.6, 0.7]], resamples=0)
    constant = seed_and_episode_ci([[0.8, 0.8], [0.8, 0.8]], resamples=10)
    assert (constant.bootstrap_ci95_low, constant.bootstrap_ci95_high) == (0.8, 0.8)
    assert constant.seed_ci95_low == constant.seed_ci95_high == constant.episode_ci95_low == pytest.approx(0.8)
