"""MAML++ (Antoniou, Edwards & Storkey, ICLR 2019): MAML with a multi-step loss, per-step batch norm, learned
per-step step sizes and derivative-order annealing, over the shared functional inner loop."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.base import MetaLearner
from fewshot.learners.gradient.functional import BatchMoments, NormPolicy, eval_mode
from fewshot.learners.gradient.inner_loop import Params, adapt, map_tasks, resolve_batched
from fewshot.learners.gradient.maml import MAML, BNMode

__all__ = ["MAMLPlusPlus"]

#: Floor of every non-final multi-step-loss weight, as a fraction of the uniform weight 1/N (the authors' code).
MSL_FLOOR = 0.03

StepSizes = list[dict[str, torch.Tensor | float]]


@dataclass(frozen=True)
class _Pass:
    """One run of the inner loop: steps, gradient order, vmap; the query loss after every step (``msl``); per-state
    support moments recorded (``record``); batch norm with the per-state running statistics (``running``)."""

    steps: int
    first_order: bool
    batched: bool
    msl: bool = False
    record: bool = False
    running: bool = False


class _StepStats(nn.Module):
    """Running statistics of one batch-norm layer per inner-loop state: ``mean``, ``var`` buffers (states, C)."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, states: int) -> None:
        super().__init__()
        mean = layer.running_mean if layer.running_mean is not None else torch.zeros(layer.num_features)
        var = layer.running_var if layer.running_var is not None else torch.ones(layer.num_features)
        self.register_buffer("mean", mean.detach().expand(states, -1).clone())
        self.register_buffer("var", var.detach().expand(states, -1).clone())


