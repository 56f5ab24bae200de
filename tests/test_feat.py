"""FEAT: the set-to-set transformer and the contrastive regulariser against hand computations, ProtoNet as the
identity-transformer special case, inductive (the transformer sees the prototypes only), pure, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from test_protonet import TinyNet
from torch import nn

from fewshot.learners import OuterOptimizer, ProtoNet
from fewshot.learners.metric.feat import FEAT


class Features(nn.Identity):
    """Identity "backbone" over (N, 4) features."""

    feature_dim = 4


def feat(**kwargs: float) -> FEAT:
    torch.manual_seed(0)
    learner = FEAT(Features(), **kwargs).double().eval()  # eval: no dropout, so everything is deterministic
    with torch.no_grad():  # non-trivial layer norm affine parameters, so the hand computation covers them
        learner.norm.weight.uniform_(0.5, 1.5)
        learner.norm.bias.uniform_(-0.5, 0.5)
    return learner


def attend(learner: FEAT, x: torch.Tensor) -> torch.Tensor:
    """The transformer block on one set, written out: (S, D) -> (S, D)."""
    q, k, v = x @ learner.w_q.weight.T, x @ learner.w_k.weight.T, x @ learner.w_v.weight.T
    weights = torch.softmax(q @ k.T / math.sqrt(x.shape[1]), dim=1)
    y = x + (weights @ v) @ learner.w_o.weight.T + learner.w_o.bias
    mean, var = y.mean(1, keepdim=True), y.var(1, unbiased=False, keepdim=True)
    return (y - mean) / torch.sqrt(var + learner.norm.eps) * learner.norm.weight + learner.norm.bias


def episode(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 tasks, 3 ways, 2 shots and 2 queries, labels not in class-major order."""
    g = torch.Generator().manual_seed(seed)
    support, query = (torch.randn(2, 6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    query_y = torch.tensor([[1, 0, 2, 2, 0, 1], [0, 1, 2, 0, 1, 2]])
    return support, support_y, query, query_y


def test_logits_are_distances_to_the_transformed_prototypes() -> None:
    learner = feat(temperature=3.0)
    support, support_y, query, _ = episode()
    expected = torch.empty(2, 6, 3, dtype=torch.float64)
    for b in range(2):
        protos = attend(learner, torch.stack([support[b][support_y[b] == c].mean(0) for c in range(3)]))
        for q in range(6):
            expected[b, q] = -((query[b, q] - protos) ** 2).sum(1) / 3.0
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 3), expected, rtol=1e-10,
                               atol=1e-10)


def test_with_the_output_projection_zeroed_feat_is_protonet() -> None:
    """W_o = 0 and b_o = 0 leave T(P) = LayerNorm(P); with layer norm's initial affine (weight 1, bias 0), that
    is the identity on vectors of zero mean and unit variance, so 1-shot FEAT on standardised support
    features is ProtoNet with the same temperature (to layer norm's eps, 1e-5)."""
    torch.manual_seed(0)
    learner = FEAT(Features(), temperature=2.0).double().eval()
    with torch.no_grad():
        learner.w_o.weight.zero_()
        learner.w_o.bias.zero_()
    g = torch.Generator().manual_seed(1)
    support = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    support = (support - support.mean(-1, keepdim=True)) / support.std(-1, unbiased=False, keepdim=True)
    query = torch.randn(3, 10, 4, generator=g, dtype=torch.float64)
    support_y = torch.arange(5).repeat(3, 1)
    protonet = ProtoNet(nn.Identity(), temperature=2.0).predict_features(support, support_y, query, 5)
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 5), protonet, rtol=1e-4,
                               atol=1e-4)


def test_the_regulariser_equals_a_hand_computation() -> None:
    learner = feat(temperature2=5.0)
    support, support_y, query, query_y = episode()
    losses = []
    for b in range(2):
        x, y = torch.cat([support[b], query[b]]), torch.cat([support_y[b], query_y[b]])
        centres = torch.stack([attend(learner, x[y == c]).mean(0) for c in range(3)])  # adapted class sets
        for i in range(len(x)):  # each unadapted embedding among the centres
            logits = -((x[i] - centres) ** 2).sum(1) / 5.0
            losses.append(-torch.log_softmax(logits, 0)[y[i]])
    torch.testing.assert_close(learner.regularizer(support, support_y, query, query_y, 3), torch.stack(losses).mean(),
                               rtol=1e-10, atol=1e-10)


def test_meta_loss_is_query_cross_entropy_plus_balance_times_the_regulariser() -> None:
    torch.manual_seed(0)
    learner = FEAT(TinyNet(), balance=0.3, temperature=2.0, temperature2=3.0).eval()
    batch = template_batch(2, n_shot=2, seed=0)
    loss, _ = learner.meta_loss(batch)
    support, query = learner.embed_episodes(batch)
    expected = (F.cross_entropy(learner.predict_features(support, batch.support_y, query, 5).flatten(0, 1),
                                batch.query_y.flatten())
                + 0.3 * learner.regularizer(support, batch.support_y, query, batch.query_y, 5))
    torch.testing.assert_close(loss, expected)
    learner.train()
    learner.meta_loss(batch)[0].backward()
    for name in ("w_q.weight", "w_k.weight", "w_v.weight", "w_o.weight", "norm.weight"):
        assert learner.get_parameter(name).grad.abs().sum() > 0, name  # the transformer is trained
    with pytest.raises(ValueError, match="same number"):
        learner.regularizer(support[:, :9], batch.support_y[:, :9], query, batch.query_y, 5)


def test_inductive_the_transformer_sees_the_prototypes_only() -> None:
    torch.manual_seed(0)
    learner = FEAT(TinyNet(), temperature=4.0)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(template_batch(2, seed=0))
    seen: list[tuple[int, ...]] = []
    learner.w_q.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    batch = template_batch(3, seed=1, n_query=4)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    logits = learner.predict(batch)
    assert seen == [(3, 5, 16)]  # one set of n_way prototypes per task, nothing else
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    shuffled = batch.query_y[:, torch.randperm(20, generator=torch.Generator().manual_seed(2))]
    assert torch.equal(learner.predict(dataclasses.replace(batch, query_y=shuffled)), logits)
    keep = torch.tensor([7, 0, 13, 5])
    sub = dataclasses.replace(batch, query_x=batch.query_x[:, keep], query_y=batch.query_y[:, keep])
    torch.testing.assert_close(learner.predict(sub), logits[:, keep], rtol=1e-6, atol=1e-6)


def test_invalid_arguments() -> None:
    with pytest.raises(TypeError, match="feature_dim"):
        FEAT(nn.Identity())
    with pytest.raises(ValueError, match="temperature"):
        FEAT(TinyNet(), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        FEAT(TinyNet(), temperature2=-1.0)
    with pytest.raises(ValueError, match="balance"):
        FEAT(TinyNet(), balance=-0.1)
    with pytest.raises(ValueError, match="dropout"):
        FEAT(TinyNet(), dropout=1.0)


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = FEAT(TinyNet(), temperature=4.0, temperature2=4.0, balance=0.1)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)
