"""The one interface every learner implements, and the outer-loop machinery meta-learners share."""

from __future__ import annotations

import abc
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch, FewShotDataset


@dataclass(frozen=True)
class OuterOptimizer:
    """Settings of a meta-learner's outer (meta) optimizer and its learning-rate schedule.

    Attributes:
        name: ``"adam"`` or ``"sgd"``.
        lr: base learning rate.
        weight_decay: L2 penalty passed to the optimizer.
        momentum: SGD momentum (ignored by Adam).
        schedule: ``"constant"``, ``"step"`` (multiply by ``gamma`` every ``step_size`` steps),
            ``"cosine"`` (to zero over ``total_steps``) or ``"linear"`` (``lr * (1 - step / total_steps)``: to
            zero over ``total_steps``, Reptile's annealing).
        step_size, gamma: the step schedule.
        total_steps: length of the cosine schedule.
        grad_clip: clip the global gradient norm to this value; ``None`` disables clipping.
    """

    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: Literal["constant", "step", "cosine", "linear"] = "constant"
    step_size: int = 2000
    gamma: float = 0.5
    total_steps: int = 10000
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(OuterOptimizer)
        for key in ("name", "schedule"):
            allowed = typing.get_args(hints[key])
            if getattr(self, key) not in allowed:
                raise ValueError(f"unknown outer optimizer {key} {getattr(self, key)!r}; use one of {list(allowed)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the outer learning rate must be a finite number > 0, got lr={self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0) or not 0 <= self.momentum < 1:
            raise ValueError(f"need weight_decay >= 0 and 0 <= momentum < 1, got {self.weight_decay} and "
                             f"{self.momentum}")
        if self.step_size < 1 or not 0 < self.gamma <= 1 or self.total_steps < 0:
            raise ValueError(f"need step_size >= 1, 0 < gamma <= 1 and total_steps >= 0, got {self.step_size}, "
                             f"{self.gamma} and {self.total_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (or None for no clipping), got {self.grad_clip}")

    def build(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """Create the optimizer over ``params`` and its scheduler (stepped once per meta-step)."""
        if self.name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        elif self.name == "sgd":
            opt = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"unknown outer optimizer {self.name!r}; use 'adam' or 'sgd'")
        if self.schedule == "constant":
            sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        elif self.schedule == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.step_size, gamma=self.gamma)
        elif self.schedule == "cosine":
            total = max(1, self.total_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
        elif self.schedule == "linear":
            total = max(1, self.total_steps)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - min(s, total) / total)
        else:
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'constant', 'step', 'cosine' or 'linear'")
        return opt, sched


class Learner(nn.Module, abc.ABC):
    """A few-shot learner: adapts to each episode's support set and labels its query set.

    ``predict`` must never change the learner's own parameters or buffers, and never sees query labels.

    Attributes:
        transductive: True when a query's prediction may depend on the other (unlabelled) queries of its
            episode (e.g. batch statistics over the query set); reports mark such rows, since they are not
            comparable with inductive ones.
    """

    transductive: bool = False

    def check_ways(self, n_way: int) -> None:
        """Raise ``ValueError`` (saying what to change) if this learner cannot score ``n_way``-way episodes, e.g. a
        classifier head built for another number of classes. The default accepts any number."""

    def check_finite(self, what: str) -> None:
        """Raise ``FloatingPointError`` naming the first parameter or floating buffer (e.g. a batch-norm running
        variance) that holds NaN or infinity; ``what`` says where the learner came from, for the message."""
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise FloatingPointError(
                    f"{what}: {name} holds non-finite values (NaN or inf), so every prediction would be meaningless; "
                    "the training diverged: retrain with a lower learning rate (trainer.optimizer.lr, or the inner "
                    "step size) or gradient clipping (trainer.optimizer.grad_clip), or use another checkpoint")

    def fit_base_classes(self, dataset: FewShotDataset) -> None:
        """Called by the supervised trainers once the backbone is trained (or its weights loaded), with the
        training classes: a learner that keeps statistics of the base classes (e.g. SimpleShot's mean feature
        for centering) computes them here, into buffers saved with it. The default does nothing."""

    @abc.abstractmethod
    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        """Adapt on each task's support set and score its query set.

        Args:
            batch: B tasks; support_x (B, n_way*n_shot, C, H, W), query_x (B, n_way*n_query, C, H, W). Variable-shot
                episodes (:class:`episodes.variable.VariableEpisodeSampler`, B = 1) hold ``batch.shots[0, c]`` support
                images of label ``c``: a learner works from ``support_y``, never from a shot count.
        Returns:
            (B, n_way*n_query, n_way) logits, one row per query image.
        """


