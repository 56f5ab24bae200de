"""Synthetic few-shot tasks for learner unit tests: fixed random class templates plus noise."""

from __future__ import annotations

import torch

from episodes import EpisodeBatch

TEMPLATES = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(1234))


def template_batch(b: int, n_way: int = 5, n_shot: int = 1, n_query: int = 3, *, seed: int,
                   noise: float = 1.0) -> EpisodeBatch:
    """B tasks over 20 fixed random 1x8x8 class templates; each image is its class template plus
    ``noise`` times standard normal noise. Class-major order, labels 0..n_way-1."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(len(TEMPLATES), generator=g)[:n_way] for _ in range(b)])

    def images(per_class: int) -> torch.Tensor:
        base = TEMPLATES[classes].repeat_interleave(per_class, dim=1)
        return base + noise * torch.randn(base.shape, generator=g)

    support_x, query_x = images(n_shot), images(n_query)
    return EpisodeBatch(support_x=support_x, support_y=torch.arange(n_way).repeat_interleave(n_shot).repeat(b, 1),
                        query_x=query_x, query_y=torch.arange(n_way).repeat_interleave(n_query).repeat(b, 1),
                        classes=classes, episode_ids=torch.arange(b))
