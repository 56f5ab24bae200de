"""Shared fixtures of the transductive-learner tests: a non-negative feature backbone and hand-built episodes."""

from __future__ import annotations

import torch
from synthetic import TEMPLATES
from torch import nn

from episodes import EpisodeBatch


class PosNeg(nn.Module):
    """Flatten, then ``[relu(x), relu(-x)]``: a fixed, non-negative (PT-MAP's power transform needs it) feature of
    1x8x8 images that keeps all their information; feature_dim = 128. Holds one parameter and one buffer so that
    "predict changes nothing" has something to check."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.scale * x.flatten(1)
        return torch.cat([flat.relu(), (-flat).relu()], dim=1)


def imbalanced_batch(b: int = 2, *, n_way: int = 5, n_shot: int = 2, per_class: tuple[int, ...] = (1, 5, 2, 7, 3),
                     seed: int = 0) -> EpisodeBatch:
    """B tasks over the synthetic templates with an unequal number of queries per class (``per_class``), built
    by hand (the sampler draws balanced query sets). Class-major order."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(len(TEMPLATES), generator=g)[:n_way] for _ in range(b)])
    query_y = torch.cat([torch.full((k,), c) for c, k in enumerate(per_class)]).repeat(b, 1)
    support_y = torch.arange(n_way).repeat_interleave(n_shot).repeat(b, 1)

    def images(labels: torch.Tensor) -> torch.Tensor:
        base = TEMPLATES[classes.gather(1, labels)]
        return base + 0.5 * torch.randn(base.shape, generator=g)

    return EpisodeBatch(support_x=images(support_y), support_y=support_y, query_x=images(query_y), query_y=query_y,
                        classes=classes, episode_ids=torch.arange(b))
