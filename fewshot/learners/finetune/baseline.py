"""Fine-tuning baselines: a pretrained backbone and a new classifier fitted on each support set."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.backbones.freeze import frozen_names
from fewshot.learners.base import EmbeddingLearner, Learner
from fewshot.learners.gradient.functional import NormPolicy, eval_mode
from fewshot.learners.gradient.inner_loop import Params, adapt, map_tasks, resolve_batched
from fewshot.learners.metric.protonet import prototypes

__all__ = ["BackboneFineTune", "FineTune", "FrozenFineTune", "head_logits", "init_head"]

HeadKind = Literal["linear", "cosine"]
MOMENTUM = 0.9  # SGD momentum of every head fit (Chen et al. 2019 train their heads with momentum 0.9)
BackboneMode = Literal["none", "all", "last"]


def init_head(support: torch.Tensor, support_y: torch.Tensor, n_way: int, head: HeadKind) -> Params:
    """Deterministic starting head for each task (no random numbers: predictions are reproducible).

    Linear: zero weight and bias. Cosine: each class weight is the mean of the task's L2-normalised
    support features of that class (weight imprinting).

    Args:
        support: (..., S, D) support features; support_y: (..., S) labels in [0, n_way).
    Returns:
        ``{"weight": (..., D, n_way)}`` plus ``"bias": (..., n_way)`` for the linear head.
    """
    if head == "cosine":
        return {"weight": prototypes(F.normalize(support, dim=-1), support_y, n_way).transpose(-1, -2)}
    lead, d = support.shape[:-2], support.shape[-1]
    return {"weight": support.new_zeros(*lead, d, n_way), "bias": support.new_zeros(*lead, n_way)}


def head_logits(params: Params, feats: torch.Tensor, head: HeadKind, scale: float) -> torch.Tensor:
    """Apply a head: feats (..., N, D) with weight (..., D, n_way) -> (..., N, n_way) logits.

    Linear: ``feats @ weight + bias``. Cosine (Baseline++): ``scale * cos(feats, weight column)``.
    """
    if head == "cosine":
        return scale * F.normalize(feats, dim=-1) @ F.normalize(params["weight"], dim=-2)
    return feats @ params["weight"] + params["bias"].unsqueeze(-2)


class FineTune(Learner):
    """Fine-tuning baselines of "A Closer Look at Few-shot Classification" (Chen et al., ICLR 2019).

    A pretrained backbone and a new head fitted on each episode's support set: a linear head
    (Baseline) or a cosine-similarity head with temperature ``scale`` (Baseline++). Heads start from
    :func:`init_head` (deterministic), and every episode is fitted from scratch.

    ``FineTune(...)`` returns a :class:`FrozenFineTune` (an :class:`EmbeddingLearner`) when
    ``finetune_backbone="none"``, and a :class:`BackboneFineTune` otherwise.

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        head: ``"linear"`` or ``"cosine"``.
        steps: full-batch optimisation steps per episode.
        lr: head learning rate; the backbone uses ``lr * backbone_lr_mult``.
        weight_decay: L2 penalty on the fitted parameters.
        scale: cosine-head temperature (logits are ``scale * cos``).
        finetune_backbone: ``"none"`` (frozen), ``"all"`` parameters, or ``"last"``: the parameters of
            the backbone's last stage (``backbone.stages[-1]``; :func:`fewshot.backbones.frozen_names` with
            ``"first_k"`` freezes the others).
        batched: for backbone fine-tuning, vmap over episodes (``True``), loop (``False``) or ``"auto"``
            (batched on CUDA only).
    """

    def __new__(cls, backbone: nn.Module | None = None, *, head: HeadKind = "linear", steps: int = 100,
                lr: float = 0.01, weight_decay: float = 0.001, scale: float = 10.0,
                finetune_backbone: BackboneMode = "none", backbone_lr_mult: float = 0.1,
                batched: bool | Literal["auto"] = "auto") -> FineTune:
        # Pick the concrete class from the arguments; copy/pickle call __new__(cls) with a concrete cls.
        if cls is FineTune:
            cls = FrozenFineTune if finetune_backbone == "none" else BackboneFineTune
        return super().__new__(cls)

    def __init__(self, backbone: nn.Module, *, head: HeadKind = "linear", steps: int = 100, lr: float = 0.01,
                 weight_decay: float = 0.001, scale: float = 10.0, finetune_backbone: BackboneMode = "none",
                 backbone_lr_mult: float = 0.1, batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "feature_dim", None), int):
            raise TypeError("FineTune needs a backbone with an integer `feature_dim` attribute (its output size)")
        if head not in ("linear", "cosine"):
            raise ValueError(f"unknown head {head!r}; use 'linear' or 'cosine'")
        if finetune_backbone not in ("none", "all", "last"):
            raise ValueError(f"unknown finetune_backbone {finetune_backbone!r}; use 'none', 'all' or 'last'")
        if steps < 0 or not lr > 0 or not weight_decay >= 0 or not scale > 0 or not backbone_lr_mult >= 0:
            raise ValueError("need steps >= 0, lr > 0, weight_decay >= 0, scale > 0 and backbone_lr_mult >= 0; got "
                             f"{steps}, {lr}, {weight_decay}, {scale}, {backbone_lr_mult}")
        resolve_batched(batched, torch.device("cpu"))  # validates the value
        self.backbone = backbone
        self.head, self.steps, self.lr, self.weight_decay, self.scale = head, steps, lr, weight_decay, scale
        self.finetune_backbone, self.backbone_lr_mult, self.batched = finetune_backbone, backbone_lr_mult, batched

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss).all()):
            raise FloatingPointError(f"fine-tuning diverged (non-finite loss or logits) with lr={self.lr}; lower lr "
                                     "(or backbone_lr_mult)")


class FrozenFineTune(FineTune, EmbeddingLearner):
    """:class:`FineTune` with a frozen backbone: features once, then B heads fitted in one optimisation.

    The heads of all episodes form one (B, D, n_way) tensor, trained with SGD (momentum 0.9, as Chen et
    al.) on the sum over episodes of each episode's mean support cross-entropy: SGD is elementwise and
    the episodes' losses are independent, so this equals fitting each episode alone.
    """

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Fit one head per episode on support features, score query features.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) detached logits.
        """
        support, query = support.detach(), query.detach()
        with torch.enable_grad():
            params = {k: v.requires_grad_() for k, v in init_head(support, support_y, n_way, self.head).items()}
            opt = torch.optim.SGD(list(params.values()), lr=self.lr, momentum=MOMENTUM, weight_decay=self.weight_decay)
            for _ in range(self.steps):
                logits = head_logits(params, support, self.head, self.scale)
                per_task = F.cross_entropy(logits.transpose(1, 2), support_y, reduction="none").mean(1)
                opt.zero_grad(set_to_none=True)
                per_task.sum().backward()
                opt.step()
        with torch.no_grad():
            out = head_logits(params, query, self.head, self.scale)
        self._check_finite(out)
        return out


