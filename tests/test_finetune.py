"""Fine-tune baselines: batched head fit == per-episode fit, a hand step, untouched learner, backbone tuning."""

from __future__ import annotations

import copy
import functools

import pytest
import synthetic
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners import BackboneFineTune, EmbeddingLearner, FineTune, FrozenFineTune


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> maxpool, twice, on 1x8x8 images; feature_dim = 32; two stages."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.feature_dim = 32
        self.stages = ["block1", "block2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)).flatten(1)


template_batch = functools.partial(synthetic.template_batch, n_shot=5)  # this file's default


def pretrained_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial batch-norm running statistics (as after pretraining)."""
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net(template_batch(4, seed=99).support_x.flatten(0, 1))
    return net


def test_constructor_picks_the_right_kind() -> None:
    frozen = FineTune(TinyNet())
    assert isinstance(frozen, FrozenFineTune) and isinstance(frozen, EmbeddingLearner)
    tuned = FineTune(TinyNet(), finetune_backbone="last", head="cosine")
    assert isinstance(tuned, BackboneFineTune) and isinstance(tuned, FineTune)
    assert not isinstance(tuned, EmbeddingLearner)
    assert tuned.tuned == ["block2.0.weight", "block2.0.bias", "block2.1.weight", "block2.1.bias"]
    assert len(FineTune(TinyNet(), finetune_backbone="all").tuned) == 8
    assert type(copy.deepcopy(frozen)) is FrozenFineTune and type(copy.deepcopy(tuned)) is BackboneFineTune
    with pytest.raises(ValueError, match="head"):
        FineTune(TinyNet(), head="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finetune_backbone"):
        FineTune(TinyNet(), finetune_backbone="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr > 0"):
        FineTune(TinyNet(), lr=0.0)
    with pytest.raises(TypeError, match="feature_dim"):
        FineTune(nn.Flatten())


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_batched_fit_equals_fitting_each_episode_alone(head: str) -> None:
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(4, 10, 6, generator=g), torch.randn(4, 7, 6, generator=g)
    support_y = torch.arange(5).repeat_interleave(2).repeat(4, 1)
    learner = FineTune(TinyNet(), head=head, steps=30, lr=0.05)
    together = learner.predict_features(support, support_y, query, 5)
    for b in range(4):
        alone = learner.predict_features(support[b:b + 1], support_y[b:b + 1], query[b:b + 1], 5)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 5), together, rtol=0, atol=0)


def test_one_linear_step_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(1, 6, 4, generator=g, dtype=torch.float64), torch.randn(1, 3, 4, generator=g,
                                                                                         dtype=torch.float64)
    y = torch.tensor([[0, 0, 1, 1, 2, 2]])
    logits = FineTune(TinyNet(), steps=1, lr=0.5).predict_features(support, y, query, 3)
    # zero head: uniform softmax, so d loss / d logits = (1/3 - onehot) / 6
    grad_logits = (torch.full((6, 3), 1 / 3, dtype=torch.float64) - F.one_hot(y[0], 3)) / 6
    weight, bias = -0.5 * support[0].T @ grad_logits, -0.5 * grad_logits.sum(0)
    torch.testing.assert_close(logits[0], query[0] @ weight + bias, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"head": "cosine"}, {"finetune_backbone": "all", "steps": 5},
                                    {"finetune_backbone": "last", "steps": 5, "batched": True}])
def test_predict_is_reproducible_and_leaves_learner_untouched(kwargs: dict) -> None:
    learner = FineTune(pretrained_net(), **kwargs)
    learner.train()
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = template_batch(2, seed=1)
    first = learner.predict(batch)
    with torch.no_grad():
        second = learner.predict(batch)
    assert first.shape == (2, 15, 5)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in learner.modules())


def test_backbone_tuning_batched_equals_sequential_and_reduces_to_frozen() -> None:
    batch = template_batch(3, seed=2)
    net = pretrained_net()
    seq = FineTune(net, finetune_backbone="all", steps=10, lr=0.05, batched=False).predict(batch)
    bat = FineTune(net, finetune_backbone="all", steps=10, lr=0.05, batched=True).predict(batch)
    torch.testing.assert_close(bat, seq, rtol=1e-4, atol=1e-5)
    frozen = FineTune(net, steps=10, lr=0.05).predict(batch)
    no_backbone_step = FineTune(net, finetune_backbone="all", steps=10, lr=0.05, backbone_lr_mult=0.0).predict(batch)
    torch.testing.assert_close(no_backbone_step, frozen, rtol=1e-4, atol=1e-5)
    assert (seq - frozen).abs().max() > 1e-4


def test_divergence_raises() -> None:
    with pytest.raises(FloatingPointError, match="lower lr"):
        FineTune(pretrained_net(), lr=1e38, steps=20).predict(template_batch(1, seed=0))


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_fits_a_synthetic_task_above_chance(head: str) -> None:
    learner = FineTune(pretrained_net(), head=head, steps=100, lr=0.05)
    batch = template_batch(10, seed=3)
    accuracy = (learner.predict(batch).argmax(-1) == batch.query_y).float().mean().item()
    assert accuracy > 0.6, accuracy
