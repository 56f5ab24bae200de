"""TIM: its objective's terms against a hand computation, the objective decreasing, the settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.finetune.tim import TIM, tim_logits, tim_terms


def tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    support = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    query = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 1, 0, 0]])
    return weights, support, support_y, query


def test_terms_equal_a_hand_computation() -> None:
    weights, support, support_y, query = tiny()
    t = 15.0
    ce, marginal, conditional = tim_terms(weights, support, support_y, query, t)
    for b in range(2):
        def probs(x: torch.Tensor, b: int = b) -> list[list[float]]:
            rows = []
            for row in x[b]:
                scores = [math.exp(-t / 2 * float(((row - w) ** 2).sum())) for w in weights[b]]
                rows.append([s / sum(scores) for s in scores])
            return rows

        p_s, p_q = probs(support), probs(query)
        expected_ce = -sum(math.log(p[int(y)] + 1e-12) for p, y in zip(p_s, support_y[b], strict=True)) / 5
        expected_cond = -sum(sum(v * math.log(v + 1e-12) for v in p) for p in p_q) / 6
        mean = [sum(p[k] for p in p_q) / 6 for k in range(3)]
        expected_marg = -sum(m * math.log(m + 1e-12) for m in mean)
        assert ce[b].item() == pytest.approx(expected_ce, rel=1e-9, abs=1e-9)
        assert conditional[b].item() == pytest.approx(expected_cond, rel=1e-9, abs=1e-9)
        assert marginal[b].item() == pytest.approx(expected_marg, rel=1e-9, abs=1e-9)
    tim = TIM(nn.Identity(), temperature=t, ce_weight=0.3, marginal_weight=0.7, conditional_weight=0.2)
    torch.testing.assert_close(tim.objective(weights, support, support_y, query),
                               0.3 * ce - (0.7 * marginal - 0.2 * conditional))


def test_logits_are_scaled_half_squared_distances() -> None:
    weights, _, _, query = tiny()
    expected = -7.0 / 2 * ((query[:, :, None] - weights[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(tim_logits(weights, query, 7.0), expected)


def test_objective_decreases_over_the_iterations() -> None:
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(4, 5, 16, generator=g), dim=-1)
    support = F.normalize(centres.repeat_interleave(2, 1) + 0.4 * torch.randn(4, 10, 16, generator=g), dim=-1)
    query = F.normalize(centres.repeat_interleave(6, 1) + 0.4 * torch.randn(4, 30, 16, generator=g), dim=-1)
    support_y = torch.arange(5).repeat_interleave(2).repeat(4, 1)
    tim = TIM(nn.Identity())  # the paper's 1000 Adam steps at lr 1e-4
    weights, trace = tim.fit(support, support_y, query, 5)
    assert trace.shape == (1000, 4)
    final = tim.objective(weights, support, support_y, query)
    assert bool((final < trace[0] - 0.03).all()), (trace[0], final)
    steps = trace[1:] - trace[:-1]
    assert bool((steps <= 1e-6).all()), steps.max()  # monotone, up to float32 rounding


def test_zero_steps_is_nearest_prototype_on_normalised_features() -> None:
    _, support, support_y, query = tiny()
    logits = TIM(nn.Identity(), steps=0).predict_features(support, support_y, query, 3)
    s, q = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    protos = torch.stack([torch.stack([s[b][support_y[b] == c].mean(0) for c in range(3)]) for b in range(2)])
    torch.testing.assert_close(logits, tim_logits(protos, q, 15.0))


@pytest.mark.parametrize(("kwargs", "match"), [({"temperature": 0.0}, "temperature"), ({"lr": -1.0}, "lr"),
                                               ({"ce_weight": -0.1}, "ce_weight"), ({"steps": -1}, "steps"),
                                               ({"steps": 2.5}, "steps")])
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TIM(nn.Identity(), **kwargs)