class BackboneFineTune(FineTune):
    """:class:`FineTune` that also adapts backbone parameters, one copy per episode.

    Runs the shared functional inner loop (the one MAML uses): ``steps`` full-batch SGD steps (momentum
    0.9, as :class:`FrozenFineTune`) on the support cross-entropy plus ``weight_decay / 2 * ||theta||^2``,
    with step size ``lr`` for the head and ``lr * backbone_lr_mult`` for the backbone, batched over
    episodes with vmap or looped (``batched``). Batch norm normalises with the pretrained running
    statistics (read, never updated), so every image is treated as at test time. With
    ``backbone_lr_mult=0`` the result equals :class:`FrozenFineTune`.
    """

    def __init__(self, backbone: nn.Module, *, head: HeadKind = "linear", steps: int = 100, lr: float = 0.01,
                 weight_decay: float = 0.001, scale: float = 10.0, finetune_backbone: BackboneMode = "all",
                 backbone_lr_mult: float = 0.1, batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__(backbone, head=head, steps=steps, lr=lr, weight_decay=weight_decay, scale=scale,
                         finetune_backbone=finetune_backbone, backbone_lr_mult=backbone_lr_mult, batched=batched)
        if finetune_backbone == "none":
            raise ValueError("BackboneFineTune adapts the backbone: use finetune_backbone='all' or 'last'")
        stages = getattr(backbone, "stages", None)
        if finetune_backbone == "last" and not stages:
            raise ValueError("finetune_backbone='last' needs a backbone with a `stages` list (see "
                             "fewshot.backbones.Backbone); use finetune_backbone='all'")
        frozen = set(frozen_names(backbone, "first_k", len(stages) - 1) if finetune_backbone == "last" else ())
        trainable = [n for n, p in backbone.named_parameters() if p.requires_grad and n not in frozen]
        self.tuned = trainable

    def _features(self, params: Params, x: torch.Tensor, primitives: bool) -> torch.Tensor:
        backbone = {n[len("backbone."):]: p for n, p in params.items() if n.startswith("backbone.")}
        with NormPolicy(stats="running", primitives=primitives):
            return torch.func.functional_call(self.backbone, backbone, (x,))

    def _task(self, params: Params, n_way: int, batched: bool, support_x: torch.Tensor, support_y: torch.Tensor,
              query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One episode: support (S, C, H, W), (S,), query (Q, C, H, W) -> (Q, n_way) logits, (steps,) losses."""
        head = {"head." + k: v for k, v in init_head(self._features(params, support_x, batched), support_y,
                                                      n_way, self.head).items()}
        names = [*("backbone." + n for n in self.tuned), *head]
        sizes = {n: self.lr * (1.0 if n.startswith("head.") else self.backbone_lr_mult) for n in names}

        def logits(p: Params, x: torch.Tensor) -> torch.Tensor:
            return head_logits({k[5:]: v for k, v in p.items() if k.startswith("head.")},
                               self._features(p, x, batched), self.head, self.scale)

        def loss_fn(p: Params) -> torch.Tensor:
            decay = sum((p[n] * p[n]).sum() for n in names)
            return F.cross_entropy(logits(p, support_x), support_y) + 0.5 * self.weight_decay * decay

        adapted, losses = adapt(loss_fn, {**params, **head}, names, steps=self.steps, step_sizes=sizes,
                                first_order=True, batched=batched, momentum=MOMENTUM)
        return logits(adapted, query_x), losses

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        """Fine-tune a copy of the backbone and a new head on each support set; score the query set.

        Returns:
            (B, n_way*n_query, n_way) detached logits. The learner's parameters and buffers are unchanged.
        """
        params = {"backbone." + n: p.detach() for n, p in self.backbone.named_parameters()}
        batched = resolve_batched(self.batched, batch.device)

        def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self._task(params, batch.n_way, batched, sx, sy, qx)

        with torch.enable_grad(), eval_mode(self.backbone):
            logits, losses = map_tasks(task, batch.support_x, batch.support_y, batch.query_x, batched=batched)
        self._check_finite(losses)
        self._check_finite(logits)
        return logits.detach()
