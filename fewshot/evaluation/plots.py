"""PNG plots of results and training histories, drawn on matplotlib Figures without pyplot (no global backend);
matplotlib is optional (``pip install 'fewshot[plot]'``): without it a warning is logged and nothing is drawn."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from episodes.files import atomic_write
from fewshot.evaluation.report import _as_list, _cells, _dataset_label
from fewshot.evaluation.results import EvaluationResult

__all__ = ["new_figure", "plot_accuracy_vs_shots", "plot_learning_curve", "save_png"]

logger = logging.getLogger(__name__)


def new_figure(n_axes: int) -> Any | None:
    """A matplotlib Figure with ``n_axes`` side-by-side axes (no pyplot, no global backend), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plot (pip install 'fewshot[plot]')")
        return None
    figure = Figure(figsize=(4.5 * n_axes, 3.5), layout="constrained")
    figure.subplots(1, n_axes, squeeze=False)
    return figure


def save_png(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` to ``path`` as a 150-dpi PNG, atomically."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=150))


def plot_accuracy_vs_shots(path: str | os.PathLike[str], results: EvaluationResult | Iterable[EvaluationResult], *,
                           title: str | None = None) -> Path | None:
    """Accuracy (percent, with 95% error bars) against shots, one line per method (and per dataset
    and n_way when the results span several).

    Results of variable episodes (``spec.variable``: no fixed shot count) are left out. Returns the PNG path, or
    None when matplotlib is missing (a warning is logged) or every result is of variable episodes.
    """
    items = _as_list(results)
    _cells(items)  # raises on two results for one method and setting
    items = [r for r in items if r.spec.variable is None]
    if not items:
        return None
    qualify = len({(_dataset_label(r), r.spec.n_way) for r in items}) > 1
    lines: dict[str, list[tuple[int, float, float]]] = {}
    for result in items:
        for learner in result.learners:
            label = f"{learner.name} ({_dataset_label(result)}, {result.spec.n_way}-way)" if qualify else learner.name
            lines.setdefault(label, []).append((result.spec.n_shot, 100 * learner.mean, 100 * learner.ci95))
    figure = new_figure(1)
    if figure is None:
        return None
    axes = figure.axes[0]
    shots: set[int] = set()
    for label, points in lines.items():
        points.sort()
        shots.update(p[0] for p in points)
        axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                      marker="o", capsize=3, label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(shots), [str(s) for s in sorted(shots)])
    axes.set_xlabel("shots per class")
    axes.set_ylabel("query accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return save_png(figure, path)


def plot_learning_curve(path: str | os.PathLike[str], history: Sequence[Mapping[str, float]], *,
                        keys: Sequence[str] = ("loss", "accuracy"), title: str | None = None) -> Path | None:
    """One panel per metric in ``keys`` against ``step``, from a training history.

    Args:
        history: entries like ``{"step": 100, "loss": 0.9, "accuracy": 0.71}``; every entry needs
            ``step``; an entry may lack some keys (e.g. validation accuracy logged less often).
        keys: metrics to plot; each must appear in at least one entry.
    Returns the PNG path, or None when matplotlib is missing (a warning is logged).
    """
    if not history:
        raise ValueError("history is empty: nothing to plot")
    missing_step = [i for i, entry in enumerate(history) if "step" not in entry]
    if missing_step:
        raise ValueError(f"history entries {missing_step[:5]} have no 'step'; log the step with every entry")
    absent = [k for k in keys if not any(k in entry for entry in history)]
    if absent or not keys:
        present = sorted({k for entry in history for k in entry} - {"step"})
        raise ValueError(f"keys {absent or list(keys)} are not in the history; available: {present}")
    figure = new_figure(len(keys))
    if figure is None:
        return None
    for axes, key in zip(figure.axes, keys, strict=True):
        points = [(float(e["step"]), float(e[key])) for e in history if key in e]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        axes.set_xlabel("step")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    return save_png(figure, path)
