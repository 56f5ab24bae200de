"""Reptile: move the initialisation towards the weights each task's inner loop reaches."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.gradient.inner_loop import (
    InnerOptimizer,
    Params,
    adapt,
    check_inner_optimizer,
    map_tasks,
    resolve_batched,
)
from fewshot.learners.gradient.maml import MAML, BNMode

__all__ = ["Reptile"]


class Reptile(MAML):
    """Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

    A backbone and a linear head ``nn.Linear(backbone.feature_dim, n_way)``, as :class:`MAML` (whose functional
    forward, batch-norm policy and task loop it reuses). For each task of a batch, ``inner_steps`` steps of
    ``inner_optimizer`` on the support cross-entropy, from the learner's parameters ``theta``, reach weights
    ``W_i``; the outer update is ``theta <- theta + epsilon * (mean_i W_i - theta)``. :meth:`meta_backward` puts
    ``theta - mean_i W_i`` into ``.grad``, so an outer SGD step (no momentum, no weight decay) with learning rate
    ``epsilon`` is exactly that update (the paper's serial/batched algorithm; the authors' code interpolates the
    same way, with ``epsilon`` annealed linearly to 0: ``OuterOptimizer(name="sgd", momentum=0, lr=epsilon,
    schedule="linear")``); the paper notes the same vector can be fed to Adam instead.

    The inner optimizer: the paper uses Adam with ``beta1 = 0`` (``betas=(0.0, 0.999)``, the default); SGD is
    ``inner_optimizer="sgd"``. Our reading of the data: each inner step is one full-batch step on the whole
    support set of the episode (the paper draws mini-batches from the task's ``train_shots`` examples per
    class: give the training episodes that many support images, ``episode.train_n_shot``). Adam starts every
    task from zero moments (the authors' code keeps Adam's moment estimates across tasks in training and starts
    each test task from the trained ones). Inner gradients are never differentiated (first order).

    :meth:`meta_loss` (for logging) is the query cross-entropy of the adapted weights, detached: Reptile has
    no differentiable objective, its update is :meth:`meta_backward`. :meth:`predict` adapts for
    ``eval_inner_steps`` steps on each support set and scores its query set; ``bn_mode`` and ``transductive``
    as :class:`MAML` (``"transductive"``: the query normalised with its own batch statistics, the paper's
    transductive setting; ``"support"``: with the support's).

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        n_way: classes per task (size of the head).
        inner_lr: inner learning rate (Adam's, or SGD's step size).
        inner_steps: inner steps per task in meta-training (>= 1); eval_inner_steps: in :meth:`predict`.
        inner_optimizer: ``"adam"`` or ``"sgd"``; betas, eps: Adam's.
        bn_mode, batched: as :class:`MAML`.
    """

    def __init__(self, backbone: nn.Module, *, n_way: int, inner_lr: float = 1e-3, inner_steps: int = 5,
                 eval_inner_steps: int = 50, inner_optimizer: InnerOptimizer = "adam",
                 betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8, bn_mode: BNMode = "transductive",
                 batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__(backbone, n_way=n_way, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=True, bn_mode=bn_mode, batched=batched)
        betas = tuple(betas)  # a YAML list arrives as a sequence
        check_inner_optimizer(inner_optimizer, betas=betas, eps=eps)
        if inner_steps < 1 or not inner_lr > 0:
            raise ValueError(f"Reptile needs inner_steps >= 1 and inner_lr > 0 (else the update is zero), got "
                             f"{inner_steps} and {inner_lr}")
        self.inner_optimizer, self.betas, self.eps = inner_optimizer, betas, eps

    def _adapt(self, params: Params, step_sizes: dict[str, torch.Tensor | float], steps: int, batched: bool,
               support_x: torch.Tensor, support_y: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """One task's inner loop on support (S, C, H, W), (S,): (adapted params, (steps,) support losses)."""
        return adapt(
            lambda p: F.cross_entropy(self._head(p, self._features(p, support_x, primitives=batched)), support_y),
            params, self.adapted, steps=steps, step_sizes=step_sizes, first_order=True, batched=batched,
            optimizer=self.inner_optimizer, betas=self.betas, eps=self.eps)

    def _task(self, params: Params, step_sizes: dict[str, torch.Tensor | float], steps: int, first_order: bool,
              batched: bool, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`MAML._task` with this inner optimizer (always first order): query logits (Q, n_way), losses."""
        adapted, losses = self._adapt(params, step_sizes, steps, batched, support_x, support_y)
        return self._head(adapted, self._query_features(adapted, support_x, query_x, primitives=batched)), losses

    def _check_finite(self, losses: torch.Tensor, logits: torch.Tensor) -> None:
        if not (bool(torch.isfinite(losses).all()) and bool(torch.isfinite(logits).all())):
            raise FloatingPointError(
                f"Reptile inner loop diverged (non-finite support loss or logits) with inner_lr={self.inner_lr}; "
                "lower inner_lr or take fewer inner steps")

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query cross-entropy of the weights ``inner_steps`` steps reach on each support set (for logging:
        detached; the update is :meth:`meta_backward`).

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) query logits).
        """
        logits = self._run(batch, steps=self.inner_steps, first_order=True, detach=True)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()).detach(), logits.detach()

    def meta_backward(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``theta - mean over tasks of the adapted weights`` to each parameter's ``.grad`` (so that SGD with
        learning rate ``epsilon`` takes the Reptile step); return :meth:`meta_loss`'s (loss, logits), computed
        from the same inner loops."""
        self._check_way(batch)
        params, step_sizes = self._params(detach=True), self._step_sizes(detach=True)
        batched = resolve_batched(self.batched, batch.device)

        def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            adapted, losses = self._adapt(params, step_sizes, self.inner_steps, batched, sx, sy)
            logits = self._head(adapted, self._query_features(adapted, sx, qx, primitives=batched))
            return (logits, losses, *(adapted[n] for n in self.adapted))

        with torch.enable_grad(), self._batch_scope():
            logits, losses, *reached = map_tasks(task, batch.support_x, batch.support_y, batch.query_x,
                                                 batched=batched)
        self._check_finite(losses, logits)
        own = dict(self.named_parameters())
        for name, weights in zip(self.adapted, reached, strict=True):  # weights: (B, *shape)
            param = own[name]
            step = param.detach() - weights.mean(0)
            param.grad = step if param.grad is None else param.grad + step
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()).detach(), logits.detach()
