"""A picture of one episode: its support and query images, one row per class, and a learner's predictions."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from episodes import EpisodeBatch, FewShotDataset
from fewshot.evaluation.plots import save_png

__all__ = ["episode_figure", "plot_episode"]

logger = logging.getLogger(__name__)

RIGHT, WRONG = "tab:green", "tab:red"


def _check(batch: EpisodeBatch, task: int, predictions: torch.Tensor | None, queries: int | None,
           dataset: FewShotDataset | None) -> torch.Tensor | None:
    """Validate the arguments of :func:`episode_figure`; the predicted label of each query of the task, or None."""
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"batch must be an EpisodeBatch, got {type(batch).__name__}")
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < batch.n_tasks:
        raise ValueError(f"task must be an int in [0, {batch.n_tasks}) (the batch holds {batch.n_tasks} episodes), "
                         f"got {task!r}")
    if batch.support_x.ndim != 5 or batch.support_x.shape[2] not in (1, 3):
        raise ValueError(f"the batch must hold images (B, S, C, H, W) with 1 or 3 channels, got support_x of shape "
                         f"{tuple(batch.support_x.shape)}; plot the images, not features")
    if queries is not None and (isinstance(queries, bool) or not isinstance(queries, int) or queries < 1):
        raise ValueError(f"queries (per class, shown) must be a positive int or None for all, got {queries!r}")
    if dataset is not None and len(dataset.mean) not in (1, batch.support_x.shape[2]):
        raise ValueError(f"dataset {dataset.name!r} has {len(dataset.mean)} normalisation values for "
                         f"{batch.support_x.shape[2]}-channel images: pass the dataset the batch was sampled from")
    if dataset is not None and int(batch.classes.max()) >= dataset.num_classes:
        raise ValueError(f"the batch names class {int(batch.classes.max())} but dataset {dataset.name!r} has "
                         f"{dataset.num_classes} classes: pass the dataset the batch was sampled from")
    if predictions is None:
        return None
    n_query = batch.query_y.shape[1]
    if predictions.shape[:2] != (batch.n_tasks, n_query) or predictions.ndim not in (2, 3) or (
            predictions.ndim == 3 and predictions.shape[2] != batch.n_way):
        raise ValueError(f"predictions must be the batch's logits ({batch.n_tasks}, {n_query}, {batch.n_way}) (what "
                         f"learner.predict(batch) returns) or labels ({batch.n_tasks}, {n_query}), got shape "
                         f"{tuple(predictions.shape)}")
    chosen = predictions[task]
    return (chosen.argmax(-1) if chosen.ndim == 2 else chosen).long().cpu()


def _pixels(images: torch.Tensor, dataset: FewShotDataset | None) -> torch.Tensor:
    """(N, C, H, W) model input -> (N, H, W, C) values in [0, 1] for ``imshow``.

    With ``dataset``, undoes its normalisation (``x * std + mean``: the pixels as loaded); else each image is
    stretched from its own minimum to its maximum."""
    x = images.detach().float().cpu()
    if dataset is not None:
        x = x * torch.tensor(dataset.std).view(-1, 1, 1) + torch.tensor(dataset.mean).view(-1, 1, 1)
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1)


def _wrap(name: str, width: int = 22) -> str:
    """A class name on lines of about ``width`` characters, broken after its ``/`` separators."""
    lines = [""]
    for part in re.split(r"(?<=/)", name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _show(axes: Any, image: torch.Tensor) -> None:
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axes.imshow(image.numpy())
    axes.set_xticks([])
    axes.set_yticks([])


def episode_figure(batch: EpisodeBatch, *, task: int = 0, predictions: torch.Tensor | None = None,
                   dataset: FewShotDataset | None = None, queries: int | None = None,
                   title: str | None = None) -> Any | None:
    """A matplotlib ``Figure`` of episode ``task`` of ``batch``: the support set on the left, the query set on the
    right, one row per episode label (class-major order, as sampled).

    Each row starts with its label (and the dataset's class name, with ``dataset``). With ``predictions``, every
    query image is titled with its predicted label, green where it is the true label and red where it is not, and
    the figure's title counts the right ones.

    Args:
        batch: episodes of images: ``support_x`` (B, n_way * n_shot, C, H, W), ``query_x`` (B, n_way * n_query,
            C, H, W), C = 1 or 3.
        task: which episode of the batch, in [0, B).
        predictions: (B, n_way * n_query, n_way) logits (``learner.predict(batch)``) or (B, n_way * n_query)
            predicted labels.
        dataset: the dataset the batch was sampled from: its class names label the rows and its normalisation is
            undone (the pixels as loaded); without it each image is stretched to the full grey range.
        queries: how many query images of each class to show (the first ones); None shows all.
        title: the figure's title (the count of right predictions is appended).
    Returns:
        the ``Figure`` (no pyplot: nothing is shown or kept globally), or None when matplotlib is missing (a
        warning is logged).
    """
    predicted = _check(batch, task, predictions, queries, dataset)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plot (pip install 'fewshot[plot]')")
        return None
    n_way, n_shot, n_query = batch.n_way, batch.n_shot, batch.n_query
    shown = n_query if queries is None else min(queries, n_query)
    episode = batch[task]
    support, query = _pixels(episode.support_x, dataset), _pixels(episode.query_x, dataset)
    names: Sequence[str] | None = None if dataset is None else [dataset.class_names[c] for c in episode.classes]
    label_width = 1.0 if names is None else 1.8  # inches for the row labels
    figure = Figure(figsize=(0.9 * (n_shot + shown) + label_width + 0.3, 0.95 * n_way + 0.9), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[0.9 * n_shot + label_width, 0.9 * shown])
    left.suptitle(f"support set ({n_shot} per class)", fontsize="medium")
    right.suptitle(f"query set ({shown} of {n_query} per class)", fontsize="medium")
    support_axes = left.subplots(n_way, n_shot, squeeze=False)
    query_axes = right.subplots(n_way, shown, squeeze=False)
    for label in range(n_way):
        for shot in range(n_shot):
            _show(support_axes[label, shot], support[label * n_shot + shot])
        row_name = f"label {label}" if names is None else f"label {label}\n{_wrap(names[label])}"
        support_axes[label, 0].set_ylabel(row_name, fontsize="x-small", rotation=0, ha="right", va="center")
        for column in range(shown):
            axes, index = query_axes[label, column], label * n_query + column
            _show(axes, query[index])
            if predicted is not None:
                colour = RIGHT if int(predicted[index]) == label else WRONG
                axes.set_title(f"→ {int(predicted[index])}", fontsize="x-small", color=colour, pad=2)
                for spine in axes.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2.0)
    heading = [] if title is None else [title]
    if predicted is not None:
        right_count = int((predicted == episode.query_y.cpu()).sum())
        heading.append(f"{right_count} of {len(predicted)} queries predicted right")
    if heading:
        figure.suptitle("; ".join(heading), fontsize="medium")
    return figure


def plot_episode(path: str | os.PathLike[str], batch: EpisodeBatch, *, task: int = 0,
                 predictions: torch.Tensor | None = None, dataset: FewShotDataset | None = None,
                 queries: int | None = None, title: str | None = None) -> Path | None:
    """Write :func:`episode_figure` (same arguments) as a PNG at ``path``.

    Returns:
        the PNG path, or None when matplotlib is missing (a warning is logged; nothing is written).
    """
    figure = episode_figure(batch, task=task, predictions=predictions, dataset=dataset, queries=queries, title=title)
    return None if figure is None else save_png(figure, path)
