"""BD-CSPN: prototype rectification with the unlabelled query set, on frozen pretrained features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["BDCSPN", "rectify_prototypes"]


def _cosine(x: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, n_way, D) -> (B, N, n_way) cosine similarities."""
    return F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)


def rectify_prototypes(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int, *,
                       top_z: int, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-CSPN's two rectifications, for all episodes at once.

    1. Cross-class bias: every query is shifted by ``mean(support) - mean(query)`` (of its episode; the support
       mean is the mean of the class means, which is ``mean(support)`` when every class has as many shots, and
       weighs the classes equally in variable-shot episodes).
    2. Intra-class bias: the shifted queries are pseudo-labelled by the nearest basic prototype (support class
       mean, cosine similarity); the ``top_z`` most confident queries of each class (largest softmax probability
       of ``epsilon * cos``; fewer if fewer were given that class) join its support samples, and the rectified
       prototype is their weighted mean, with weights ``softmax(epsilon * cos(x, P_n))`` over that set.

    Args:
        support: (B, S, D) features; support_y: (B, S) labels in [0, n_way), every class present;
        query: (B, Q, D) features (the same normalisation as ``support``).
    Returns:
        (B, n_way, D) rectified prototypes and (B, Q, D) shifted queries.
    """
    basic = prototypes(support, support_y, n_way)  # (B, n_way, D)
    query = query + (basic.mean(1, keepdim=True) - query.mean(1, keepdim=True))
    cos_s, cos_q = _cosine(support, basic), _cosine(query, basic)  # (B, S, n_way), (B, Q, n_way)
    confidence = (epsilon * cos_q).softmax(-1)
    pseudo = F.one_hot(cos_q.argmax(-1), n_way).bool()  # (B, Q, n_way)
    ranked = confidence.masked_fill(~pseudo, -1.0)  # queries of other classes rank last
    top = ranked.topk(min(top_z, query.shape[1]), dim=1)  # over queries, per class: (B, z, n_way)
    chosen = torch.zeros_like(pseudo).scatter_(1, top.indices, top.values >= 0)
    members = torch.cat([F.one_hot(support_y, n_way).bool(), chosen], dim=1)  # (B, S + Q, n_way)
    scores = (epsilon * torch.cat([cos_s, cos_q], dim=1)).masked_fill(~members, float("-inf"))
    weights = scores.softmax(1)  # over the members of each class
    return weights.transpose(1, 2) @ torch.cat([support, query], dim=1), query


class BDCSPN(EmbeddingLearner):
    """BD-CSPN (Liu, Song and Qin, ECCV 2020, "Prototype Rectification for Few-Shot Learning").

    Transductive: the query set of each episode is used, unlabelled. A backbone pretrained as a classifier
    (``trainer=pretrain``), frozen; features are L2-normalised, prototypes rectified by
    :func:`rectify_prototypes` (cross-class shift of the queries, then intra-class rectification with the
    top-Z pseudo-labelled queries), and each shifted query is scored by ``epsilon * cos`` with the rectified
    prototypes. ``epsilon = 10`` as the paper. ``top_z = 8`` is our reading: the paper's value of Z could not
    be checked here.

    Assumes balanced query sets: the shift ``mean(support) - mean(query)`` matches two class-balanced means, so
    it is biased when the query classes are imbalanced (it still runs), and top-Z takes up to Z per class.

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        top_z: pseudo-labelled queries added to each class (at most).
        epsilon: scale of the cosine similarities (weights and logits).
    """

    transductive = True

    def __init__(self, backbone: nn.Module, *, top_z: int = 8, epsilon: float = 10.0) -> None:
        super().__init__()
        if not isinstance(top_z, int) or top_z < 0:
            raise ValueError(f"top_z must be an integer >= 0 (0: support samples only), got {top_z!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        self.backbone = backbone
        self.top_z, self.epsilon = top_z, epsilon

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Rectify the prototypes of every episode and score its shifted queries.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``epsilon * cos(shifted query, rectified prototype)``.
        """
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
        protos, shifted = rectify_prototypes(support, support_y, query, n_way, top_z=self.top_z,
                                             epsilon=self.epsilon)
        return self.epsilon * _cosine(shifted, protos)