class MAMLPlusPlus(MAML):
    """MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019) on any backbone.

    :class:`~fewshot.learners.gradient.maml.MAML` (``first_order``, ``bn_mode``, ``batched``: see there) with the
    paper's extras, each a switch; with all of them off it computes what MAML computes, bit for bit. "State k" is
    the parameters after k of the N = ``inner_steps`` inner steps.

    - ``multi_step_loss_steps`` = T (MSL): the meta-loss is ``sum_k w_k CE(query logits at state k)``, k = 1..N. At
      meta-step t < T each non-final weight is ``max(1 - t/T, 0.03) / N`` (uniform at first, decaying to a floor)
      and the final one takes the rest (they sum to 1); from T on, the final loss alone. This is the authors'
      code, which moves the schedule once per 500-step epoch (here every meta-step). 0: final loss only (MAML).
    - ``per_step_bn_weights`` (BNWB): each batch-norm weight and bias becomes a table of N + 1 meta-learned values,
      one per state, used by the forwards at that state (support at step k, query after k steps; the authors' code
      has N, the query after step k sharing step k's). Not adapted in the inner loop (the code's setting); the
      backbone's own ones are frozen and only initialise the tables.
    - ``per_step_bn_stats`` (BNRS): running mean and variance per batch-norm layer and state. Meta-training
      normalises with batch statistics as MAML does and, in train mode, folds the task mean of the support-set
      moments at each state into that state's statistics (``bn_momentum``, once per meta-batch); :meth:`predict`
      normalises each forward at state k with them, so it is not transductive. Our reading: the authors' code
      collects such statistics but normalises with batch statistics also at test (``F.batch_norm(training=True)``),
      so there they change no output; here they are the inductive test-time normalisation the paper describes
      (off in our experiment rows, which follow the code).
    - ``per_step_inner_lrs`` (LSLR): a learned step size per adapted parameter tensor and step, (N,) each,
      initialised to ``inner_lr``.
    - ``first_order_steps`` (DA): first-order meta-gradients for that many meta-steps, second order after.

    The meta-step count is the buffer ``meta_step`` (advanced by :meth:`meta_train_step`): the annealing resumes
    exactly from a checkpoint. With per-step tables ``eval_inner_steps`` may not exceed ``inner_steps``. The paper's
    cosine-annealed outer learning rate is the trainer's ``OuterOptimizer(schedule="cosine")``.

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        n_way, inner_lr, inner_steps, eval_inner_steps, first_order, bn_mode, batched: as :class:`MAML`.
        bn_momentum: weight of each meta-batch's moments in the per-step running statistics, in (0, 1].
    """

    def __init__(self, backbone: nn.Module, *, n_way: int, inner_lr: float = 0.1, inner_steps: int = 5,
                 eval_inner_steps: int = 5, first_order: bool = False, bn_mode: BNMode = "transductive",
                 batched: bool | Literal["auto"] = "auto", multi_step_loss_steps: int = 5000,
                 per_step_bn_weights: bool = True, per_step_bn_stats: bool = False, bn_momentum: float = 0.1,
                 per_step_inner_lrs: bool = True, first_order_steps: int = 0) -> None:
        for name, value in (("first_order", first_order), ("per_step_bn_weights", per_step_bn_weights),
                            ("per_step_bn_stats", per_step_bn_stats), ("per_step_inner_lrs", per_step_inner_lrs)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        for name, value in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps),
                            ("multi_step_loss_steps", multi_step_loss_steps), ("first_order_steps", first_order_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, int | float) or not 0 <= inner_lr < math.inf:
            raise ValueError(f"inner_lr must be a finite number >= 0, got {inner_lr!r}")
        if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, int | float) or not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be a number in (0, 1], got {bn_momentum!r}")
        if first_order and first_order_steps:
            raise ValueError("first_order=True trains first order throughout; for derivative-order annealing set "
                             "first_order=False and first_order_steps > 0, or set first_order_steps=0")
        per_step = per_step_bn_weights or per_step_bn_stats or per_step_inner_lrs
        if (per_step or multi_step_loss_steps) and inner_steps < 1:
            raise ValueError("per-step parameters and the multi-step loss need inner_steps >= 1; turn them off for a "
                             "learner without inner steps")
        if per_step and eval_inner_steps > inner_steps:
            raise ValueError(f"eval_inner_steps={eval_inner_steps} exceeds inner_steps={inner_steps}: per-step "
                             "parameters exist only for the training steps; use eval_inner_steps <= inner_steps or "
                             "turn the per-step options off")
        super().__init__(backbone, n_way=n_way, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=first_order, bn_mode=bn_mode, batched=batched)
        norms = [(n, m) for n, m in self.backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if (per_step_bn_weights or per_step_bn_stats) and not norms:
            raise ValueError("per_step_bn_weights and per_step_bn_stats need a backbone with batch-norm layers; this "
                             "one has none: turn them off")
        self.multi_step_loss_steps, self.first_order_steps = multi_step_loss_steps, first_order_steps
        self.bn_momentum = float(bn_momentum)
        self.register_buffer("meta_step", torch.zeros((), dtype=torch.long))
        states = inner_steps + 1
        self.norm_layers = [n for n, _ in norms]  # backbone-relative module names
        self.step_bn_names: list[str] = []  # backbone-relative names of the parameters replaced by ``step_bn``
        self.step_bn: nn.ParameterList | None = None
        if per_step_bn_weights:
            affine = [(f"{n}.{k}", p) for n, m in norms for k, p in m.named_parameters(recurse=False)
                      if p.requires_grad]
            self.step_bn_names = [n for n, _ in affine]
            self.step_bn = nn.ParameterList([nn.Parameter(p.detach().expand(states, *p.shape).clone())
                                             for _, p in affine])
            for _, p in affine:
                p.requires_grad_(False)
            self.adapted = [n for n in self.adapted if n not in {f"backbone.{b}" for b in self.step_bn_names}]
        self.step_stats = nn.ModuleList([_StepStats(m, states) for _, m in norms]) if per_step_bn_stats else None
        self.step_lrs = nn.ParameterList([nn.Parameter(torch.full((inner_steps,), float(inner_lr)))
                                          for _ in self.adapted]) if per_step_inner_lrs else None

    @property
    def transductive(self) -> bool:  # type: ignore[override]
        """Batch statistics of the query set at test (``bn_mode="transductive"`` without per-step statistics)."""
        return self.step_stats is None and self.bn_mode == "transductive"

    def loss_weights(self) -> list[float]:
        """The multi-step-loss weight of the query loss after each of the ``inner_steps`` steps at the current
        meta-step (they sum to 1; ``[0, ..., 0, 1]`` once annealed, or with the multi-step loss off)."""
        n, t, span = self.inner_steps, int(self.meta_step), self.multi_step_loss_steps
        if span == 0 or t >= span:
            return [0.0] * (n - 1) + [1.0]
        early = max(1.0 - t / span, MSL_FLOOR) / n
        return [early] * (n - 1) + [1.0 - (n - 1) * early]

    def first_order_now(self) -> bool:
        """Whether the next meta-gradient is first order (``first_order``, or derivative-order annealing)."""
        return self.first_order or int(self.meta_step) < self.first_order_steps

    # ----------------------------------------------------------------- functional pieces
    def _per_step_sizes(self, steps: int, *, detach: bool) -> StepSizes:
        """Step size of every adapted parameter at each of ``steps`` steps: ``inner_lr``, or the learned ones."""
        if self.step_lrs is None:
            return [dict.fromkeys(self.adapted, self.inner_lr)] * steps
        lrs = [lr.detach() if detach else lr for lr in self.step_lrs]
        return [{n: lr[k] for n, lr in zip(self.adapted, lrs, strict=True)} for k in range(steps)]

    def _substitutes(self, params: Params, state: int) -> Params:
        """The backbone's parameters and, at ``state``, its per-state batch-norm weights and statistics."""
        sub = {n[len("backbone."):]: p for n, p in params.items() if n.startswith("backbone.")}
        sub.update({n: params[f"step_bn.{i}"][state] for i, n in enumerate(self.step_bn_names)})
        for name, stats in zip(self.norm_layers, self.step_stats or [], strict=False):
            sub[f"{name}.running_mean"], sub[f"{name}.running_var"] = stats.mean[state], stats.var[state]
        return sub

    def _forward(self, params: Params, state: int, x: torch.Tensor, policy: NormPolicy) -> torch.Tensor:
        """(N, C, H, W) -> (N, D) backbone features at ``state``, batch norm per ``policy``."""
        with policy:
            return torch.func.functional_call(self.backbone, self._substitutes(params, state), (x,))

    def _moments(self, params: Params, state: int, support_x: torch.Tensor) -> list[torch.Tensor]:
        """(2, C) support-set [mean, unbiased variance] entering each batch-norm layer at ``state``."""
        sub, recorder = self._substitutes(params, state), BatchMoments()
        with torch.no_grad(), recorder:
            torch.func.functional_call(self.backbone, sub, (support_x,))
        if missing := [n for n in self.norm_layers if id(sub[f"{n}.running_mean"]) not in recorder.moments]:
            raise ValueError(f"batch-norm layers {missing} do not run in the backbone's forward; per-step running "
                             "statistics need every batch-norm layer to run once per forward")
        return [recorder.moments[id(sub[f"{n}.running_mean"])] for n in self.norm_layers]

    def _query_logits(self, params: Params, state: int, support_x: torch.Tensor, query_x: torch.Tensor,
                      run: _Pass) -> torch.Tensor:
        """(Q, n_way) query logits at ``state``: per-state running statistics, support or query batch statistics."""
        if run.running:
            feats = self._forward(params, state, query_x, NormPolicy(stats="running", primitives=run.batched))
        elif self.bn_mode == "support":
            n = support_x.shape[0]
            feats = self._forward(params, state, torch.cat([support_x, query_x]),
                                  NormPolicy(stat_rows=n, primitives=run.batched))[n:]
        else:
            feats = self._forward(params, state, query_x, NormPolicy(primitives=run.batched))
        return self._head(params, feats)

    def _one_task(self, params: Params, sizes: StepSizes, run: _Pass, support_x: torch.Tensor,
                  support_y: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One task: support (S, C, H, W), (S,) and query (Q, C, H, W) -> query logits (K, Q, n_way) after every
        step (``run.msl``, K = steps) or the last (K = 1), (steps,) support losses and, with ``run.record``, a
        (steps + 1, 2, C) tensor of support moments per batch-norm layer."""

        def support_loss(p: Params, k: int) -> torch.Tensor:
            policy = NormPolicy(stats="running" if run.running else "batch", primitives=run.batched)
            return F.cross_entropy(self._head(p, self._forward(p, k, support_x, policy)), support_y)

        logits, losses, moments = [], [], []
        for k in range(run.steps):
            if run.record:
                moments.append(self._moments(params, k, support_x))
            params, loss = adapt(functools.partial(support_loss, k=k), params, self.adapted, steps=1,
                                 step_sizes=sizes[k], first_order=run.first_order, batched=run.batched)
            losses.append(loss)
            if run.msl:
                logits.append(self._query_logits(params, k + 1, support_x, query_x, run))
        if run.record:
            moments.append(self._moments(params, run.steps, support_x))
        if not run.msl:
            logits.append(self._query_logits(params, run.steps, support_x, query_x, run))
        losses_t = torch.cat(losses) if losses else torch.zeros(0, device=support_x.device)
        return torch.stack(logits), losses_t, *(torch.stack(per_layer) for per_layer in zip(*moments, strict=True))

    def _training_pass(self, batch: EpisodeBatch) -> _Pass:
        return _Pass(steps=self.inner_steps, first_order=self.first_order_now(),
                     batched=resolve_batched(self.batched, batch.device), msl=self.loss_weights()[-1] < 1,
                     record=self.training and self.step_stats is not None)

    def _run_tasks(self, batch: EpisodeBatch, run: _Pass, *, detach: bool) -> torch.Tensor:
        """(B, K, n_way*n_query, n_way) query logits (see :meth:`_one_task`); folds recorded moments in."""
        self._check_way(batch)
        params, sizes = self._params(detach=detach), self._per_step_sizes(run.steps, detach=detach)

        def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._one_task(params, sizes, run, sx, sy, qx)

        with eval_mode(self.backbone):
            logits, losses, *moments = map_tasks(task, batch.support_x, batch.support_y, batch.query_x,
                                                 batched=run.batched)
        self._check_finite(losses, logits)
        if run.record:
            self._fold_moments(moments)
        return logits

    @torch.no_grad()
    def _fold_moments(self, moments: list[torch.Tensor]) -> None:
        """Per batch-norm layer, (B, states, 2, C) moments of B tasks -> the running statistics of every state."""
        for stats, layer in zip(self.step_stats, moments, strict=True):
            mean = layer.mean(0).to(stats.mean.dtype)
            stats.mean.lerp_(mean[:, 0], self.bn_momentum)
            stats.var.lerp_(mean[:, 1], self.bn_momentum)

    def _weighted_loss(self, logits: torch.Tensor, query_y: torch.Tensor, msl: bool) -> torch.Tensor:
        """(B, K, Q, n_way) logits, (B, Q) labels -> the MSL-weighted (or final-step) mean query cross-entropy."""
        if not msl:
            return F.cross_entropy(logits[:, -1].flatten(0, 1), query_y.flatten())
        return sum(w * F.cross_entropy(logits[:, k].flatten(0, 1), query_y.flatten())
                   for k, w in enumerate(self.loss_weights()))

    # ----------------------------------------------------------------- Learner API
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(Query cross-entropy after ``inner_steps`` steps, MSL-weighted over the steps while annealing, mean over
        the tasks; (B, n_way*n_query, n_way) final-step logits). In train mode the support moments are folded into
        the per-step running statistics."""
        run = self._training_pass(batch)
        logits = self._run_tasks(batch, run, detach=False)
        return self._weighted_loss(logits, batch.query_y, run.msl), logits[:, -1]

    def meta_backward(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient of :meth:`meta_loss`, task by task on the sequential path (as :meth:`MAML.meta_backward`)."""
        run = self._training_pass(batch)
        if run.batched:
            return MetaLearner.meta_backward(self, batch)
        self._check_way(batch)
        params, sizes = self._params(detach=False), self._per_step_sizes(run.steps, detach=False)
        total, all_logits, all_moments = torch.zeros((), dtype=batch.query_x.dtype, device=batch.device), [], []
        with eval_mode(self.backbone):
            for i in range(batch.n_tasks):
                logits, losses, *moments = self._one_task(params, sizes, run, batch.support_x[i], batch.support_y[i],
                                                          batch.query_x[i])
                self._check_finite(losses, logits)
                loss = self._weighted_loss(logits[None], batch.query_y[i][None], run.msl) / batch.n_tasks
                loss.backward()
                total += loss.detach()
                all_logits.append(logits[-1].detach())
                all_moments.append(moments)
        if run.record:
            self._fold_moments([torch.stack(layer) for layer in zip(*all_moments, strict=True)])
        return total, torch.stack(all_logits)

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        """One outer update (:meth:`MetaLearner.meta_train_step`), then the meta-step count advances."""
        metrics = super().meta_train_step(batch)
        self.meta_step.add_(1)
        return metrics

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        """Adapt for ``eval_inner_steps`` steps on each support set, score the query set: (B, n_way*n_query, n_way)
        detached logits. Parameters and buffers (running statistics included) are not changed."""
        run = _Pass(steps=self.eval_inner_steps, first_order=True, batched=resolve_batched(self.batched, batch.device),
                    running=self.step_stats is not None)
        with torch.enable_grad():
            return self._run_tasks(batch, run, detach=True)[:, -1].detach()
