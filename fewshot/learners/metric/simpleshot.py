"""SimpleShot: nearest centroid on transformed features of a pretrained backbone."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.learners.feature_transform import FeatureTransform, TransformedFeatures
from fewshot.learners.metric.protonet import prototypes

__all__ = ["SimpleShot"]


class SimpleShot(TransformedFeatures):
    """SimpleShot (Wang, Chao, Weinberger and van der Maaten 2019, "SimpleShot: Revisiting Nearest-Neighbor
    Classification for Few-Shot Learning", arXiv:1911.04623).

    A backbone trained as a classifier on the base classes (``trainer=pretrain``), frozen; each feature is
    transformed (:class:`~fewshot.learners.feature_transform.TransformedFeatures`: UN, L2N or CL2N, the base-class
    mean fitted by :meth:`fit_base_classes`), each class is represented by the mean transformed support feature
    (nearest centroid; nearest neighbour in 1-shot), and a query is scored by minus its Euclidean distance to each
    centroid. Like the authors' code, the logits are ``-||q - c||`` (not squared).

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        feature_transform: ``"UN"``, ``"L2N"`` or ``"CL2N"`` (the paper's best).
        chunk_size: images per backbone call in :meth:`fit_base_classes`.
    """

    def __init__(self, backbone: nn.Module, *, feature_transform: FeatureTransform = "CL2N",
                 chunk_size: int = 512) -> None:
        super().__init__()
        self.init_transform(backbone, feature_transform=feature_transform, chunk_size=chunk_size)
        self.backbone = backbone

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Nearest centroid on transformed features.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``-||transform(query) - centroid||``.
        """
        centroids = prototypes(self.transform(support), support_y, n_way)  # (B, n_way, D)
        # Exact differences (no matrix-product shortcut): a query's logits do not depend on the other queries.
        return -torch.cdist(self.transform(query), centroids, compute_mode="donot_use_mm_for_euclid_dist")
