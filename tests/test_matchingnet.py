"""Matching networks: attention over support labels by hand, log-probability logits, FCE shape-free and
inductive, untouched by predict, blind to query labels, learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from torch import nn

from fewshot.learners import OuterOptimizer
from fewshot.learners.metric.matchingnet import MatchingNet


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> maxpool -> flatten -> linear on 1x8x8 images; feature_dim = 16."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 16, 16))
        self.feature_dim = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def trained(fce: bool, steps: int = 2) -> MatchingNet:
    torch.manual_seed(0)
    learner = MatchingNet(TinyNet(), fce=fce, fce_steps=3)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    for step in range(steps):
        learner.meta_train_step(template_batch(2, seed=step))
    return learner


def test_without_fce_probabilities_are_attention_weighted_one_hot_labels() -> None:
    g = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    for temperature in (1.0, 0.25):
        logits = MatchingNet(nn.Identity(), temperature=temperature).predict_features(support, support_y, query, 3)
        expected = torch.zeros(2, 5, 3, dtype=torch.float64)
        for b in range(2):
            for q in range(5):
                cosines = torch.stack([torch.dot(query[b, q], support[b, i])
                                       / (query[b, q].norm() * support[b, i].norm()) for i in range(6)])
                attention = torch.exp(cosines / temperature) / torch.exp(cosines / temperature).sum()
                for i in range(6):
                    expected[b, q] += attention[i] * F.one_hot(support_y[b, i], 3).double()
        torch.testing.assert_close(logits.exp(), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logits, expected.log(), rtol=1e-12, atol=1e-12)  # log-probabilities
        assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_meta_loss_is_minus_log_probability_of_the_true_class() -> None:
    learner = trained(fce=False, steps=0)
    batch = template_batch(2, seed=3)
    loss, logits = learner.meta_loss(batch)
    manual = -torch.stack([logits[b, i, batch.query_y[b, i]] for b in range(2) for i in range(15)]).mean()
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()))


@pytest.mark.parametrize("fce", [False, True])
def test_predict_leaves_learner_untouched_and_ignores_query_labels(fce: bool) -> None:
    learner = trained(fce)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = template_batch(3, seed=7)
    logits = learner.predict(batch)
    assert learner.training and logits.shape == (3, 15, 5)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    shuffled = dataclasses.replace(batch, query_y=batch.query_y[:, torch.randperm(15)])
    assert torch.equal(learner.predict(shuffled), logits)


@pytest.mark.parametrize("fce", [False, True])
def test_a_query_does_not_depend_on_the_other_queries(fce: bool) -> None:
    learner = trained(fce)
    batch = template_batch(2, seed=11)
    logits = learner.predict(batch)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    permuted = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, perm],
                                                   query_y=batch.query_y[:, perm]))
    torch.testing.assert_close(permuted, logits[:, perm], rtol=0, atol=1e-6)
    subset = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, 4:6], query_y=batch.query_y[:, 4:6]))
    torch.testing.assert_close(subset, logits[:, 4:6], rtol=0, atol=1e-6)


def test_fce_support_embeddings_see_the_other_support_items_but_not_the_queries() -> None:
    learner = trained(fce=True).eval()
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(1, 5, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    with torch.no_grad():
        g0, f0 = learner.contextual(support, query)
        g1, _ = learner.contextual(support, torch.randn(1, 7, 16, generator=g))  # other queries
        changed = support.clone()
        changed[0, 4] += 1.0  # another support item
        g2, f2 = learner.contextual(changed, query)
    assert torch.equal(g0, g1)
    assert not torch.allclose(g0[0, 0], g2[0, 0]) and not torch.allclose(f0, f2)
    assert not torch.allclose(g0, support)  # the context changes the embeddings


def test_fce_runs_on_any_number_of_ways_and_shots() -> None:
    """Neither LSTM is built for a support-set size: trained on 5-way 1-shot, it scores 5-shot and 12-way."""
    learner = trained(fce=True)
    for n_way, n_shot in ((5, 5), (12, 1), (3, 4)):
        batch = template_batch(2, n_way=n_way, n_shot=n_shot, seed=5)
        logits = learner.predict(batch)
        assert logits.shape == (2, n_way * 3, n_way) and torch.isfinite(logits).all()
        torch.testing.assert_close(logits.exp().sum(-1), torch.ones(2, n_way * 3))


@pytest.mark.parametrize("fce", [False, True])
def test_learns_a_synthetic_task(fce: bool) -> None:
    torch.manual_seed(0)
    learner = MatchingNet(TinyNet(), fce=fce, fce_steps=2, temperature=0.2)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="fce_steps"):
        MatchingNet(TinyNet(), fce=True, fce_steps=0)
    with pytest.raises(ValueError, match="temperature"):
        MatchingNet(TinyNet(), temperature=0.0)
    with pytest.raises(TypeError, match="fce must be"):
        MatchingNet(TinyNet(), fce="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="feature_dim"):
        MatchingNet(nn.Identity(), fce=True)
    MatchingNet(nn.Identity())  # without FCE any embedding works
