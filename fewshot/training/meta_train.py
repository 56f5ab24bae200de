"""The episodic meta-training loop: seeded, checkpointed, resumable bit for bit."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from episodes.sampler import EpisodeSampler
from tqdm.auto import tqdm

from fewshot.learners.base import MetaLearner
from fewshot.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)

#: Called every ``val_every`` steps with the learner; returns the validation accuracy (in [0, 1]).
Validator = Callable[[MetaLearner], float]


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to meta-train.

    Attributes:
        steps: number of outer updates.
        meta_batch: tasks per outer update. Step ``s`` uses episodes ``s*meta_batch ... (s+1)*meta_batch - 1``
            of the training sampler, so a resumed run sees exactly the episodes an uninterrupted one would.
        val_every: validate every this many steps (0: never); the best step is kept as ``best.ckpt``.
        checkpoint_every: write ``last.ckpt`` every this many steps (0: only at the end).
        log_every: log a line and append a row to ``metrics.csv`` every this many steps.
    """

    steps: int
    meta_batch: int
    val_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 0 or self.meta_batch < 1 or self.log_every < 1:
            raise ValueError(f"need steps >= 0, meta_batch >= 1 and log_every >= 1, got {self}")


@dataclass
class TrainResult:
    """What a meta-training run produced.

    Attributes:
        history: one dict per logged step (step, loss, accuracy, lr, grad_norm, val_accuracy when validated).
        best_step: step of the best validation accuracy (or the last step without validation).
        best_val_accuracy: that accuracy, or NaN without validation.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_accuracy: float = math.nan


def meta_train(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    *,
    settings: TrainSettings,
    validate: Validator | None = None,
    run_dir: Path | None = None,
    config: dict[str, Any] | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Meta-train ``learner`` on episodes of ``sampler``; resume from ``run_dir/checkpoints/last.ckpt`` if present.

    Args:
        learner: a configured meta-learner (``configure_optimizer`` already called), on ``device``.
        sampler: the training episodes; its dataset may live on ``device`` for on-device sampling.
        settings: steps, meta-batch, validation and checkpoint cadence.
        validate: returns the validation accuracy of the learner; called every ``settings.val_every`` steps.
        run_dir: where ``checkpoints/`` and ``metrics.csv`` go; ``None`` keeps nothing on disk.
        config: the run's full configuration, stored in checkpoints (JSON-serialisable).
    """
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    result = TrainResult()
    start = 0
    if ckpt_dir is not None and (ckpt_dir / "last.ckpt").is_file():
        start = _restore(learner, ckpt_dir / "last.ckpt", result)
        _write_csv(run_dir, result.history)  # drop rows logged after the checkpoint we resume from
        log.info("resumed from %s at step %d", ckpt_dir / "last.ckpt", start)

    def checkpoint(step: int, name: str) -> None:
        if ckpt_dir is None:
            return
        state = {
            "learner": learner.state_dict(),
            "optimizer": learner.optimizer.state_dict() if learner.optimizer is not None else {},
            "scheduler": learner.scheduler.state_dict() if learner.scheduler is not None else {},
            "step": step,
            "rng": rng_state(),
            "history": result.history,
            "best_step": result.best_step,
            "best_val_accuracy": result.best_val_accuracy,
            "config": json.dumps(config or {}),
            "learner_class": type(learner).__name__,
        }
        save_checkpoint(ckpt_dir / name, state)

    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, disable=not progress,
               desc="meta-train", dynamic_ncols=True)
    for step in bar:
        ids = torch.arange(step * settings.meta_batch, (step + 1) * settings.meta_batch)
        batch = sampler.batch(ids).to(device, non_blocking=True)
        metrics = learner.meta_train_step(batch)
        done = step + 1
        row: dict[str, float] | None = None
        if done % settings.log_every == 0 or done == settings.steps:
            row = {"step": float(done), **metrics}
        if validate is not None and settings.val_every and (done % settings.val_every == 0 or done == settings.steps):
            accuracy = validate(learner)
            row = {"step": float(done), **metrics, "val_accuracy": accuracy}
            if math.isnan(result.best_val_accuracy) or accuracy > result.best_val_accuracy:
                result.best_val_accuracy, result.best_step = accuracy, done
                checkpoint(done, "best.ckpt")
        if row is not None:
            result.history.append(row)
            _append_csv(run_dir, row)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}")
            log.info("step %d: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done != settings.steps:
            checkpoint(done, "last.ckpt")
    if validate is None or not settings.val_every:
        result.best_step = settings.steps
    checkpoint(settings.steps, "last.ckpt")
    return result


def _restore(learner: MetaLearner, path: Path, result: TrainResult) -> int:
    state = load_checkpoint(path)
    try:
        learner.load_state_dict(state["learner"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match this learner/backbone ({err}); resume with the "
                         "configuration that wrote it, or start a new run directory") from err
    if learner.optimizer is not None:
        learner.optimizer.load_state_dict(state["optimizer"])
    if learner.scheduler is not None:
        learner.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    result.history[:] = state["history"]
    result.best_step = int(state["best_step"])
    result.best_val_accuracy = float(state["best_val_accuracy"])
    return int(state["step"])


_CSV_FIELDS = ["step", "loss", "accuracy", "lr", "grad_norm", "val_accuracy"]


def _append_csv(run_dir: Path | None, row: dict[str, float]) -> None:
    if run_dir is None:
        return
    path = run_dir / "metrics.csv"
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_csv(run_dir: Path | None, rows: list[dict[str, float]]) -> None:
    if run_dir is None:
        return
    (run_dir / "metrics.csv").unlink(missing_ok=True)
    for row in rows:
        _append_csv(run_dir, row)
