"""Relation networks: a learned module scores each (class feature map, query feature map) pair in [0, 1]."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.backbones.base import feature_map_shape_for
from fewshot.learners.base import EmbeddingLearner, MetaLearner

__all__ = ["RelationModule", "RelationNet"]

#: Query-class pairs per relation-module call outside training (eval-mode batch norm makes the chunks exact).
EVAL_PAIRS = 4096


class RelationModule(nn.Module):
    """Sung et al.'s relation module g: two blocks of conv3x3(hidden, padding 1) -> BatchNorm -> ReLU ->
    max-pool 2, then fc(hidden*h'*w' -> fc_hidden) -> ReLU -> fc(fc_hidden -> 1) -> sigmoid, on the
    channel-wise concatenation [class map, query map].

    A block max-pools only where its input is at least 2x2 (the paper's 64x7x7 Omniglot maps: 7 -> 3 -> 1;
    64x5x5 Mini-ImageNet Conv4 maps: 5 -> 2 -> 1; a 1x1 map is not pooled), and pools before its ReLU (the
    same function, ReLU being monotone, on a smaller tensor). The first convolution is linear, so it is
    applied to the class maps and to the query maps separately and the two summed for each pair (zero
    padding of a concatenation is the concatenation of the paddings): the same numbers as on the
    concatenated pairs, at the cost of (classes + queries) convolutions instead of classes x queries. In
    eval mode the first batch norm, an affine map, is folded into those two terms as well.

    Args:
        map_shape: (C, h, w) of one feature map.
        hidden: channels of the two convolutions.
        fc_hidden: width of the hidden fully connected layer.
    """

    def __init__(self, map_shape: tuple[int, int, int], *, hidden: int, fc_hidden: int) -> None:
        super().__init__()
        channels, height, width = map_shape
        self.conv1 = nn.Conv2d(2 * channels, hidden, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(hidden)
        layers: list[nn.Module] = []
        for block in range(2):
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            layers.append(nn.ReLU())
            if block == 0:
                layers += [nn.Conv2d(hidden, hidden, kernel_size=3, padding=1), nn.BatchNorm2d(hidden)]
        self.rest = nn.Sequential(*layers, nn.Flatten(), nn.Linear(hidden * height * width, fc_hidden), nn.ReLU(),
                                  nn.Linear(fc_hidden, 1), nn.Sigmoid())

    def forward(self, classes: torch.Tensor, queries: torch.Tensor, max_pairs: int | None = None) -> torch.Tensor:
        """Relation score of every (class, query) pair of each task.

        Args:
            classes: (B, N, C, h, w) class feature maps; queries: (B, Q, C, h, w) query feature maps.
            max_pairs: pairs per pass through the module in eval mode (None: all at once); in training
                mode all pairs go at once, so that batch norm uses the statistics of all of them.
        Returns:
            (B, Q, N) scores in [0, 1].
        """
        b, n, c = classes.shape[:3]
        q = queries.shape[1]
        weight, bias = self.conv1.weight, self.conv1.bias
        per_class = F.conv2d(classes.flatten(0, 1), weight[:, :c], bias, padding=1).unflatten(0, (b, n))
        per_query = F.conv2d(queries.flatten(0, 1), weight[:, c:], padding=1).unflatten(0, (b, q))
        if self.training or max_pairs is None:
            pairs = (per_class[:, None] + per_query[:, :, None]).flatten(0, 2)  # (B*Q*N, hidden, h, w)
            return self.rest(self.norm1(pairs)).view(b, q, n)
        norm = self.norm1
        assert norm.running_mean is not None and norm.running_var is not None
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps))[:, None, None]
        per_class = per_class * scale + (norm.bias - norm.running_mean * scale[:, 0, 0])[:, None, None]
        per_query = per_query * scale
        step = max(1, max_pairs // n)
        rows = [self.rest((per_class[t, None] + per_query[t, i:i + step, None]).flatten(0, 1)).view(-1, n)
                for t in range(b) for i in range(0, q, step)]
        return torch.cat(rows).view(b, q, n)


class RelationNet(EmbeddingLearner, MetaLearner):
    """Relation Network (Sung, Yang, Zhang, Xiang, Torr and Hospedales, CVPR 2018, "Learning to Compare:
    Relation Network for Few-Shot Learning").

    The backbone's feature maps (``forward_features``, not pooled vectors) of a class's support images are
    summed (the paper's K-shot class map; ``shot_pooling="mean"`` averages them instead, which keeps the
    class map's scale when a model is tested with another shot than it was trained on), concatenated with a
    query's map and scored by :class:`RelationModule`. Training regresses the scores onto the one-hot query
    labels with mean squared error, as in the paper. :meth:`predict_features` returns the relation scores
    themselves, in [0, 1] (not log-probabilities): the argmax is the prediction.

    The learner's features (:meth:`embed`) are the flattened maps, (N, C*h*w), so the harness can embed each
    test image once. Queries are scored independently (inductive) outside training.

    Args:
        backbone: a :class:`~fewshot.backbones.Backbone` with spatial feature maps, e.g. ``conv4_maps``
            (Conv4 without the last two max-pools, the paper's 64x7x7 Omniglot maps).
        hidden: channels of the relation module's convolutions (the paper: 64).
        fc_hidden: width of its hidden fully connected layer (the paper: 8).
        shot_pooling: ``"sum"`` (the paper) or ``"mean"`` of a class's support maps.
    Raises:
        NoFeatureMapsError: the backbone has no spatial maps (a ValueError).
    """

    def __init__(self, backbone: nn.Module, *, hidden: int = 64, fc_hidden: int = 8,
                 shot_pooling: Literal["sum", "mean"] = "sum") -> None:
        super().__init__()
        for name, value in (("hidden", hidden), ("fc_hidden", fc_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if shot_pooling not in ("sum", "mean"):
            raise ValueError(f"unknown shot_pooling {shot_pooling!r}; use 'sum' (the paper) or 'mean'")
        self.map_shape: tuple[int, int, int] = feature_map_shape_for(backbone, "RelationNet")
        self.backbone = backbone
        self.shot_pooling = shot_pooling
        self.relation = RelationModule(self.map_shape, hidden=hidden, fc_hidden=fc_hidden)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) images -> (N, C*h*w) flattened feature maps."""
        return self.backbone.forward_features(x).flatten(1)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Relation scores of every query against every class of its task.

        Args:
            support: (B, S, C*h*w) flattened support maps; support_y: (B, S) labels in [0, n_way);
            query: (B, Q, C*h*w) flattened query maps.
        Returns:
            (B, Q, n_way) relation scores in [0, 1]. Outside training mode they are computed without autograd,
            :data:`EVAL_PAIRS` pairs at a time.
        """
        if support.shape[-1] != self.map_shape[0] * self.map_shape[1] * self.map_shape[2]:
            raise ValueError(f"RelationNet was built for {self.map_shape} feature maps, got features of size "
                             f"{support.shape[-1]}; feed images of the size the backbone was built for")
        onehot = F.one_hot(support_y, n_way).to(support.dtype).transpose(1, 2)  # (B, n_way, S)
        if self.shot_pooling == "mean":
            onehot = onehot / onehot.sum(-1, keepdim=True).clamp_min(1)
        classes = (onehot @ support).unflatten(-1, self.map_shape)  # (B, n_way, C, h, w)
        if self.training:
            return self.relation(classes, query.unflatten(-1, self.map_shape))
        with torch.no_grad():  # inference: a graph would keep every pair's activations (GBs per eval batch)
            return self.relation(classes, query.unflatten(-1, self.map_shape), max_pairs=EVAL_PAIRS)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared error between the relation scores and the one-hot query labels over all tasks; every
        image of the batch goes through the backbone in one call.

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) relation scores).
        """
        support, query = self.embed_episodes(batch)
        scores = self.predict_features(support, batch.support_y, query, batch.n_way)
        return F.mse_loss(scores, F.one_hot(batch.query_y, batch.n_way).to(scores.dtype)), scores
