"""Transductive fine-tuning: backbone and head fitted on the support labels and the query set's entropy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.finetune.baseline import (
    MOMENTUM,
    BackboneFineTune,
    BackboneMode,
    HeadKind,
    head_logits,
    init_head,
)
from fewshot.learners.gradient.inner_loop import Params, adapt

__all__ = ["TransductiveFineTune"]

Optimizer = Literal["adam", "sgd"]


class TransductiveFineTune(BackboneFineTune):
    """Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran and Soatto, ICLR 2020, "A Baseline for Few-Shot
    Image Classification").

    Transductive: the query set of each episode is used, unlabelled. A backbone pretrained as a classifier
    (``trainer=pretrain``) and a cosine head initialised from the support features (the paper's support-based
    initialisation: each class weight is the mean L2-normalised support feature) are fine-tuned, one copy per
    episode, on::

        CE(support) + entropy_weight * mean_q H(p(. | x_q)) + weight_decay / 2 * ||theta||^2

    the support cross-entropy plus the mean Shannon entropy of the query predictions (the paper's objective,
    with ``entropy_weight = 1``). Everything else is :class:`~fewshot.learners.finetune.BackboneFineTune`: the
    shared functional inner loop (``adapt``, ``map_tasks``), batch norm with the pretrained running statistics,
    the learner's own parameters never changed.

    The optimizer follows the paper: Adam (``torch.optim.Adam``'s defaults, betas (0.9, 0.999)), learning rate
    5e-5 for every parameter (``backbone_lr_mult = 1``), 25 epochs, no weight decay (as the authors' code,
    amazon-science/few-shot-baseline ``finetune.py``). Our differences: each of our ``steps`` is one full-batch
    step on the sum of the two terms, where the authors' epoch takes one Adam step on the support cross-entropy
    and then one on the query entropy (so their parameters take 50 Adam steps, ours 25); batch norm uses the
    pretrained statistics (their code fine-tunes in train mode); the head is a cosine classifier with scale 10
    (theirs: a linear layer with bias over the L2-normalised ReLU features, weights from the same support
    means).
    ``optimizer="sgd"`` runs :class:`~fewshot.learners.finetune.BackboneFineTune`'s momentum-0.9 SGD instead.

    Balanced query sets: the method makes no use of them (the entropy term makes each query confident without
    regard to class proportions) and runs unchanged on imbalanced ones; like every row here it is measured on
    balanced ones, the benchmarks' protocol.

    Args:
        backbone, head, steps, lr, weight_decay, scale, finetune_backbone, backbone_lr_mult, batched: as
            :class:`~fewshot.learners.finetune.FineTune` (``lr``: Adam's learning rate).
        entropy_weight: weight of the query entropy (0 with ``optimizer="sgd"`` gives :class:`BackboneFineTune`).
        optimizer: ``"adam"`` (the paper) or ``"sgd"`` (momentum 0.9).
    """

    transductive = True

    def __new__(cls, backbone: nn.Module | None = None, *, head: HeadKind = "cosine", steps: int = 25,
                lr: float = 5e-5, weight_decay: float = 0.0, scale: float = 10.0,
                finetune_backbone: BackboneMode = "all", backbone_lr_mult: float = 1.0, entropy_weight: float = 1.0,
                optimizer: Optimizer = "adam", batched: bool | Literal["auto"] = "auto") -> TransductiveFineTune:
        # FineTune.__new__ picks a concrete class from FineTune's keywords; this class is concrete, with one more
        # keywords (entropy_weight, optimizer). __init__ checks them all.
        return nn.Module.__new__(cls)

    def __init__(self, backbone: nn.Module, *, head: HeadKind = "cosine", steps: int = 25, lr: float = 5e-5,
                 weight_decay: float = 0.0, scale: float = 10.0, finetune_backbone: BackboneMode = "all",
                 backbone_lr_mult: float = 1.0, entropy_weight: float = 1.0, optimizer: Optimizer = "adam",
                 batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__(backbone, head=head, steps=steps, lr=lr, weight_decay=weight_decay, scale=scale,
                         finetune_backbone=finetune_backbone, backbone_lr_mult=backbone_lr_mult, batched=batched)
        if not entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' (the paper) or 'sgd' (momentum 0.9)")
        self.entropy_weight, self.optimizer = entropy_weight, optimizer

    def _task(self, params: Params, n_way: int, batched: bool, support_x: torch.Tensor, support_y: torch.Tensor,
              query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One episode: support (S, C, H, W), (S,), query (Q, C, H, W) -> (Q, n_way) logits, (steps,) losses."""
        head = {"head." + k: v for k, v in init_head(self._features(params, support_x, batched), support_y,
                                                      n_way, self.head).items()}
        names = [*("backbone." + n for n in self.tuned), *head]
        sizes = {n: self.lr * (1.0 if n.startswith("head.") else self.backbone_lr_mult) for n in names}
        s = support_x.shape[0]

        def logits(p: Params, x: torch.Tensor) -> torch.Tensor:
            return head_logits({k[5:]: v for k, v in p.items() if k.startswith("head.")},
                               self._features(p, x, batched), self.head, self.scale)

        def loss_fn(p: Params) -> torch.Tensor:
            out = logits(p, torch.cat([support_x, query_x]))  # one backbone call for support and query
            log_q = out[s:].log_softmax(-1)
            entropy = -(log_q.exp() * log_q).sum(-1).mean()
            decay = sum((p[n] * p[n]).sum() for n in names)
            return (F.cross_entropy(out[:s], support_y) + self.entropy_weight * entropy
                    + 0.5 * self.weight_decay * decay)

        adapted, losses = adapt(loss_fn, {**params, **head}, names, steps=self.steps, step_sizes=sizes,
                                first_order=True, batched=batched, optimizer=self.optimizer,
                                momentum=MOMENTUM if self.optimizer == "sgd" else 0.0)
        return logits(adapted, query_x), losses
