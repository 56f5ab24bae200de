"""Accuracy statistics: the one 95% confidence interval used for every reported number, a paired comparison of two
learners scored on the same episodes, and Holm's adjustment for a family of comparisons (bootstrap intervals and the
spread over training seeds: :mod:`fewshot.evaluation.bootstrap`).

The distributions come from scipy (:mod:`scipy.stats`, :mod:`scipy.special`): the Student-t functions below are
thin, validated wrappers kept for their callers. The sign-flip permutation test stays in torch so that its seeded
random patterns, and therefore every stored p-value, are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import special, stats

_EXACT_SIGN_FLIP_MAX_N = 16  # up to 2**16 sign patterns are enumerated exactly
_TIE_TOLERANCE = 1e-9  # |differences| this close (relative to the largest, at least 1) are ties for the rank test

ArrayLike = Sequence[float] | torch.Tensor | np.ndarray


def as_vector(values: ArrayLike, what: str, *, at_least: int = 0, needed_by: str = "") -> torch.Tensor:
    """``values`` as a (n,) float64 CPU tensor, refused (``ValueError`` naming ``what``) unless 1-D, finite and of
    at least ``at_least`` entries (the message says that ``needed_by`` needs them)."""
    x = torch.as_tensor(values, dtype=torch.float64).cpu()
    if x.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of numbers, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contains NaN or infinite values; check the per-episode scores")
    if len(x) < at_least:
        raise ValueError(f"{needed_by} needs at least {at_least} value(s) in {what}, got {len(x)}; "
                         "evaluate more episodes")
    return x


def _sample_std(x: torch.Tensor) -> float:
    """Standard deviation with ddof=1; exactly 0 when all values are equal (no rounding residue)."""
    return 0.0 if bool((x == x[0]).all()) else float(x.std(correction=1))


def regularized_incomplete_beta(a: float, b: float, x: float, y: float | None = None) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1 (:func:`scipy.special.betainc`).

    ``y`` may pass ``1 - x`` computed without cancellation: when it is the smaller of the two, the result is
    ``1 - I_y(b, a)`` from :func:`scipy.special.betaincc`, which keeps the digits that ``1 - y`` would round off.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a > 0 and b > 0, got a={a}, b={b}")
    y = 1.0 - x if y is None else y
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got x={x}")
    if y < x:
        return float(special.betaincc(b, a, y))
    return float(special.betainc(a, b, x))


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (:data:`scipy.stats.t`)."""
    _check_df(df)
    if math.isnan(t):
        raise ValueError("t statistic is NaN")
    return min(1.0, 2.0 * float(stats.t.sf(abs(t), df)))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (:data:`scipy.stats.t`)."""
    _check_df(df)
    if math.isnan(t):
        raise ValueError("t statistic is NaN")
    return float(stats.t.cdf(t, df))


def student_t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (:data:`scipy.stats.t`)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must lie in (0, 1), got {q}")
    _check_df(df)
    return float(stats.t.ppf(q, df))


def mean_ci95(values: ArrayLike) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t confidence interval of the mean.

    half_width = t_{0.975, n-1} * s / sqrt(n), with s the sample standard deviation (ddof=1).
    For n >= 600 episodes t_{0.975, n-1} < 1.9640, so this matches the ``1.96 * std / sqrt(n)``
    convention of the few-shot literature to within 0.21% of the half-width (0.1% at n = 1000),
    and stays valid for short runs. Identical values give a half-width of exactly 0.

    Args:
        values: (n,) per-episode scores, n >= 2.
    Returns:
        (mean, half_width) as Python floats, in the units of ``values``.
    """
    x = as_vector(values, "values", at_least=2, needed_by="a confidence interval")
    n = len(x)
    return float(x.mean()), student_t_ppf(0.975, n - 1) * _sample_std(x) / math.sqrt(n)


