"""A leaderboard of many methods scored on identical episodes: which methods the best one does not significantly beat
(paired t-tests, Holm-adjusted), and the plot that shows it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fewshot.evaluation.metrics import holm_adjust
from fewshot.evaluation.plots import new_figure, save_png
from fewshot.evaluation.results import EvaluationResult

__all__ = ["plot_leaderboard", "tied_with_best"]


def tied_with_best(result: EvaluationResult, *, alpha: float = 0.05) -> dict[str, bool]:
    """For each learner of ``result`` (one episode set, every pair compared), whether it is not significantly
    different from the best learner of its own protocol (the highest mean among the inductive learners, or among
    the transductive ones: the two are ranked apart). Significance: the pair's paired t-test p-value, Holm-adjusted
    over every comparison of the episode set, below ``alpha``. A best learner is tied with itself.

    Raises:
        ValueError: ``result`` lacks the comparison of some pair (pool the runs first:
            :func:`fewshot.evaluation.runs.pool_same_episodes`).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    names = [learner.name for learner in result.learners]
    pairs = len(names) * (len(names) - 1) // 2
    if len(result.comparisons) != pairs:
        raise ValueError(f"{len(result.comparisons)} comparisons for {len(names)} learners (need all {pairs} pairs); "
                         "pool the runs scored on these episodes first")
    kind = {learner.name: learner.transductive for learner in result.learners}
    best = {flag: max((x for x in result.learners if x.transductive == flag), key=lambda x: x.mean).name
            for flag in set(kind.values())}
    adjusted = holm_adjust([c.result.p_value for c in result.comparisons])
    tied = {name: name == best[kind[name]] for name in names}
    for comparison, p in zip(result.comparisons, adjusted, strict=True):
        a, b = comparison.learner_a, comparison.learner_b
        if kind[a] == kind[b] and best[kind[a]] in (a, b):
            tied[b if a == best[kind[a]] else a] = p >= alpha
    return tied


def plot_leaderboard(path: str | os.PathLike[str], results: Iterable[EvaluationResult], *,
                     alpha: float = 0.05) -> Path | None:
    """One panel per episode set: methods sorted by accuracy, their 95% intervals, the ones not significantly
    different from the best of their protocol (:func:`tied_with_best`) filled, the others hollow; transductive
    methods in another colour. Returns the PNG path, or None when matplotlib is missing (a warning is logged)."""
    items = list(results)
    if not items:
        raise ValueError("no results to plot")
    ties = [tied_with_best(result, alpha=alpha) for result in items]
    height = max(len(result.learners) for result in items)
    figure = new_figure(len(items))
    if figure is None:
        return None
    figure.set_size_inches(4.5 * len(items), 1.0 + 0.32 * height)
    for axes, result, tied in zip(figure.axes, items, ties, strict=True):
        ordered = sorted(result.learners, key=lambda learner: learner.mean)
        for row, learner in enumerate(ordered):
            colour = "tab:orange" if learner.transductive else "tab:blue"
            axes.errorbar(100 * learner.mean, row, xerr=100 * learner.ci95, fmt="o", color=colour, capsize=3,
                          markerfacecolor=colour if tied[learner.name] else "white")
        axes.set_yticks(range(len(ordered)), [learner.name for learner in ordered], fontsize="small")
        axes.set_xlabel("query accuracy (%)")
        axes.set_title(result.spec.setting, fontsize="medium")
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(f"filled: not significantly below the best of its protocol (paired t-test, Holm, alpha {alpha:g}); "
                    "orange: transductive", fontsize="small")
    return save_png(figure, path)
