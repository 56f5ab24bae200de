"""PT-MAP: power transform of the features, then MAP class centres with Sinkhorn-balanced query assignments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["PTMAP", "power_transform", "sinkhorn"]


def power_transform(support: torch.Tensor, query: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' preprocessing: ``(x + 1e-6) ** beta``, L2-normalised; then the support and the query set of
    each episode are each centred on their own mean and L2-normalised again.

    The authors' code also applies a QR decomposition (a rotation onto the span of the episode's features, to
    reduce the dimension); distances are unchanged by it, so it is left out.

    Args:
        support: (B, S, D), query: (B, Q, D) non-negative features (e.g. after a ReLU).
    Returns:
        the transformed (B, S, D) and (B, Q, D).
    """
    def centre(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x - x.mean(1, keepdim=True), dim=-1)

    support, query = (F.normalize((x + 1e-6) ** beta, dim=-1) for x in (support, query))
    return centre(support), centre(query)


def sinkhorn(cost: torch.Tensor, row_sums: torch.Tensor, col_sums: torch.Tensor, *, lam: float,
             max_iterations: int = 1000, tol: float = 1e-6) -> torch.Tensor:
    """Entropic optimal transport of every episode by Sinkhorn-Knopp scaling of ``exp(-lam * cost)``.

    Alternately rescales rows then columns (as the authors' code) until no row sum of the episode moved by more
    than ``tol`` in its last iteration, or ``max_iterations``; each episode stops on its own, so its plan does
    not depend on the other episodes of the batch. Column sums are then exact; row sums converge linearly, and
    the authors' stopping rule (with ``tol = 1e-6``) leaves them within about 1e-3 of their targets.

    Args:
        cost: (B, N, M); row_sums: (B, N); col_sums: (B, M), with equal totals per episode.
    Returns:
        (B, N, M) transport plan.
    """
    plan = torch.exp(-lam * cost)
    plan = plan / plan.sum((1, 2), keepdim=True)
    previous = torch.zeros_like(row_sums)
    active = torch.ones(cost.shape[0], dtype=torch.bool, device=cost.device)
    for _ in range(max_iterations):
        rows = plan.sum(2)
        active = active & ((rows - previous).abs().amax(1) > tol)
        if not bool(active.any()):
            break
        previous = rows
        scaled = plan * (row_sums / rows).unsqueeze(2)
        scaled = scaled * (col_sums / scaled.sum(1)).unsqueeze(1)
        plan = torch.where(active.view(-1, 1, 1), scaled, plan)  # a converged episode stops, as if alone
    return plan


class PTMAP(EmbeddingLearner):
    """PT-MAP (Hu, Gripon and Pateux, ICANN 2021, "Leveraging the Feature Distribution in Transfer-based
    Few-Shot Learning").

    Transductive: the query set of each episode is used, unlabelled. A backbone pretrained as a classifier
    (``trainer=pretrain``), frozen, whose features are non-negative (a ReLU output). Features go through
    :func:`power_transform` (``beta = 0.5``); class centres start at the support class means; each of ``steps``
    (20) iterations computes the query assignment as the Sinkhorn transport plan (:func:`sinkhorn`,
    ``lam = 10``) from the queries (each of mass 1) to the classes (each of mass ``Q / n_way``) under the
    squared distances to the centres, estimates each centre as the mean of the support (one-hot) and query
    (soft) samples weighted by the assignment, and moves the centres by ``alpha = 0.2`` towards the estimate.
    The values are the paper's and the authors' code's. Logits are the log of the final plan's query rows.

    Assumes balanced query sets: every class receives ``Q / n_way`` of the query mass; on an imbalanced query
    set the plan spreads queries over the classes evenly regardless (it still runs).

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)`` returning non-negative features.
        beta: power of the transform.
        lam: Sinkhorn regularisation (``exp(-lam * cost)``).
        alpha: step towards each new centre estimate.
        steps: centre updates.
        sinkhorn_iterations, sinkhorn_tol: :func:`sinkhorn`'s limits.
    """

    transductive = True

    def __init__(self, backbone: nn.Module, *, beta: float = 0.5, lam: float = 10.0, alpha: float = 0.2,
                 steps: int = 20, sinkhorn_iterations: int = 1000, sinkhorn_tol: float = 1e-6) -> None:
        super().__init__()
        if not beta > 0 or not lam > 0 or not 0 < alpha <= 1 or not sinkhorn_tol > 0:
            raise ValueError(f"need beta > 0, lam > 0, 0 < alpha <= 1 and sinkhorn_tol > 0, got {beta}, {lam}, "
                             f"{alpha}, {sinkhorn_tol}")
        if not isinstance(steps, int) or steps < 0 or not isinstance(sinkhorn_iterations, int) \
                or sinkhorn_iterations < 1:
            raise ValueError(f"need integers steps >= 0 and sinkhorn_iterations >= 1, got {steps!r} and "
                             f"{sinkhorn_iterations!r}")
        self.backbone = backbone
        self.beta, self.lam, self.alpha, self.steps = beta, lam, alpha, steps
        self.sinkhorn_iterations, self.sinkhorn_tol = sinkhorn_iterations, sinkhorn_tol

    def assign(self, centres: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, n_way, D) centres, (B, Q, D) queries -> (B, Q, n_way) transport plan (rows sum to 1)."""
        b, q, n_way = query.shape[0], query.shape[1], centres.shape[1]
        cost = torch.cdist(query, centres, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        return sinkhorn(cost, query.new_ones(b, q), query.new_full((b, n_way), q / n_way), lam=self.lam,
                        max_iterations=self.sinkhorn_iterations, tol=self.sinkhorn_tol)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Power transform, then ``steps`` MAP centre updates for every episode at once.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits: log of the final transport plan's rows (log-probabilities).
        Raises:
            ValueError: on negative features (the power transform needs a ReLU-like output).
        """
        if bool((support < 0).any()) or bool((query < 0).any()):
            raise ValueError("PT-MAP's power transform needs non-negative features (a backbone ending in a ReLU, "
                             "as Conv4 and ResNet here); this backbone returned negative values")
        support, query = power_transform(support, query, self.beta)
        onehot = F.one_hot(support_y, n_way).to(support.dtype)  # (B, S, n_way)
        samples = torch.cat([support, query], dim=1)
        centres = prototypes(support, support_y, n_way)
        for _ in range(self.steps):
            mask = torch.cat([onehot, self.assign(centres, query)], dim=1)  # (B, S + Q, n_way)
            estimate = mask.transpose(1, 2) @ samples / mask.sum(1).unsqueeze(-1)
            centres = centres + self.alpha * (estimate - centres)
        return torch.log(self.assign(centres, query).clamp_min(1e-30))
