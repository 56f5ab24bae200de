"""Prototypical networks: classify a query by its distance to the mean embedding of each class."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import MetricLearner

__all__ = ["ProtoNet", "prototypes"]


def prototypes(support: torch.Tensor, support_y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means of support features, for all tasks at once.

    Args:
        support: (..., S, D) features, e.g. (B, S, D); support_y: (..., S) int64 labels in [0, n_way).
    Returns:
        (..., n_way, D) mean feature of each class (zero for a class with no support example).
    """
    onehot = F.one_hot(support_y, n_way).to(support.dtype)  # (..., S, n_way)
    counts = onehot.sum(-2).clamp_min(1).unsqueeze(-1)  # (..., n_way, 1)
    return onehot.transpose(-1, -2) @ support / counts


class ProtoNet(MetricLearner):
    """Prototypical Networks (Snell, Swersky and Zemel, NeurIPS 2017).

    Logits are ``-distance / temperature`` between each query embedding and each class prototype (the
    mean support embedding): squared Euclidean distance, or cosine distance ``1 - cos`` (use a small
    temperature, e.g. 0.1, with cosine: its range is only [0, 2]). All tasks of a batch are scored in one
    tensor computation.

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        distance: ``"euclidean"`` or ``"cosine"``.
        temperature: positive divisor of the distances.
    """

    def __init__(self, backbone: nn.Module, *, distance: Literal["euclidean", "cosine"] = "euclidean",
                 temperature: float = 1.0) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"unknown distance {distance!r}; use 'euclidean' or 'cosine'")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.backbone = backbone
        self.distance = distance
        self.temperature = temperature

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Score query features against support prototypes.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``-distance / temperature``.
        """
        protos = prototypes(support, support_y, n_way)
        if self.distance == "cosine":
            dist = 1.0 - F.normalize(query, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
        else:
            dist = ((query * query).sum(-1, keepdim=True) - 2.0 * query @ protos.transpose(1, 2)
                    + (protos * protos).sum(-1).unsqueeze(1)).clamp_min(0.0)
        return -dist / self.temperature
