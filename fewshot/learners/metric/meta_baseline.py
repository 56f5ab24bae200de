"""Meta-Baseline: a pretrained classifier's backbone meta-trained on scaled cosine nearest-centroid episodes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import MetricLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["MetaBaseline"]


class MetaBaseline(MetricLearner):
    """Meta-Baseline (Chen, Liu, Xu, Darrell and Wang, ICCV 2021, "Meta-Baseline: Exploring Simple
    Meta-Learning for Few-Shot Learning").

    Logits are ``scale * cos(query, centroid)``: the cosine similarity between each query embedding and each
    class centroid (the mean support embedding, not normalised before averaging), times a scalar ``scale``
    that is learned with the backbone (initial value 10, as the paper). Trained in two stages with
    ``trainer=pretrain_episodic``: the backbone as a classifier over all base classes ("Classifier-Baseline"),
    then the whole learner on episodes with the query cross-entropy. All tasks of a batch are scored in one
    tensor computation.

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        scale: initial value of the logit scale (positive).
        learn_scale: learn the scale (the paper); ``False`` keeps it fixed.
    """

    def __init__(self, backbone: nn.Module, *, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        if not isinstance(learn_scale, bool):
            raise TypeError(f"learn_scale must be true or false, got {learn_scale!r}")
        self.backbone = backbone
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Score query features against the support centroids.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``scale * cos(query, centroid)``.
        """
        centroids = prototypes(support, support_y, n_way)  # (B, n_way, D)
        return self.scale * (F.normalize(query, dim=-1) @ F.normalize(centroids, dim=-1).transpose(1, 2))
