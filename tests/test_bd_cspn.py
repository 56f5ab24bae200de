"""BD-CSPN: rectified prototypes against a hand computation, the scoring, the settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.finetune.bd_cspn import BDCSPN, rectify_prototypes


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def hand_rectified(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int, z: int,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One episode, written out: shift, pseudo-label, top-z by confidence per class, softmax-weighted mean."""
    shifted = query + (support.mean(0) - query.mean(0))
    basic = [support[support_y == c].mean(0) for c in range(n_way)]
    members: list[list[torch.Tensor]] = [[x for x, y in zip(support, support_y, strict=True) if y == c]
                                         for c in range(n_way)]
    candidates: list[list[tuple[float, int]]] = [[] for _ in range(n_way)]
    for i, x in enumerate(shifted):
        sims = [cos(x, p) for p in basic]
        label = max(range(n_way), key=lambda c: sims[c])
        confidence = math.exp(eps * sims[label]) / sum(math.exp(eps * s) for s in sims)
        candidates[label].append((confidence, i))
    for c in range(n_way):
        for _, i in sorted(candidates[c], reverse=True)[:z]:
            members[c].append(shifted[i])
    protos = []
    for c in range(n_way):
        w = [math.exp(eps * cos(x, basic[c])) for x in members[c]]
        protos.append(sum(wi / sum(w) * x for wi, x in zip(w, members[c], strict=True)))
    return torch.stack(protos), shifted


@pytest.mark.parametrize("z", [0, 1, 2, 8])
def test_rectified_prototypes_equal_a_hand_computation(z: int) -> None:
    g = torch.Generator().manual_seed(0)
    support = F.normalize(torch.randn(2, 6, 5, generator=g, dtype=torch.float64), dim=-1)
    query = F.normalize(torch.randn(2, 7, 5, generator=g, dtype=torch.float64), dim=-1)  # unequal pseudo-classes
    support_y = torch.tensor([[0, 0, 1, 1, 2, 2], [2, 1, 0, 2, 1, 0]])
    protos, shifted = rectify_prototypes(support, support_y, query, 3, top_z=z, epsilon=10.0)
    for b in range(2):
        expected, expected_shift = hand_rectified(support[b], support_y[b], query[b], 3, z, 10.0)
        torch.testing.assert_close(protos[b], expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(shifted[b], expected_shift, rtol=1e-10, atol=1e-10)


def test_logits_are_scaled_cosines_to_the_rectified_prototypes() -> None:
    g = torch.Generator().manual_seed(1)
    support, query = torch.rand(2, 6, 5, generator=g), torch.rand(2, 9, 5, generator=g)
    support_y = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    logits = BDCSPN(nn.Identity(), top_z=2, epsilon=4.0).predict_features(support, support_y, query, 3)
    protos, shifted = rectify_prototypes(F.normalize(support, dim=-1), support_y, F.normalize(query, dim=-1), 3,
                                         top_z=2, epsilon=4.0)
    torch.testing.assert_close(logits, 4.0 * F.cosine_similarity(shifted[:, :, None], protos[:, None], dim=-1))


@pytest.mark.parametrize(("kwargs", "match"), [({"top_z": -1}, "top_z"), ({"top_z": 1.5}, "top_z"),
                                               ({"epsilon": 0.0}, "epsilon")])
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BDCSPN(nn.Identity(), **kwargs)
