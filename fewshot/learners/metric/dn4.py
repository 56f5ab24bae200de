"""DN4: an image-to-class measure over local descriptors, by k-nearest-neighbour search in each class."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.base import feature_map_shape_for
from fewshot.learners.base import MetricLearner

__all__ = ["DN4", "image_to_class"]

log = logging.getLogger(__name__)

#: Similarities held at once per task (query descriptors x support descriptors): 2^24 floats = 64 MiB.
SIMILARITY_BUDGET = 1 << 24


def image_to_class(query: torch.Tensor, support: torch.Tensor, support_y: torch.Tensor, n_way: int,
                   k: int) -> torch.Tensor:
    """Li et al.'s image-to-class measure, for all tasks of a batch.

    Every local descriptor of a query finds its ``k`` most cosine-similar descriptors among all descriptors of
    a class's support images; the score of (query, class) is the sum of those similarities over the query's
    descriptors and the k neighbours. ``k`` is capped at the number of descriptors a class has. Classes may have
    different numbers of support images (variable-shot episodes): each class's descriptors are padded to the
    largest class's, and the padding is never a neighbour.

    Args:
        query: (B, Q, L, C) local descriptors (L = h*w per image); support: (B, S, L, C);
        support_y: (B, S) labels in [0, n_way), every class present.
        n_way: classes per task; k: neighbours per query descriptor.
    Returns:
        (B, Q, n_way) scores.
    """
    b, s, length, channels = support.shape
    q = query.shape[1]
    counts = F.one_hot(support_y, n_way).sum(1)  # (B, n_way)
    shots = int(counts.max())
    order = torch.argsort(support_y, dim=1, stable=True)  # class-major
    sorted_y = support_y.gather(1, order)
    slot = torch.arange(s, device=support.device) - (counts.cumsum(1) - counts).gather(1, sorted_y)  # within class
    bank = support.new_zeros(b, n_way, shots, length, channels)
    tasks = torch.arange(b, device=support.device).unsqueeze(-1).expand(b, s)
    grouped = torch.gather(support, 1, order[..., None, None].expand_as(support))
    bank[tasks, sorted_y, slot] = F.normalize(grouped, dim=-1)
    bank = bank.reshape(b, n_way * shots * length, channels)  # (B, N*K*L, C), K the largest class's shots
    real = (torch.arange(shots, device=support.device) < counts.unsqueeze(-1)).repeat_interleave(length, -1)
    descriptors = F.normalize(query, dim=-1)
    k = min(k, shots * length)
    rows = max(1, SIMILARITY_BUDGET // (bank.shape[1] * length))  # queries per chunk
    scores = []
    for task in range(b):
        parts = []
        for start in range(0, q, rows):
            chunk = descriptors[task, start:start + rows]  # (r, L, C)
            sim = (chunk.reshape(-1, channels) @ bank[task].T).view(chunk.shape[0], length, n_way, shots * length)
            top = sim.masked_fill(~real[task], float("-inf")).topk(k, dim=-1).values
            parts.append(top.masked_fill(top == float("-inf"), 0.0).sum((-1, 1)))  # (r, n_way)
        scores.append(torch.cat(parts))
    return torch.stack(scores)


class DN4(MetricLearner):
    """Deep Nearest Neighbor Neural Network, DN4 (Li, Wang, Xu, Huo, Gao and Luo, CVPR 2019, "Revisiting Local
    Descriptor based Image-to-Class Measure for Few-shot Learning").

    The h*w columns of a backbone feature map (``forward_features``) are an image's local descriptors, each
    L2-normalised; a query is scored against each class by :func:`image_to_class` (sum over the query's
    descriptors of the cosine similarities of their ``k_neighbors`` nearest descriptors among the class's
    support descriptors). Training is cross-entropy on these scores, as in the authors' code; the scores are
    the logits. There are no parameters besides the backbone's. Queries are scored independently (inductive).

    The learner's features (:meth:`embed`) are the flattened maps, (N, C*h*w), so the harness can embed each
    test image once.

    Args:
        backbone: a :class:`~fewshot.backbones.Backbone` with spatial feature maps; the paper's Conv-64F is
            ``conv4_maps`` (Conv4 without the last two max-pools: 21x21 maps at 84x84, 7x7 at 28x28).
        k_neighbors: k, nearest support descriptors per query descriptor (the paper: 3).
    Raises:
        NoFeatureMapsError: the backbone has no spatial maps (a ValueError).
    """

    def __init__(self, backbone: nn.Module, *, k_neighbors: int = 3) -> None:
        super().__init__()
        if isinstance(k_neighbors, bool) or not isinstance(k_neighbors, int) or k_neighbors < 1:
            raise ValueError(f"k_neighbors must be a positive integer, got {k_neighbors!r}")
        self.map_shape: tuple[int, int, int] = feature_map_shape_for(backbone, "DN4")
        self.backbone = backbone
        self.k_neighbors = k_neighbors
        if self.map_shape[1] * self.map_shape[2] < k_neighbors:
            log.warning("DN4: %dx%d feature maps give a 1-shot class fewer than k_neighbors=%d descriptors; k is "
                        "capped at a class's descriptor count (use a backbone with larger maps, e.g. conv4_maps)",
                        self.map_shape[1], self.map_shape[2], k_neighbors)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) images -> (N, C*h*w) flattened feature maps."""
        return self.backbone.forward_features(x).flatten(1)

    def descriptors(self, features: torch.Tensor) -> torch.Tensor:
        """(..., C*h*w) flattened maps -> (..., h*w, C) local descriptors (not yet normalised)."""
        channels, height, width = self.map_shape
        if features.shape[-1] != channels * height * width:
            raise ValueError(f"DN4 was built for {self.map_shape} feature maps, got features of size "
                             f"{features.shape[-1]}; feed images of the size the backbone was built for")
        return features.unflatten(-1, (channels, height * width)).transpose(-1, -2)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Image-to-class scores of every query.

        Args:
            support: (B, S, C*h*w) flattened support maps; support_y: (B, S) labels in [0, n_way);
            query: (B, Q, C*h*w).
        Returns:
            (B, Q, n_way) scores (logits), each a sum of h*w*k cosine similarities.
        """
        return image_to_class(self.descriptors(query), self.descriptors(support), support_y, n_way,
                              self.k_neighbors)
