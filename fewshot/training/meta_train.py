"""The episodic meta-training loop: seeded, checkpointed, resumable bit for bit.

Reproducibility. Step ``s`` uses episodes ``s*meta_batch ... (s+1)*meta_batch - 1`` of the seeded sampler,
which are a pure function of (seed, episode id) and never touch the global RNG. ``checkpoints/last.ckpt``
(written atomically: temporary file, fsync, rename) holds the learner, the optimizer, the scheduler, the step
and every global RNG state (torch CPU and CUDA, numpy, random), so a run restarted in the same directory after
a crash continues exactly where the checkpoint left it: ``metrics.csv`` is rewritten from the checkpoint's
history, and a directory trained with another configuration (other than :data:`RESUMABLE_CHANGES`) is refused.

On CPU the same config and seed give bit-identical curves, weights and test accuracies (tested). On GPU this
holds only in deterministic mode: cuDNN picks convolution algorithms by timing (``torch.backends.cudnn.benchmark``)
and several CUDA kernels accumulate with atomics (e.g. the backward of ``index_select``/``scatter_add``), so two
GPU runs may differ in the last bits and then drift apart. For bit-identical GPU runs set
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment and call ``torch.use_deterministic_algorithms(True)`` and
``torch.backends.cudnn.benchmark = False`` before training (slower; an op without a deterministic kernel then
raises). CPU and GPU runs never agree bit for bit (different kernels), only to rounding; the episodes do.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from episodes.files import atomic_write_text
from episodes.sampler import EpisodeSampler
from fewshot.learners.base import MetaLearner
from fewshot.training.checkpoint import (
    load_checkpoint,
    load_state_exactly,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fewshot.training.tensorboard import TensorBoardLog

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
    rank: int = 0,
    world_size: int = 1,
    tensorboard: TensorBoardLog | None = None,
) -> TrainResult:
    """Meta-train ``learner`` on episodes of ``sampler``; resume from ``run_dir/checkpoints/last.ckpt`` if present.

    Args:
        learner: a configured meta-learner (``configure_optimizer`` already called), on ``device``.
        sampler: the training episodes; its dataset may live on ``device`` for on-device sampling.
        settings: steps, meta-batch, validation and checkpoint cadence.
        validate: returns the validation accuracy of the learner; called every ``settings.val_every`` steps.
        run_dir: where ``checkpoints/`` and ``metrics.csv`` go; ``None`` keeps nothing on disk.
        config: the run's full configuration, stored in checkpoints (JSON-serialisable).
        rank, world_size: this process's share of each meta-batch in distributed training (use
            :func:`fewshot.training.distributed.distributed_meta_train`): rank ``r`` takes the ``r``-th of
            ``world_size`` equal slices of each step's episode ids; only rank 0 writes checkpoints, metrics
            and logs, and every rank resumes from the same ``last.ckpt``. ``validate`` runs on every rank.
        tensorboard: also write every ``metrics.csv`` row there (part ``meta_train``, rewritten from the
            checkpoint's history on resume, as ``metrics.csv`` is).
    """
    if not 0 <= rank < world_size or settings.meta_batch % world_size:
        raise ValueError(f"need 0 <= rank < world_size and meta_batch divisible by world_size, got rank={rank}, "
                         f"world_size={world_size}, meta_batch={settings.meta_batch}; pick a meta_batch that "
                         "is a multiple of the number of processes")
    share = settings.meta_batch // world_size
    writer = rank == 0
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    result = TrainResult()
    start = 0
    if ckpt_dir is not None and (ckpt_dir / "last.ckpt").is_file():
        start = _restore(learner, ckpt_dir / "last.ckpt", result, config=config, steps=settings.steps)
        if writer:
            log.info("resumed from %s at step %d", ckpt_dir / "last.ckpt", start)
    elif ckpt_dir is not None and writer:
        # a run killed before its first last.ckpt: its best.ckpt is stale (this run rewrites it on the same steps)
        (ckpt_dir / "best.ckpt").unlink(missing_ok=True)
    if writer and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(run_dir, result.history)  # drop rows logged after the checkpoint we resume from
    if writer and tensorboard is not None:
        tensorboard.write_rows("meta_train", result.history)

    def checkpoint(step: int, name: str) -> None:
        if ckpt_dir is None or not writer:
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

    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, disable=not (progress and writer),
               desc="meta-train", dynamic_ncols=True)
    for step in bar:
        first = step * settings.meta_batch + rank * share
        ids = torch.arange(first, first + share)
        batch = sampler.batch(ids).to(device, non_blocking=True)
        done = step + 1
        try:
            metrics = learner.meta_train_step(batch)
        except FloatingPointError as err:
            raise FloatingPointError(f"meta-training step {done}: {err}") from err
        if not math.isfinite(metrics["grad_norm"]):
            raise FloatingPointError(
                f"meta-training step {done}: non-finite gradient norm ({metrics['grad_norm']}) with loss "
                f"{metrics['loss']:.4g}; lower the outer learning rate or set trainer.optimizer.grad_clip")
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
        if row is not None and writer:
            _append_csv(run_dir, row)
            if tensorboard is not None:
                tensorboard.add_row("meta_train", row)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}")
            log.info("step %d: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done != settings.steps:
            checkpoint(done, "last.ckpt")
    if validate is None or not settings.val_every:
        result.best_step = settings.steps
    checkpoint(settings.steps, "last.ckpt")
    return result


#: Config keys a resumed run may change: they do not alter the training trajectory up to the checkpoint
#: (``evaluation.seed`` is not among them: validation episodes derive from it).
RESUMABLE_CHANGES = ("progress", "device", "logging", "trainer.steps", "trainer.optimizer.total_steps",
                     "evaluation.episodes", "evaluation.settings", "evaluation.n_query", "evaluation.batch_size",
                     "evaluation.episodes_file", "evaluation.variable")


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts (keys missing on one side included),
    leaving out :data:`RESUMABLE_CHANGES`. A key the saved config lacks and the current one sets to null is no
    difference: an option added by a later version, at its default (off), so older checkpoints still resume."""
    found = []
    for key in sorted(set(saved) | set(current), key=str):
        dotted = f"{prefix}{key}"
        if dotted in RESUMABLE_CHANGES or (key not in saved and current[key] is None):
            continue
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += config_differences(a, b, f"{dotted}.")
        elif a != b:
            found.append(f"{dotted}: {a!r} -> {b!r}")
    return found


_RESTART = "resume with the configuration that wrote it, or start a new run directory (hydra.run.dir=...)"


def check_resume(run_dir: Path, config: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``run_dir`` holds a ``checkpoints/last.ckpt`` that a run with ``config`` cannot
    resume: unreadable, or written with another configuration (other than :data:`RESUMABLE_CHANGES`).

    :func:`meta_train` checks this itself; call it first to refuse before anything in ``run_dir`` is written.
    """
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    if path.is_file():
        _check_config(path, load_checkpoint(path), config)


def _check_config(path: Path, state: dict[str, Any], config: dict[str, Any] | None) -> None:
    try:
        saved = json.loads(state.get("config", "{}"))
    except (TypeError, json.JSONDecodeError):  # not written by meta_train: the learner class check decides
        saved = {}
    changed = config_differences(saved, config) if isinstance(saved, dict) and saved and config else []
    if changed:
        raise ValueError(f"cannot resume from {path}: the run directory was trained with another configuration "
                         f"({'; '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); {_RESTART}")


def _restore(learner: MetaLearner, path: Path, result: TrainResult, *, config: dict[str, Any] | None,
             steps: int) -> int:
    state = load_checkpoint(path)
    _check_config(path, state, config)
    if state.get("learner_class", type(learner).__name__) != type(learner).__name__:
        raise ValueError(f"cannot resume from {path}: it holds a {state['learner_class']}, not a "
                         f"{type(learner).__name__}; {_RESTART}")
    if int(state["step"]) > steps:
        raise ValueError(f"cannot resume from {path}: it is at step {state['step']}, past the {steps} steps asked "
                         "for; ask for at least as many steps, or start a new run directory")
    load_state_exactly(learner, state["learner"], source=path, hint=_RESTART)
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
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_csv(run_dir: Path | None, rows: list[dict[str, float]]) -> None:
    """Replace ``metrics.csv`` atomically by ``rows`` (removed when there are none)."""
    if run_dir is None:
        return
    if not rows:
        (run_dir / "metrics.csv").unlink(missing_ok=True)
        return
    write_rows_csv(run_dir / "metrics.csv", rows, fields=_CSV_FIELDS)


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, float]], *, fields: Sequence[str] | None = None) -> None:
    """Replace ``path`` atomically by a CSV of ``rows`` (a history): columns ``fields`` (other keys left out),
    or every key of the rows in first-seen order."""
    columns = list(fields) if fields is not None else list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