class MetaLearner(Learner):
    """A learner trained episode by episode: owns its outer optimizer and schedule.

    Subclasses implement :meth:`meta_loss`; :meth:`meta_train_step` does the update.
    Call :meth:`configure_optimizer` after construction (and after moving to a device).
    """

    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    outer: OuterOptimizer | None = None
    #: Distributed training hook (see :mod:`fewshot.training.distributed`): called by :meth:`meta_train_step`
    #: after ``backward`` with the gradients and a (2,) tensor of [loss, accuracy] of this process's tasks;
    #: averages both in place across processes. ``None`` (the default) trains in one process.
    grad_sync: Callable[[list[torch.Tensor], torch.Tensor], None] | None = None

    def configure_optimizer(self, outer: OuterOptimizer) -> None:
        """Build the outer optimizer over every trainable parameter of the learner."""
        self.outer = outer
        self.optimizer, self.scheduler = outer.build([p for p in self.parameters() if p.requires_grad])

    @abc.abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The differentiable meta-training objective on a batch of tasks.

        Returns:
            (loss, logits): the scalar loss averaged over tasks, and the (B, n_way*n_query, n_way)
            query logits it was computed from.
        """

    def meta_backward(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate the gradient of :meth:`meta_loss` into ``.grad``; return the detached (loss, logits).

        Subclasses may override it to back-propagate task by task (same gradient, less memory).
        """
        loss, logits = self.meta_loss(batch)
        loss.backward()
        return loss.detach(), logits.detach()

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update on ``batch``; returns loss, accuracy, learning rate and gradient norm."""
        if self.optimizer is None or self.outer is None or self.scheduler is None:
            raise RuntimeError("call configure_optimizer(OuterOptimizer(...)) before meta_train_step")
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, logits = self.meta_backward(batch)
        accuracy = (logits.argmax(-1) == batch.query_y).double().mean()
        stats = torch.stack([loss.double(), accuracy])  # (2,) float64: [loss, accuracy]
        if self.grad_sync is None:
            _check_finite(stats[0])
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.grad_sync is not None:  # every process checks the averaged loss, so all raise together
            self.grad_sync([p.grad for p in params], stats)
            _check_finite(stats[0])
        clip = self.outer.grad_clip if self.outer.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": stats[0].item(), "accuracy": stats[1].item(), "lr": lr, "grad_norm": float(grad_norm)}


def _check_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite meta-training loss ({loss.item()}); lower the learning rates "
            "(outer lr, or the inner step size for MAML) or enable grad_clip")


class EmbeddingLearner(Learner):
    """A learner whose backbone embeds every image independently of its episode (ProtoNet,
    frozen-backbone fine-tuning). The evaluation harness may embed each test image once and
    sample episodes over the features; results equal :meth:`predict` on the images.
    """

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images: (N, C, H, W) float -> (N, D); by default ``self.backbone(x)``. Must not depend on
        other images in the call (batch norm in eval mode), so embedding once per image is exact."""
        return self.backbone(x)

    @abc.abstractmethod
    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Adapt on support features and score query features.

        Args:
            support: (B, n_way*n_shot, D) support features (or (B, S, D), classes of different sizes).
            support_y: (B, n_way*n_shot) int64 labels in [0, n_way), every label present.
            query: (B, n_way*n_query, D) query features.
            n_way: number of classes per task.
        Returns:
            (B, n_way*n_query, n_way) logits.
        """

    def mean_embedding(self, dataset: FewShotDataset, *, chunk: int) -> torch.Tensor:
        """(D,) float64 mean :meth:`embed` feature of every image of ``dataset`` (e.g. the base classes), in eval
        mode and without gradients, ``chunk`` images per call, on the device of the learner's parameters and
        buffers."""
        device = next(self.buffers(), None)
        device = device.device if device is not None else next(self.parameters()).device
        was_training = self.training
        self.eval()
        total: torch.Tensor | float = 0.0
        try:
            with torch.no_grad():
                for rows in torch.arange(len(dataset)).split(chunk):
                    x = dataset.to_float(dataset.images[rows.to(dataset.images.device)].to(device))
                    total = total + self.embed(x).to(torch.float64).sum(0)
        finally:
            self.train(was_training)
        return total / len(dataset)

    def embed_episodes(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the support and query images of every task in one :meth:`embed` call, then split.

        Runs in the module's current mode (in train mode, batch norm sees the whole meta-batch).

        Returns:
            support (B, n_way*n_shot, D) and query (B, n_way*n_query, D) features.
        """
        b, s = batch.support_x.shape[:2]
        q = batch.query_x.shape[1]
        feats = self.embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
        return feats[: b * s].view(b, s, -1), feats[b * s:].view(b, q, -1)

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                support, query = self.embed_episodes(batch)
            return self.predict_features(support, batch.support_y, query, batch.n_way)
        finally:
            self.train(was_training)


class MetricLearner(EmbeddingLearner, MetaLearner):
    """An embedding learner meta-trained episode by episode with the query cross-entropy of its
    :meth:`predict_features` logits (ProtoNet, Meta-Baseline, DN4, ...); a method with another objective
    overrides :meth:`meta_loss`."""

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query cross-entropy over all tasks; support and query of every task go through the backbone in one call
        (in the module's current mode, so batch norm in train mode sees the whole meta-batch).

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) logits).
        """
        support, query = self.embed_episodes(batch)
        logits = self.predict_features(support, batch.support_y, query, batch.n_way)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()), logits
