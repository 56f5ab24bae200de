"""SimpleShot's feature transforms (UN, L2N, CL2N), written once for every learner that scores transformed features
of a frozen backbone (SimpleShot, LaplacianShot)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import FewShotDataset
from fewshot.learners.base import EmbeddingLearner

__all__ = ["FeatureTransform", "TransformedFeatures"]

FeatureTransform = Literal["UN", "L2N", "CL2N"]


class TransformedFeatures(EmbeddingLearner):
    """An embedding learner whose features are transformed before scoring (Wang et al. 2019, SimpleShot):

    - ``"UN"``: none (unnormalised features);
    - ``"L2N"``: ``x / ||x||``;
    - ``"CL2N"``: ``(x - m) / ||x - m||``, with ``m`` the mean feature of the base (training) classes.

    ``m`` is the buffer ``base_mean``, saved in checkpoints; :meth:`fit_base_classes` computes it (the supervised
    trainer calls it after pretraining, or after loading ``backbone_weights``), and ``base_count`` holds how many
    images it averages (0: never fitted). Subclasses call :meth:`init_transform` in their constructor.
    """

    feature_transform: FeatureTransform
    chunk_size: int

    def init_transform(self, backbone: nn.Module, *, feature_transform: FeatureTransform, chunk_size: int,
                       allowed: Collection[str] = ("UN", "L2N", "CL2N")) -> None:
        """Validate the transform settings and register the base-mean buffers for ``backbone``'s ``feature_dim``.

        Args:
            backbone: module with a positive integer ``feature_dim``.
            feature_transform: one of ``allowed``.
            chunk_size: images per backbone call in :meth:`fit_base_classes`.
            allowed: the transforms this method accepts.
        """
        name = type(self).__name__
        dim = getattr(backbone, "feature_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise TypeError(f"{name} needs a backbone with a positive integer `feature_dim` (its output size), e.g. "
                            "one built with fewshot.backbones.create_backbone")
        if feature_transform not in allowed:
            raise ValueError(f"unknown feature_transform {feature_transform!r}; use one of {sorted(allowed)}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.feature_transform, self.chunk_size = feature_transform, chunk_size
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
                    f"{type(self).__name__}(feature_transform='CL2N') has no base-class mean: it was never fitted. "
                    "Train it with trainer=pretrain (which calls fit_base_classes after pretraining or after loading "
                    "backbone_weights), call learner.fit_base_classes(<training classes>) before predicting, or use "
                    "feature_transform='L2N'")
            features = features - self.base_mean
        if self.feature_transform in ("L2N", "CL2N"):
            features = F.normalize(features, dim=-1)
        return features
