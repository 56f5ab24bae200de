"""SimpleShot: nearest centroid on transformed features of a pretrained backbone."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import FewShotDataset
from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["SimpleShot"]

FeatureTransform = Literal["UN", "L2N", "CL2N"]


class SimpleShot(EmbeddingLearner):
    """SimpleShot (Wang, Chao, Weinberger and van der Maaten 2019, "SimpleShot: Revisiting Nearest-Neighbor
    Classification for Few-Shot Learning", arXiv:1911.04623).

    A backbone trained as a classifier on the base classes (``trainer=pretrain``), frozen; each feature is
    transformed, each class is represented by the mean transformed support feature (nearest centroid; nearest
    neighbour in 1-shot), and a query is scored by minus its Euclidean distance to each centroid. Transforms:

    - ``"UN"``: none (unnormalised features);
    - ``"L2N"``: ``x / ||x||``;
    - ``"CL2N"``: ``(x - m) / ||x - m||``, with ``m`` the mean feature of the base (training) classes.

    ``m`` is the buffer ``base_mean``, saved in checkpoints; :meth:`fit_base_classes` computes it (the supervised
    trainer calls it after pretraining, or after loading ``backbone_weights``), and ``base_count`` holds how many
    images it averages (0: never fitted). Like the authors' code, the logits are ``-||q - c||`` (not squared).

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        feature_transform: ``"UN"``, ``"L2N"`` or ``"CL2N"`` (the paper's best).
        chunk_size: images per backbone call in :meth:`fit_base_classes`.
    """

    def __init__(self, backbone: nn.Module, *, feature_transform: FeatureTransform = "CL2N",
                 chunk_size: int = 512) -> None:
        super().__init__()
        dim = getattr(backbone, "feature_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise TypeError("SimpleShot needs a backbone with a positive integer `feature_dim` (its output size), "
                            "e.g. one built with fewshot.backbones.create_backbone")
        if feature_transform not in ("UN", "L2N", "CL2N"):
            raise ValueError(f"unknown feature_transform {feature_transform!r}; use 'UN', 'L2N' or 'CL2N'")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.backbone = backbone
        self.feature_transform = feature_transform
        self.chunk_size = chunk_size
        self.register_buffer("base_mean", torch.zeros(dim))
        self.register_buffer("base_count", torch.zeros((), dtype=torch.int64))

    def fit_base_classes(self, dataset: FewShotDataset) -> None:
        """Set ``base_mean`` to the mean backbone feature of every image of ``dataset`` (the training classes),
        in eval mode, ``chunk_size`` images per call; ``base_count`` to the number of images."""
        self.base_mean.copy_(self.mean_embedding(dataset, chunk=self.chunk_size))
        self.base_count.fill_(len(dataset))

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the feature transform to (..., D) features.

        Raises:
            ValueError: ``"CL2N"`` before :meth:`fit_base_classes` has set the base-class mean.
        """
        if self.feature_transform == "CL2N":
            if int(self.base_count) == 0:
                raise ValueError(
                    "SimpleShot(feature_transform='CL2N') has no base-class mean: it was never fitted. Train it with "
                    "trainer=pretrain (which calls fit_base_classes after pretraining or after loading "
                    "backbone_weights), or call learner.fit_base_classes(<training classes>) before predicting")
            features = features - self.base_mean
        if self.feature_transform in ("L2N", "CL2N"):
            features = F.normalize(features, dim=-1)
        return features

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
