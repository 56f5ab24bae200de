"""Trainers: the objects a config names (``configs/trainer/``) to fit a learner before it is tested.

Every trainer implements one protocol, :class:`Trainer`: ``fit(learner, data, run) -> history``. The command
line builds the learner, the data and the run, instantiates the trainer named by ``trainer._target_`` and calls
``fit``; it knows nothing about learner kinds. Three trainers ship:

- :class:`EpisodicTrainer`: meta-training on seeded episodes (ProtoNet, the MAML family), checkpointed and
  resumable bit for bit (:func:`~fewshot.training.meta_train.meta_train`), validated on fixed episodes, and the
  best validation step kept for testing.
- :class:`SupervisedPretrainer`: classifier pretraining of the learner's backbone on every training class (the
  Baseline / RFS recipe, :func:`~fewshot.training.pretrain.pretrain_backbone`), for the fine-tune learners.
- :class:`PretrainThenEpisodic`: the first, then the second (Meta-Baseline style).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from episodes import EpisodeSampler, FewShotDataset
from episodes.augment import Augment
from fewshot.evaluation import evaluate_settings
from fewshot.learners.base import Learner, MetaLearner, OuterOptimizer
from fewshot.training.checkpoint import load_checkpoint, save_checkpoint
from fewshot.training.distributed import DistributedContext, RankShards, distributed_meta_train
from fewshot.training.meta_train import TrainSettings, meta_train, write_rows_csv
from fewshot.training.pretrain import PretrainResult, pretrain_backbone
from fewshot.training.tensorboard import TensorBoardLog

__all__ = ["EpisodeShape", "EpisodicTrainer", "PretrainThenEpisodic", "Run", "SupervisedPretrainer", "Trainer",
           "TrainingData"]

log = logging.getLogger(__name__)

History = list[dict[str, float]]


@dataclass(frozen=True)
class EpisodeShape:
    """The shape of an episode: ``n_way`` classes, ``n_shot`` support and ``n_query`` query images per class."""

    n_way: int
    n_shot: int
    n_query: int

    def __post_init__(self) -> None:
        if self.n_way < 2 or self.n_shot < 1 or self.n_query < 1:
            raise ValueError(f"an episode needs n_way >= 2, n_shot >= 1 and n_query >= 1, got {self}")


@dataclass(frozen=True)
class TrainingData:
    """What a trainer fits on.

    Attributes:
        train: the training classes.
        val: the validation classes, or ``None`` (no validation).
        train_episode: shape of the meta-training episodes.
        val_episode: shape of the validation episodes.
        val_seed: seed of the fixed validation episodes.
        eval_batch_size: episodes per ``predict`` call when validating.
    """

    train: FewShotDataset
    train_episode: EpisodeShape
    val: FewShotDataset | None = None
    val_episode: EpisodeShape | None = None
    val_seed: int = 0
    eval_batch_size: int = 50


@dataclass(frozen=True)
class Run:
    """Where and how a training runs.

    Attributes:
        run_dir: folder for checkpoints and metrics (``None``: nothing is written).
        config: the run's full configuration (JSON-serialisable), stored in checkpoints and checked on resume.
        seed: seeds everything random in the run.
        device: where to train.
        progress: show progress bars.
        ctx: this process's place in a distributed run (``None``: one process).
        backbone_pretrained: the backbone's weights were loaded from a file: supervised pretraining is skipped.
        tensorboard: where the writing process also logs the histories it writes to CSV (``None``: nowhere).
    """

    run_dir: Path | None
    config: dict[str, Any]
    seed: int
    device: torch.device
    progress: bool = True
    ctx: DistributedContext | None = None
    backbone_pretrained: bool = False
    tensorboard: TensorBoardLog | None = None

    @property
    def writer(self) -> bool:
        """True in the process that writes files (the only one, or rank 0)."""
        return self.ctx is None or self.ctx.is_main


class Trainer(Protocol):
    """Fits a learner in place and returns its history (one dict per logged step, with a ``step`` key).

    ``distributed``: the trainer runs in every process of a torchrun/srun launch (the command line joins the
    process group before calling :meth:`fit`).
    """

    distributed: bool

    def fit(self, learner: Learner, data: TrainingData, run: Run) -> History:
        ...


def _backbone(learner: Learner) -> nn.Module:
    backbone = getattr(learner, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(learner).__name__} has no `backbone` module to pretrain; use trainer=episodic")
    return backbone


class EpisodicTrainer:
    """Meta-training on seeded episodes (see :mod:`fewshot.training.meta_train` for reproducibility and resume).

    Step ``s`` uses episodes ``s*meta_batch .. (s+1)*meta_batch - 1`` of the training sampler. With validation
    (``val_every > 0`` and validation classes), the step with the best accuracy on ``val_episodes`` fixed
    episodes is kept as ``best.ckpt`` and loaded into the learner at the end.

    Args:
        steps, meta_batch, val_every, checkpoint_every, log_every: see
            :class:`~fewshot.training.meta_train.TrainSettings`.
        val_episodes: validation episodes per check.
        optimizer: the outer optimizer and its schedule.
        distributed: one process per GPU under torchrun/srun; ``meta_batch`` is the global task count.
    """

    def __init__(self, *, steps: int, meta_batch: int, optimizer: OuterOptimizer, val_every: int = 0,
                 val_episodes: int = 600, checkpoint_every: int = 0, log_every: int = 50,
                 distributed: bool = False) -> None:
        if not isinstance(optimizer, OuterOptimizer):
            raise TypeError(f"optimizer must be an OuterOptimizer, got {type(optimizer).__name__}")
        if val_episodes < 2:
            raise ValueError(f"val_episodes must be >= 2 for a confidence interval, got {val_episodes}")
        self.settings = TrainSettings(steps=steps, meta_batch=meta_batch, val_every=val_every,
                                      checkpoint_every=checkpoint_every, log_every=log_every)
        self.optimizer, self.val_episodes, self.distributed = optimizer, val_episodes, distributed

    def _validator(self, data: TrainingData, run: Run) -> Callable[[MetaLearner], float] | None:
        if data.val is None or not self.settings.val_every:
            return None
        if data.val_episode is None:
            raise ValueError("validation classes were given without a validation episode shape (val_episode)")
        val, shape = data.val, data.val_episode

        def validate(model: MetaLearner) -> float:
            (result,) = evaluate_settings({"val": model}, val, settings=[(shape.n_way, shape.n_shot)],
                                          n_query=shape.n_query, episodes=self.val_episodes, seed=data.val_seed,
                                          batch_size=data.eval_batch_size, device=run.device, progress=False,
                                          shards=RankShards(run.ctx) if run.ctx is not None else None)
            return result.learners[0].mean

        return validate

    def fit(self, learner: Learner, data: TrainingData, run: Run) -> History:
        """Meta-train ``learner`` (resuming from ``run.run_dir/checkpoints/last.ckpt`` if there is one)."""
        if not isinstance(learner, MetaLearner):
            raise TypeError(f"{type(learner).__name__} is not meta-trained: use trainer=pretrain (supervised "
                            "pretraining of its backbone, skipped when backbone_weights=<file from fewshot-pretrain> "
                            "is given)")
        learner.configure_optimizer(self.optimizer)
        shape = data.train_episode
        sampler = EpisodeSampler(data.train.to(run.device), n_way=shape.n_way, n_shot=shape.n_shot,
                                 n_query=shape.n_query, seed=run.seed)
        validate = self._validator(data, run)
        if run.ctx is None:
            outcome = meta_train(learner, sampler, settings=self.settings, validate=validate, run_dir=run.run_dir,
                                 config=run.config, device=run.device, progress=run.progress,
                                 tensorboard=run.tensorboard)
        else:
            outcome = distributed_meta_train(learner, sampler, settings=self.settings, ctx=run.ctx,
                                             validate=validate, run_dir=run.run_dir, config=run.config,
                                             progress=run.progress, tensorboard=run.tensorboard)
        if validate is not None and run.run_dir is not None:
            learner.load_state_dict(load_checkpoint(run.run_dir / "checkpoints" / "best.ckpt")["learner"])
            log.info("testing the best validation step %d (val accuracy %.4f)", outcome.best_step,
                     outcome.best_val_accuracy)
        learner.check_finite(f"the learner after meta-training (step {outcome.best_step})")
        return outcome.history


class SupervisedPretrainer:
    """Classifier pretraining of the learner's backbone on every training class, then nothing else: the
    learner is tested as it is (the fine-tune learners fit a head per episode on the pretrained features).

    Every argument but ``distributed`` is a keyword of :func:`~fewshot.training.pretrain.pretrain_backbone`.
    Skipped when the run's backbone weights were loaded from a file. Then calls
    :meth:`~fewshot.learners.Learner.fit_base_classes` with the training classes, and writes ``metrics.csv`` (one
    row per epoch) and ``checkpoints/last.ckpt`` (the learner and the run's config).
    """

    def __init__(self, *, epochs: int, batch_size: int, lr: float, optimizer: Literal["sgd", "adam"] = "sgd",
                 momentum: float = 0.9, weight_decay: float = 5e-4, milestones: list[int] | tuple[int, ...] = (),
                 gamma: float = 0.1, head: Literal["linear", "cosine"] = "linear", augment: Augment | None = None,
                 distributed: bool = False) -> None:
        if epochs < 1 or batch_size < 1 or not lr > 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
        if optimizer not in ("sgd", "adam") or head not in ("linear", "cosine"):
            raise ValueError(f"unknown optimizer {optimizer!r} or head {head!r}; use 'sgd' or 'adam', and 'linear' or "
                             "'cosine'")
        if not 0 <= momentum < 1 or not weight_decay >= 0 or not 0 < gamma <= 1:
            raise ValueError(f"need 0 <= momentum < 1, weight_decay >= 0 and 0 < gamma <= 1, got {momentum}, "
                             f"{weight_decay} and {gamma}")
        if list(milestones) != sorted(set(milestones)) or any(m < 1 for m in milestones):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {list(milestones)}")
        self.keywords = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                         "momentum": momentum, "weight_decay": weight_decay, "milestones": tuple(milestones),
                         "gamma": gamma, "head": head, "augment": augment}
        self.distributed = distributed

    def pretrain(self, backbone: nn.Module, dataset: FewShotDataset, run: Run) -> PretrainResult:
        """Train ``backbone`` in place as a classifier over every class of ``dataset``; its history gets a
        ``step`` (the epoch) for the learning-curve plot. Writes nothing."""
        result = pretrain_backbone(backbone, dataset, **self.keywords, seed=run.seed, device=run.device,
                                   progress=run.progress, distributed=self.distributed)
        return dataclasses.replace(result, history=[{"step": float(e["epoch"]), **e} for e in result.history])

    def fit(self, learner: Learner, data: TrainingData, run: Run) -> History:
        """Pretrain ``learner.backbone`` (unless ``run.backbone_pretrained``), write metrics and checkpoint."""
        backbone = _backbone(learner)
        history = [] if run.backbone_pretrained else self.pretrain(backbone, data.train, run).history
        learner.check_finite("after supervised pretraining" if history else "with the loaded backbone weights")
        learner.fit_base_classes(data.train)
        if run.writer and run.run_dir is not None:
            if history:
                write_rows_csv(run.run_dir / "metrics.csv", history)
                if run.tensorboard is not None:
                    run.tensorboard.write_rows("pretrain", history)
            save_checkpoint(run.run_dir / "checkpoints" / "last.ckpt",
                            {"learner": learner.state_dict(), "step": 0, "config": json.dumps(run.config),
                             "learner_class": type(learner).__name__})
        return history


class PretrainThenEpisodic:
    """Supervised pretraining of the backbone, then episodic meta-training of the whole learner
    (Chen et al. 2021, "Meta-Baseline"). The pretraining history goes to ``pretrain_metrics.csv``.

    A run resumed from an episodic checkpoint skips the pretraining (the checkpoint holds the weights it
    produced, and pretraining leaves the global random state untouched), so the resume is bit for bit.

    Args:
        pretrain: the classifier stage.
        episodic: the meta-training stage.
    """

    def __init__(self, *, pretrain: SupervisedPretrainer, episodic: EpisodicTrainer) -> None:
        if not isinstance(pretrain, SupervisedPretrainer) or not isinstance(episodic, EpisodicTrainer):
            raise TypeError("PretrainThenEpisodic needs pretrain: SupervisedPretrainer and episodic: EpisodicTrainer")
        if pretrain.distributed != episodic.distributed:
            raise ValueError("set distributed the same for both stages (pretrain.distributed, episodic.distributed)")
        self.pretrain, self.episodic, self.distributed = pretrain, episodic, episodic.distributed

    def fit(self, learner: Learner, data: TrainingData, run: Run) -> History:
        """Pretrain ``learner.backbone`` (unless pretrained or resuming), then meta-train ``learner``."""
        resuming = run.run_dir is not None and (run.run_dir / "checkpoints" / "last.ckpt").is_file()
        if not (run.backbone_pretrained or resuming):
            history = self.pretrain.pretrain(_backbone(learner), data.train, run).history
            if run.writer and run.run_dir is not None:
                write_rows_csv(run.run_dir / "pretrain_metrics.csv", history)
                if run.tensorboard is not None:
                    run.tensorboard.write_rows("pretrain", history)
        return self.episodic.fit(learner, data, run)
