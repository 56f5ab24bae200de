"""TIM: transductive information maximisation on the frozen features of a pretrained backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["TIM", "tim_logits", "tim_terms"]

EPS = 1e-12  # inside the logarithms, as the authors' code


def tim_logits(weights: torch.Tensor, feats: torch.Tensor, temperature: float) -> torch.Tensor:
    """TIM's classifier: ``-temperature / 2 * ||x - w_k||^2``.

    Args:
        weights: (B, n_way, D) class weights; feats: (B, N, D) features.
    Returns:
        (B, N, n_way) logits.
    """
    sq = (feats * feats).sum(-1, keepdim=True) - 2.0 * feats @ weights.transpose(1, 2) \
        + (weights * weights).sum(-1).unsqueeze(1)
    return -0.5 * temperature * sq


def tim_terms(weights: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of TIM's objective, per task.

    Args:
        weights: (B, n_way, D); support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
    Returns:
        (B,) support cross-entropy (mean over the support), (B,) marginal entropy ``H(Y_Q)`` of the mean
        query prediction, (B,) conditional entropy ``H(Y_Q|X_Q)`` (mean over queries of each prediction's
        entropy).
    """
    log_p_s = torch.log(tim_logits(weights, support, temperature).softmax(-1) + EPS)
    ce = -log_p_s.gather(-1, support_y.unsqueeze(-1)).squeeze(-1).mean(-1)
    p_q = tim_logits(weights, query, temperature).softmax(-1)  # (B, Q, n_way)
    conditional = -(p_q * torch.log(p_q + EPS)).sum(-1).mean(-1)
    marginal = p_q.mean(1)  # (B, n_way)
    return ce, -(marginal * torch.log(marginal + EPS)).sum(-1), conditional


class TIM(EmbeddingLearner):
    """TIM-GD (Boudiaf, Ziko, Rony, Dolz, Piantanida and Ben Ayed, NeurIPS 2020, "Transductive Information
    Maximization For Few-Shot Learning").

    Transductive: the query set of each episode is used, unlabelled. A backbone pretrained as a classifier
    (``trainer=pretrain``), frozen; support and query features are L2-normalised and each episode's classifier
    ``-temperature / 2 * ||x - w_k||^2`` starts at the class means of the support features. The weights are then
    optimised with Adam on (per episode)::

        ce_weight * CE(support) - (marginal_weight * H(Y_Q) - conditional_weight * H(Y_Q | X_Q))

    i.e. support cross-entropy minus a weighted mutual information between query features and their labels.
    Defaults are the authors' (code and paper): weights 0.1 / 1.0 / 0.1 (lambda = alpha = 0.1), temperature
    15, 1000 Adam steps at lr 1e-4. Adam is elementwise and the episodes' objectives are independent, so
    all episodes of a batch are optimised as one (B, n_way, D) tensor exactly as if one by one.

    Assumes balanced query sets: the marginal-entropy term ``H(Y_Q)`` pulls the query predictions towards
    equal class proportions, so it biases episodes whose query classes are imbalanced (it still runs).

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        temperature: scale of the classifier's logits.
        ce_weight, marginal_weight, conditional_weight: weights of CE, H(Y_Q) and H(Y_Q|X_Q).
        steps: Adam steps per episode (0: the support class means, i.e. nearest prototype).
        lr: Adam learning rate.
    """

    transductive = True

    def __init__(self, backbone: nn.Module, *, temperature: float = 15.0, ce_weight: float = 0.1,
                 marginal_weight: float = 1.0, conditional_weight: float = 0.1, steps: int = 1000,
                 lr: float = 1e-4) -> None:
        super().__init__()
        if not temperature > 0 or not lr > 0:
            raise ValueError(f"temperature and lr must be positive, got {temperature} and {lr}")
        if not all(w >= 0 for w in (ce_weight, marginal_weight, conditional_weight)):
            raise ValueError("ce_weight, marginal_weight and conditional_weight must be >= 0, got "
                             f"{ce_weight}, {marginal_weight}, {conditional_weight}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        self.backbone = backbone
        self.temperature, self.lr, self.steps = temperature, lr, steps
        self.ce_weight, self.marginal_weight, self.conditional_weight = ce_weight, marginal_weight, conditional_weight

    def objective(self, weights: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor,
                  query: torch.Tensor) -> torch.Tensor:
        """(B,) TIM objective of each episode (shapes as :func:`tim_terms`)."""
        ce, marginal, conditional = tim_terms(weights, support, support_y, query, self.temperature)
        return self.ce_weight * ce - (self.marginal_weight * marginal - self.conditional_weight * conditional)

    def fit(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimise the class weights of every episode on its support and (unlabelled) query features.

        Args:
            support: (B, S, D) L2-normalised features; support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, n_way, D) weights and the (steps, B) objective before each step.
        """
        support, query = support.detach(), query.detach()
        weights = prototypes(support, support_y, n_way).requires_grad_()
        opt = torch.optim.Adam([weights], lr=self.lr)
        trace = []
        with torch.enable_grad():
            for _ in range(self.steps):
                per_task = self.objective(weights, support, support_y, query)
                opt.zero_grad(set_to_none=True)
                per_task.sum().backward()
                opt.step()
                trace.append(per_task.detach())
        empty = support.new_zeros(0, support.shape[0])
        return weights.detach(), torch.stack(trace) if trace else empty

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Run TIM-GD on every episode at once.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits of the optimised classifier.
        """
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
        weights, _ = self.fit(support, support_y, query, n_way)
        logits = tim_logits(weights, query, self.temperature)
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError(f"TIM diverged (non-finite logits) with lr={self.lr}; lower lr")
        return logits
