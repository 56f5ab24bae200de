"""ProtoNet: logits against a hand computation, one backbone call per meta-batch, untouched by predict, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from torch import nn

from fewshot.learners import OuterOptimizer, ProtoNet
from fewshot.learners.metric.protonet import prototypes


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> maxpool -> flatten -> linear on 1x8x8 images; feature_dim = 16."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(8 * 16, 16))
        self.feature_dim = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)




def test_logits_are_minus_squared_distances_to_class_means() -> None:
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(2, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g,
                                                                                         dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    learner = ProtoNet(nn.Identity(), temperature=2.0)
    logits = learner.predict_features(support, support_y, query, 3)
    expected = torch.empty(2, 5, 3, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            proto = support[b][support_y[b] == c].mean(0)
            for q in range(5):
                expected[b, q, c] = -((query[b, q] - proto) ** 2).sum() / 2.0
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    cosine = ProtoNet(nn.Identity(), distance="cosine").predict_features(support, support_y, query, 3)
    protos = prototypes(support, support_y, 3)
    torch.testing.assert_close(cosine, F.cosine_similarity(query[:, :, None], protos[:, None], dim=-1) - 1.0)


def test_predict_equals_predict_features_on_embeddings_and_leaves_learner_untouched() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(TinyNet())
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(template_batch(2, seed=0))
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = template_batch(3, seed=1)
    logits = learner.predict(batch)
    assert learner.training
    learner.eval()
    with torch.no_grad():
        feats = learner.embed(torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]))
    expected = learner.predict_features(feats[:15].view(3, 5, -1), batch.support_y, feats[15:].view(3, 15, -1), 5)
    torch.testing.assert_close(logits, expected)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_meta_loss_uses_one_backbone_call() -> None:
    calls = []
    backbone = TinyNet()
    backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    learner = ProtoNet(backbone)
    loss, logits = learner.meta_loss(template_batch(4, seed=0))
    assert calls == [4 * 5 + 4 * 15] and logits.shape == (4, 15, 5) and loss.ndim == 0


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="distance"):
        ProtoNet(nn.Identity(), distance="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        ProtoNet(nn.Identity(), temperature=0.0)


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(TinyNet())
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)
