"""MAML and its variants (first order, ANIL, BOIL, Meta-SGD step sizes), over the shared functional inner loop."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.base import MetaLearner
from fewshot.learners.gradient.functional import NormPolicy, batch_stat_overrides, eval_mode
from fewshot.learners.gradient.inner_loop import Params, adapt, map_tasks, resolve_batched

__all__ = ["MAML"]

BNMode = Literal["transductive", "support"]
InnerParams = Literal["all", "head", "body"]


class MAML(MetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al., ICML 2017), with its common variants.

    The learner owns ``backbone`` and a linear head ``nn.Linear(backbone.feature_dim, n_way)``. For each
    task the inner loop takes gradient steps on the support cross-entropy, from the learner's
    parameters, and the query cross-entropy of the adapted parameters is the meta-loss.

    - ``first_order=True``: first-order MAML (inner gradients treated as constants).
    - ``inner_params`` (which parameters the inner loop adapts; all of them are meta-learned by the outer loop):
      ``"all"`` (MAML); ``"head"``: ANIL (Raghu et al., ICLR 2020), the head only, the backbone features of each
      task computed once; ``"body"``: BOIL (Oh, Yoo, Kim & Yun, ICLR 2021, "BOIL: Towards Representation Change
      for Few-shot Learning"), the backbone only, the head frozen at its meta-learned value during adaptation.
    - ``learn_inner_lr=True``: Meta-SGD (Li et al. 2017): one learned step size per parameter element
      (a tensor shaped like each adapted parameter, initialised to ``inner_lr``), meta-trained with the rest.

    Batch norm (``bn_mode``): the backbone always runs in eval mode inside the inner loop, and
    :class:`~fewshot.learners.gradient.functional.NormPolicy` computes every batch norm from the statistics of the
    current task, so running statistics are never read or updated (no leakage between tasks, and
    :meth:`predict` leaves every buffer untouched):

    - ``"transductive"``: each forward normalises with the statistics of the batch it sees (support
      alone, query alone), as in the original MAML.
    - ``"support"``: the query is normalised with its own task's support-set statistics (non-transductive:
      a query prediction does not depend on the other query images).

    ``batched``: ``True`` vmaps the inner loop over the tasks of a batch (normalisation from primitives,
    see docs/ARCHITECTURE.md, "Known traps": vmap and batch norm), ``False`` loops over tasks (fused
    ``F.batch_norm`` where the mode allows), ``"auto"`` picks batched on CUDA and sequential elsewhere.
    Both give the same values and meta-gradients to float rounding.

    Parameters whose ``requires_grad`` is False when the learner is built are never adapted.

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        n_way: classes per task (size of the head).
        inner_lr: inner-loop step size (initial value when learned).
        inner_steps: inner steps during meta-training; eval_inner_steps: during :meth:`predict`.
    """

    def __init__(self, backbone: nn.Module, *, n_way: int, inner_lr: float = 0.4, inner_steps: int = 1,
                 eval_inner_steps: int = 3, first_order: bool = False, inner_params: InnerParams = "all",
                 learn_inner_lr: bool = False, bn_mode: BNMode = "transductive",
                 batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__()
        feature_dim = getattr(backbone, "feature_dim", None)
        if not isinstance(feature_dim, int):
            raise TypeError("MAML needs a backbone with an integer `feature_dim` attribute (its output size)")
        if n_way < 2:
            raise ValueError(f"n_way must be at least 2, got {n_way}")
        if not (math.isfinite(inner_lr) and inner_lr >= 0) or inner_steps < 0 or eval_inner_steps < 0:
            raise ValueError(f"inner_lr (finite), inner_steps and eval_inner_steps must be >= 0, got "
                             f"{inner_lr}, {inner_steps}, {eval_inner_steps}")
        if inner_params not in ("all", "head", "body"):
            raise ValueError(f"unknown inner_params {inner_params!r}; use 'all' (MAML), 'head' (ANIL) or 'body' (BOIL)")
        if bn_mode not in ("transductive", "support"):
            raise ValueError(f"unknown bn_mode {bn_mode!r}; use 'transductive' or 'support'")
        resolve_batched(batched, torch.device("cpu"))  # validates the value
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, n_way)
        self.n_way, self.inner_lr = n_way, inner_lr
        self.inner_steps, self.eval_inner_steps = inner_steps, eval_inner_steps
        self.first_order, self.inner_params, self.bn_mode, self.batched = first_order, inner_params, bn_mode, batched
        self.adapted = [n for n, p in self.named_parameters() if p.requires_grad and (
            inner_params == "all" or n.startswith("head.") == (inner_params == "head"))]
        # (a batch scope is open, the backbone's batch_stat_overrides found for it); plain values survive deepcopy
        self._scope: tuple[bool, dict[str, None] | None] = (False, None)
        self.inner_lrs: nn.ParameterList | None = None
        if learn_inner_lr:
            self.inner_lrs = nn.ParameterList(
                [nn.Parameter(torch.full_like(dict(self.named_parameters())[n], inner_lr)) for n in self.adapted])

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        """With ``bn_mode="transductive"`` the query is normalised with its own batch statistics."""
        return self.bn_mode == "transductive"

    # ----------------------------------------------------------------- functional pieces
    def _params(self, *, detach: bool) -> Params:
        params = {n: p for n, p in self.named_parameters() if not n.startswith("inner_lrs.")}
        return {n: p.detach() for n, p in params.items()} if detach else params

    def _step_sizes(self, *, detach: bool) -> dict[str, torch.Tensor | float]:
        if self.inner_lrs is None:
            return dict.fromkeys(self.adapted, self.inner_lr)
        return {n: (lr.detach() if detach else lr) for n, lr in zip(self.adapted, self.inner_lrs, strict=True)}

    def _features(self, params: Params, x: torch.Tensor, *, primitives: bool,
                  stat_rows: int | None = None) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) backbone features with ``params``, normalised per :class:`NormPolicy`
        (``primitives`` is required under vmap). Outside vmap, batch statistics of the whole batch need no
        torch-function mode where the backbone's batch norm is stock (:func:`batch_stat_overrides`): that saves
        the mode's Python dispatch of every torch call of the forward pass."""
        sub = {n[len("backbone."):]: p for n, p in params.items() if n.startswith("backbone.")}
        overrides = None
        if not primitives and stat_rows is None:
            in_scope, found = self._scope
            overrides = found if in_scope else batch_stat_overrides(self.backbone)
        if overrides is not None:
            return torch.func.functional_call(self.backbone, sub | overrides, (x,))
        with NormPolicy(stats="batch", stat_rows=stat_rows, primitives=primitives):
            return torch.func.functional_call(self.backbone, sub, (x,))

    @contextmanager
    def _batch_scope(self) -> Iterator[None]:
        """The backbone in :func:`eval_mode` for the forward passes of one batch, and its
        :func:`batch_stat_overrides` found once for all of them (walking the modules on every forward pass cost
        2.6% of a first-order task on CPU)."""
        with eval_mode(self.backbone):
            self._scope = (True, batch_stat_overrides(self.backbone))
            try:
                yield
            finally:
                self._scope = (False, None)

    @staticmethod
    def _head(params: Params, feats: torch.Tensor) -> torch.Tensor:
        return F.linear(feats, params["head.weight"], params["head.bias"])

    def _query_features(self, params: Params, support_x: torch.Tensor, query_x: torch.Tensor, *,
                        primitives: bool) -> torch.Tensor:
        if self.bn_mode == "support":
            n = support_x.shape[0]
            return self._features(params, torch.cat([support_x, query_x]), stat_rows=n, primitives=primitives)[n:]
        return self._features(params, query_x, primitives=primitives)

    def _task(self, params: Params, step_sizes: dict[str, torch.Tensor | float], steps: int, first_order: bool,
              batched: bool, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One task: support (S, C, H, W), (S,) and query (Q, C, H, W) -> query logits (Q, n_way) and
        (steps,) support losses."""
        if self.inner_params == "head":
            support_f = self._features(params, support_x, primitives=batched)
            query_f = self._query_features(params, support_x, query_x, primitives=batched)
            adapted, losses = adapt(lambda p: F.cross_entropy(self._head(p, support_f), support_y), params,
                                    self.adapted, steps=steps, step_sizes=step_sizes, first_order=first_order,
                                    batched=batched)
            return self._head(adapted, query_f), losses
        adapted, losses = adapt(
            lambda p: F.cross_entropy(self._head(p, self._features(p, support_x, primitives=batched)), support_y),
            params, self.adapted, steps=steps, step_sizes=step_sizes, first_order=first_order, batched=batched)
        return self._head(adapted, self._query_features(adapted, support_x, query_x, primitives=batched)), losses

    def check_ways(self, n_way: int) -> None:
        """The head has ``self.n_way`` outputs: other ways are refused."""
        if n_way != self.n_way:
            raise ValueError(f"this MAML head has {self.n_way} classes but the episodes are {n_way}-way; build the "
                             f"learner with n_way={n_way} (a separate model per number of ways)")

    def _check_way(self, batch: EpisodeBatch) -> None:
        self.check_ways(batch.n_way)

    def _check_finite(self, losses: torch.Tensor, logits: torch.Tensor) -> None:
        if not (bool(torch.isfinite(losses).all()) and bool(torch.isfinite(logits).all())):
            raise FloatingPointError(
                f"MAML inner loop diverged (non-finite support loss or logits) with inner_lr={self.inner_lr}; "
                "lower inner_lr, take fewer inner steps, or use first_order=True")

    def _run(self, batch: EpisodeBatch, *, steps: int, first_order: bool, detach: bool) -> torch.Tensor:
        self._check_way(batch)
        params, step_sizes = self._params(detach=detach), self._step_sizes(detach=detach)
        batched = resolve_batched(self.batched, batch.device)

        def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._task(params, step_sizes, steps, first_order, batched, sx, sy, qx)

        with self._batch_scope():
            logits, losses = map_tasks(task, batch.support_x, batch.support_y, batch.query_x, batched=batched)
        self._check_finite(losses, logits)
        return logits

    # ----------------------------------------------------------------- Learner API
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query cross-entropy after ``inner_steps`` adaptation steps, over all tasks of ``batch``.

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) query logits).
        """
        logits = self._run(batch, steps=self.inner_steps, first_order=self.first_order, detach=False)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()), logits

    def meta_backward(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient of :meth:`meta_loss`. The sequential path back-propagates each task's share of the
        mean query loss as soon as it is computed, so one task's (second-order) graph is alive at a time
        instead of all B; the batched path back-propagates once through the vmapped loop."""
        if resolve_batched(self.batched, batch.device):
            return super().meta_backward(batch)
        self._check_way(batch)
        params, step_sizes = self._params(detach=False), self._step_sizes(detach=False)
        total, all_logits = torch.zeros((), dtype=batch.query_x.dtype, device=batch.device), []
        with self._batch_scope():
            for i in range(batch.n_tasks):
                logits, losses = self._task(params, step_sizes, self.inner_steps, self.first_order, False,
                                            batch.support_x[i], batch.support_y[i], batch.query_x[i])
                self._check_finite(losses, logits)
                loss = F.cross_entropy(logits, batch.query_y[i]) / batch.n_tasks  # equal queries per task
                loss.backward()
                total += loss.detach()
                all_logits.append(logits.detach())
        return total, torch.stack(all_logits)

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        """Adapt for ``eval_inner_steps`` steps on each support set, score the query set.

        Gradients are enabled inside (also under a caller's ``torch.no_grad``); the learner's parameters
        and buffers are not changed.

        Returns:
            (B, n_way*n_query, n_way) detached logits.
        """
        with torch.enable_grad():
            return self._run(batch, steps=self.eval_inner_steps, first_order=True, detach=True).detach()