@dataclass(frozen=True)
class PairedComparison:
    """Learner A against learner B on the same n episodes (difference = A - B).

    Attributes:
        n: number of paired episodes.
        mean_a, mean_b: mean score of each learner.
        mean_difference: mean of the per-episode differences A - B.
        ci95_low, ci95_high: 95% Student-t interval of the mean difference.
        t_statistic: mean difference over its standard error (0 if every difference is 0,
            +-inf if every difference is the same non-zero value).
        p_value: two-sided paired t-test p-value, df = n - 1.
        permutation_p_value: two-sided sign-flip permutation p-value, or None when not computed.
        permutations: sign patterns used: 2**n when enumerated exactly (n <= 16), else the
            number of seeded random patterns; 0 when not computed.
        wilcoxon_p_value: two-sided Wilcoxon signed-rank p-value (:func:`wilcoxon_p_value`), or None when not
            computed (also for result files written before this field existed).
    """

    n: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci95_low: float
    ci95_high: float
    t_statistic: float
    p_value: float
    permutation_p_value: float | None
    permutations: int
    wilcoxon_p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PairedComparison:
        """Inverse of :meth:`to_dict`; a dictionary without ``wilcoxon_p_value`` (an older file) reads as None."""
        return PairedComparison(**data)


def sign_flip_p_value(differences: ArrayLike, *, permutations: int, seed: int) -> tuple[float, int]:
    """Two-sided sign-flip permutation p-value of the mean of paired ``differences`` (n,).

    Exact (every one of the 2**n sign patterns) when n <= 16, else ``permutations`` random
    patterns from a generator seeded with ``seed``, with p = (1 + hits) / (1 + permutations).

    Returns:
        (p_value, number of sign patterns used).
    """
    d = as_vector(differences, "differences", at_least=1, needed_by="the sign-flip test")
    n = len(d)
    observed = abs(float(d.sum()))
    tolerance = 1e-9 * max(1.0, float(d.abs().sum()))  # sums in another order must still count as ties
    if n <= _EXACT_SIGN_FLIP_MAX_N:
        bits = (torch.arange(2**n).unsqueeze(1) >> torch.arange(n)) & 1
        sums = ((1 - 2 * bits).to(torch.float64) @ d).abs()
        return float((sums >= observed - tolerance).sum()) / 2**n, 2**n
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1 for n > {_EXACT_SIGN_FLIP_MAX_N}, got {permutations}")
    generator = torch.Generator().manual_seed(seed)
    hits, done, chunk = 0, 0, max(1, 2**22 // n)
    while done < permutations:
        size = min(chunk, permutations - done)
        signs = torch.randint(0, 2, (size, n), generator=generator).to(torch.float64) * 2 - 1
        hits += int(((signs @ d).abs() >= observed - tolerance).sum())
        done += size
    return (1 + hits) / (1 + permutations), permutations


def _snap_ties(d: np.ndarray) -> np.ndarray:
    """``d`` with magnitudes that agree to within the tie tolerance made equal (and near-zero ones exactly 0).

    Accuracies are multiples of 1/queries, and equal differences computed from different pairs (0.4 - 0.3867 and
    0.52 - 0.5067 are both 1/75) can disagree in the last bit; a rank test must see them as the ties they are.
    Sorted magnitudes whose gap is at most the tolerance join one group, represented by its smallest member.
    """
    magnitude = np.abs(d)
    tolerance = _TIE_TOLERANCE * max(1.0, float(magnitude.max()))
    order = np.argsort(magnitude, kind="stable")
    ordered = magnitude[order]
    starts = np.concatenate(([True], np.diff(ordered) > tolerance))
    snapped = np.empty_like(magnitude)
    snapped[order] = ordered[starts][np.cumsum(starts) - 1]
    return np.where(snapped > tolerance, np.copysign(snapped, d), 0.0)


def wilcoxon_p_value(differences: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences`` (n,) (:func:`scipy.stats.wilcoxon`).

    Zero differences (episodes both learners scored the same; frequent, because accuracies are multiples of
    1/queries) are handled by Pratt's method (``zero_method="pratt"``, Pratt 1959): the zeros are ranked with the
    other differences and then contribute to neither rank sum, and the null distribution is adjusted for them.
    Wilcoxon's original treatment (``"wilcox"``) drops them before ranking, which tests the remaining episodes as
    if they were the whole sample; Pratt's method keeps every episode in the ranking, so a small non-zero
    difference ranks low when many episodes showed none, and scipy documents it as the more conservative of the
    two. If every difference is zero the learners are indistinguishable on these episodes and the p-value is 1
    (scipy would return NaN).

    Magnitudes equal up to float rounding (1e-9 relative to the largest, at least 1) are ties. scipy's
    ``method="auto"`` picks the test: the exact null distribution for n <= 50 without ties or zeros, the exact
    sign-flip distribution for n <= 13 with them, else the normal approximation with tie and zero corrections.

    Args:
        differences: (n,) per-episode score differences a - b, n >= 1.
    Returns:
        The p-value in [0, 1], a Python float.
    """
    d = as_vector(differences, "differences", at_least=1, needed_by="the Wilcoxon signed-rank test")
    snapped = _snap_ties(d.numpy())
    if not snapped.any():
        return 1.0
    return float(min(1.0, stats.wilcoxon(snapped, zero_method="pratt", alternative="two-sided").pvalue))


def paired_comparison(a: ArrayLike, b: ArrayLike, *, permutations: int = 0, seed: int = 0,
                      wilcoxon: bool = True) -> PairedComparison:
    """Compare two learners scored on the same episodes: paired t-test on the differences a - b.

    The t statistic is mean / (s / sqrt(n)) with the sample standard deviation s (ddof=1), as in
    :func:`scipy.stats.ttest_rel`, whose p-value it matches; identical differences are handled without scipy's NaN
    (t = 0 and p = 1 when they are all 0, t = +-inf and p = 0 otherwise).

    Args:
        a, b: (n,) per-episode scores of learners A and B on the same episodes, n >= 2.
        permutations: 0 skips the sign-flip permutation test; otherwise it is computed exactly
            for n <= 16 and with this many seeded random sign patterns above.
        seed: seed of the random sign patterns.
        wilcoxon: also compute the Wilcoxon signed-rank p-value (:func:`wilcoxon_p_value`); False leaves None.
    """
    x, y = as_vector(a, "a"), as_vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same episodes: got {len(x)} and {len(y)} values")
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    d = x - y
    n = len(d)
    mean_d, half = mean_ci95(d)
    se = _sample_std(d) / math.sqrt(n)
    if se > 0:
        t = mean_d / se
        p = student_t_two_sided_p(t, n - 1)
    else:
        t = 0.0 if mean_d == 0 else math.copysign(math.inf, mean_d)
        p = 1.0 if mean_d == 0 else 0.0
    perm_p, used = sign_flip_p_value(d, permutations=permutations, seed=seed) if permutations else (None, 0)
    return PairedComparison(
        n=n, mean_a=float(x.mean()), mean_b=float(y.mean()), mean_difference=mean_d,
        ci95_low=mean_d - half, ci95_high=mean_d + half, t_statistic=t, p_value=p,
        permutation_p_value=perm_p, permutations=used, wilcoxon_p_value=wilcoxon_p_value(d) if wilcoxon else None,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (Holm 1979) of ``p_values`` from a family of tests, in their given order.

    The i-th smallest p-value is multiplied by (m - i + 1), made non-decreasing along the sorted order and capped
    at 1; rejecting every adjusted p-value below alpha controls the family-wise error rate at alpha.

    Args:
        p_values: m raw p-values in [0, 1].
    Returns:
        m adjusted p-values, in the order of ``p_values``.
    """
    values = [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"p-values must lie in [0, 1], got {values}")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=values.__getitem__)):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted
