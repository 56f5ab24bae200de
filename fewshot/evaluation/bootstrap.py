"""Bootstrap intervals: the percentile bootstrap of a mean accuracy, and the spread of a method trained with several
seeds and tested on the same episodes (intervals over episodes, over seeds and over both)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from fewshot.evaluation.metrics import ArrayLike, as_vector, mean_ci95

__all__ = ["SeedEpisodeCI", "bootstrap_ci", "seed_and_episode_ci", "two_level_bootstrap_means"]

_BOOTSTRAP_CHUNK = 2**22  # float64 entries per resampling chunk (32 MiB)


def _is_integer(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_resampling(resamples: int, seed: int, level: float) -> None:
    if not _is_integer(resamples) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, e.g. 10000, got {resamples!r}")
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (the bootstrap must be reproducible), got {seed!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level}")


def bootstrap_ci(values: ArrayLike, *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (:func:`scipy.stats.bootstrap`).

    ``resamples`` samples of n episodes are drawn with replacement by ``numpy.random.default_rng(seed)``, so equal
    arguments give equal intervals. The percentile method is used rather than BCa: it is defined for any data
    (BCa's acceleration is undefined when every score is equal and scipy then returns NaN), needs no jackknife
    (n evaluations of the mean over n - 1 episodes, which is quadratic in the episodes), and for a mean over
    hundreds of bounded scores the sampling distribution is close to symmetric, so BCa's correction is negligible.
    Identical values give exactly (value, value).

    Args:
        values: (n,) per-episode scores, n >= 2.
        resamples: number of bootstrap samples, >= 1 (e.g. 10000).
        seed: seed of the generator.
        level: coverage of the two-sided interval, in (0, 1).
    Returns:
        (low, high) as Python floats, in the units of ``values``.
    """
    x = as_vector(values, "values", at_least=2, needed_by="a bootstrap interval")
    n = len(x)
    _check_resampling(resamples, seed, level)
    if bool((x == x[0]).all()):
        return float(x[0]), float(x[0])
    result = stats.bootstrap((x.numpy(),), np.mean, n_resamples=resamples, batch=max(1, _BOOTSTRAP_CHUNK // n),
                             confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class SeedEpisodeCI:
    """Mean accuracy of a method trained with several seeds and tested on the same episodes, with three intervals.

    Attributes:
        seeds, episodes: the shape of the accuracy table.
        mean: mean over every seed and episode.
        episode_ci95_low, episode_ci95_high: 95% Student-t interval over episodes of the seed-averaged
            per-episode accuracy (df = episodes - 1): the uncertainty from the finite episode sample only.
        seed_ci95_low, seed_ci95_high: 95% Student-t interval over the per-seed mean accuracies (df = seeds - 1):
            the variation between training runs.
        bootstrap_ci95_low, bootstrap_ci95_high: 95% percentile interval of a two-level bootstrap that resamples
            seeds and episodes together, so both sources of variation are in it.
        resamples: number of two-level bootstrap samples.
    """

    seeds: int
    episodes: int
    mean: float
    episode_ci95_low: float
    episode_ci95_high: float
    seed_ci95_low: float
    seed_ci95_high: float
    bootstrap_ci95_low: float
    bootstrap_ci95_high: float
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> SeedEpisodeCI:
        """Inverse of :meth:`to_dict`."""
        return SeedEpisodeCI(**data)


def two_level_bootstrap_means(accuracies: np.ndarray, *, resamples: int, seed: int) -> np.ndarray:
    """Bootstrap distribution of the mean of a (seeds, episodes) table, resampling seeds and then episodes.

    Each sample draws ``seeds`` row indices and then ``episodes`` column indices with replacement (in that order,
    from ``numpy.random.default_rng(seed)``, ``2**22 // max(seeds, episodes)`` samples at a time) and takes the
    mean of the selected rows and columns. The episodes are the same for every seed, so one episode sample is
    shared by every drawn seed (the crossed, "pigeonhole" bootstrap of Owen 2007): resampling episodes separately
    within each seed would treat the seeds' scores on one episode as independent and understate the episode
    variation.

    Args:
        accuracies: (seeds, episodes) finite scores.
        resamples: number of samples, >= 1.
        seed: seed of the generator.
    Returns:
        (resamples,) float64 means.
    """
    table = np.asarray(accuracies, dtype=np.float64)
    if table.ndim != 2 or min(table.shape) < 1:
        raise ValueError(f"accuracies must be a non-empty (seeds, episodes) table, got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("accuracies contain NaN or infinite values; check the per-episode scores")
    _check_resampling(resamples, seed, 0.5)
    n_seeds, n_episodes = table.shape
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK // max(n_seeds, n_episodes))
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        rows = rng.integers(0, n_seeds, size=(size, n_seeds))
        cols = rng.integers(0, n_episodes, size=(size, n_episodes))
        offsets = np.arange(size)[:, None]
        row_counts = np.bincount((rows + n_seeds * offsets).ravel(), minlength=size * n_seeds)
        col_counts = np.bincount((cols + n_episodes * offsets).ravel(), minlength=size * n_episodes)
        row_counts = row_counts.reshape(size, n_seeds).astype(np.float64)
        col_counts = col_counts.reshape(size, n_episodes).astype(np.float64)
        means[start:start + size] = ((row_counts @ table) * col_counts).sum(axis=1) / (n_seeds * n_episodes)
    return means


def seed_and_episode_ci(accuracies: ArrayLike | Sequence[Sequence[float]], *, resamples: int = 10_000,
                        seed: int = 0) -> SeedEpisodeCI:
    """Mean accuracy of a method trained with several seeds, with intervals over episodes, seeds and both.

    Args:
        accuracies: (seeds, episodes) per-episode accuracies, one row per training seed, every row scored on the
            same episodes (same episode seed); at least 2 seeds and 2 episodes.
        resamples: number of two-level bootstrap samples (:func:`two_level_bootstrap_means`).
        seed: seed of the bootstrap generator.
    Returns:
        A :class:`SeedEpisodeCI`. The episode and seed intervals are :func:`mean_ci95` of the per-episode
        seed means and of the per-seed episode means; both are centred on ``mean`` up to rounding.
    """
    table = torch.as_tensor(accuracies, dtype=torch.float64).cpu()
    if table.ndim != 2:
        raise ValueError(f"accuracies must be a (seeds, episodes) table, one row per training seed, got shape "
                         f"{tuple(table.shape)}")
    n_seeds, n_episodes = table.shape
    if n_seeds < 2 or n_episodes < 2:
        raise ValueError(f"accuracies need at least 2 seeds and 2 episodes for an interval over each, got "
                         f"{n_seeds} seeds and {n_episodes} episodes")
    if not bool(torch.isfinite(table).all()):
        raise ValueError("accuracies contain NaN or infinite values; check the per-episode scores")
    _check_resampling(resamples, seed, 0.95)
    episode_mean, episode_half = mean_ci95(table.mean(dim=0))
    seed_mean, seed_half = mean_ci95(table.mean(dim=1))
    if bool((table == table[0, 0]).all()):
        low = high = float(table[0, 0])
    else:
        means = two_level_bootstrap_means(table.numpy(), resamples=resamples, seed=seed)
        low, high = (float(q) for q in np.quantile(means, [0.025, 0.975]))
    return SeedEpisodeCI(
        seeds=n_seeds, episodes=n_episodes, mean=float(table.mean()),
        episode_ci95_low=episode_mean - episode_half, episode_ci95_high=episode_mean + episode_half,
        seed_ci95_low=seed_mean - seed_half, seed_ci95_high=seed_mean + seed_half,
        bootstrap_ci95_low=low, bootstrap_ci95_high=high, resamples=resamples,
    )
