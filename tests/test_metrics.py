"""Accuracy statistics against closed forms and published t tables."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.evaluation.metrics import (
    mean_ci95,
    paired_comparison,
    regularized_incomplete_beta,
    sign_flip_p_value,
    student_t_cdf,
    student_t_ppf,
    student_t_two_sided_p,
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
    with pytest.raises(ValueError, match="at least 2 values"):
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
