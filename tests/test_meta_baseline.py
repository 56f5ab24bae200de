"""Meta-Baseline: logits are scale * cos(query, centroid) by hand, the scale is learned, predict is pure and
inductive, and meta-training learns a synthetic task."""

from __future__ import annotations

import pytest
import torch
from synthetic import template_batch
from test_protonet import TinyNet
from torch import nn

from fewshot.learners import OuterOptimizer
from fewshot.learners.metric.meta_baseline import MetaBaseline


def test_logits_are_scale_times_cosine_to_class_centroids() -> None:
    g = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    learner = MetaBaseline(nn.Identity(), scale=7.0).double()
    logits = learner.predict_features(support, support_y, query, 3)
    expected = torch.empty(2, 5, 3, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            centroid = support[b][support_y[b] == c].mean(0)  # the mean of raw features, then the cosine
            for q in range(5):
                expected[b, q, c] = 7.0 * query[b, q] @ centroid / (query[b, q].norm() * centroid.norm())
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)


def test_the_scale_is_learned() -> None:
    torch.manual_seed(0)
    learner = MetaBaseline(TinyNet())
    assert learner.scale.item() == 10.0 and learner.scale.requires_grad
    learner.configure_optimizer(OuterOptimizer(lr=1e-2))
    assert any(learner.scale is p for g in learner.optimizer.param_groups for p in g["params"])
    loss, _ = learner.meta_loss(template_batch(2, seed=0))
    (grad,) = torch.autograd.grad(loss, [learner.scale])
    assert grad.abs().item() > 0
    learner.meta_train_step(template_batch(2, seed=0))
    assert learner.scale.item() != 10.0
    fixed = MetaBaseline(TinyNet(), learn_scale=False)
    fixed.configure_optimizer(OuterOptimizer(lr=1e-2))
    fixed.meta_train_step(template_batch(2, seed=0))
    assert fixed.scale.item() == 10.0




def test_invalid_arguments() -> None:
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            MetaBaseline(nn.Identity(), scale=bad)
    with pytest.raises(TypeError, match="learn_scale"):
        MetaBaseline(nn.Identity(), learn_scale="yes")  # type: ignore[arg-type]


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = MetaBaseline(TinyNet())
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)
