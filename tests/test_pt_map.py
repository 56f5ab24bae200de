"""PT-MAP: the transport plan's marginals, the power transform against a hand computation, the settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.finetune.pt_map import PTMAP, power_transform, sinkhorn


@pytest.mark.parametrize("per_class", [(15, 15, 15, 15, 15), (1, 5, 2, 7, 3)])
def test_the_transport_plan_has_uniform_queries_and_balanced_classes(per_class: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    q, n_way = sum(per_class), len(per_class)
    centres = F.normalize(torch.randn(3, n_way, 8, generator=g), dim=-1)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(per_class)])
    query = F.normalize(centres[:, labels] + 0.3 * torch.randn(3, q, 8, generator=g), dim=-1)
    plan = PTMAP(nn.Identity()).assign(centres, query)  # the paper's settings, float32
    assert plan.shape == (3, q, n_way) and bool((plan >= 0).all())
    # Each query has mass 1 (up to the authors' stopping rule), each class q / n_way (exact after a column step).
    torch.testing.assert_close(plan.sum(2), torch.ones(3, q), rtol=0, atol=2e-3)
    torch.testing.assert_close(plan.sum(1), torch.full((3, n_way), q / n_way), rtol=0, atol=1e-5)
    tight = PTMAP(nn.Identity(), sinkhorn_iterations=100_000, sinkhorn_tol=1e-13).assign(centres.double(),
                                                                                          query.double())
    torch.testing.assert_close(tight.sum(2), torch.ones(3, q, dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(tight.sum(1), torch.full((3, n_way), q / n_way, dtype=torch.float64))


def test_sinkhorn_stops_each_episode_on_its_own() -> None:
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(4, 6, 3, generator=g, dtype=torch.float64)
    rows, cols = torch.ones(4, 6, dtype=torch.float64), torch.full((4, 3), 2.0, dtype=torch.float64)
    together = sinkhorn(cost, rows, cols, lam=10.0)
    alone = torch.cat([sinkhorn(cost[i:i + 1], rows[i:i + 1], cols[i:i + 1], lam=10.0) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-14)
    torch.testing.assert_close(together.sum(1), cols)


def test_power_transform_equals_a_hand_computation() -> None:
    g = torch.Generator().manual_seed(2)
    support, query = torch.rand(1, 3, 4, generator=g, dtype=torch.float64), torch.rand(1, 5, 4, generator=g,
                                                                                      dtype=torch.float64)
    out_s, out_q = power_transform(support, query, 0.5)
    for x, out in ((support[0], out_s[0]), (query[0], out_q[0])):
        powered = [(row + 1e-6).sqrt() / (row + 1e-6).sqrt().norm() for row in x]
        mean = sum(powered) / len(powered)
        for row, got in zip(powered, out, strict=True):
            torch.testing.assert_close(got, (row - mean) / (row - mean).norm())


def test_negative_features_are_refused() -> None:
    support, query = torch.rand(1, 5, 4) - 0.5, torch.rand(1, 10, 4)
    with pytest.raises(ValueError, match="non-negative"):
        PTMAP(nn.Identity()).predict_features(support, torch.arange(5)[None], query, 5)


def test_logits_are_log_probabilities() -> None:
    g = torch.Generator().manual_seed(3)
    support, query = torch.rand(2, 10, 6, generator=g), torch.rand(2, 20, 6, generator=g)
    logits = PTMAP(nn.Identity()).predict_features(support, torch.arange(5).repeat_interleave(2).repeat(2, 1),
                                                   query, 5)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(2, 20), rtol=0, atol=2e-3)


@pytest.mark.parametrize(("kwargs", "match"), [({"beta": 0.0}, "beta"), ({"alpha": 1.5}, "alpha"),
                                               ({"lam": -1.0}, "lam"), ({"steps": -1}, "steps"),
                                               ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
                                               ({"sinkhorn_tol": 0.0}, "sinkhorn_tol")])
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PTMAP(nn.Identity(), **kwargs)
