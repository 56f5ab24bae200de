"""DN4: the image-to-class measure against a brute-force loop over local descriptors, chunking, untouched by
predict, inductive, learning, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from torch import nn

from fewshot.backbones import Backbone, Conv4, NoFeatureMapsError
from fewshot.backbones.spec import default_spec
from fewshot.learners import OuterOptimizer
from fewshot.learners.metric import dn4
from fewshot.learners.metric.dn4 import DN4


def small_backbone(hidden: int = 8) -> Conv4:
    """Conv4 on 1x8x8 images, max-pools in the first two blocks only: (hidden, 2, 2) feature maps."""
    return Conv4(in_channels=1, hidden=hidden, input_size=8, pooled_blocks=2)


def brute_force(query_maps: torch.Tensor, support_maps: torch.Tensor, support_y: torch.Tensor, n_way: int,
                k: int) -> torch.Tensor:
    """One task: query_maps (Q, C, h, w), support_maps (S, C, h, w) -> (Q, n_way), by plain Python loops."""
    scores = torch.zeros(query_maps.shape[0], n_way, dtype=query_maps.dtype)
    for i, qmap in enumerate(query_maps):
        for c in range(n_way):
            bank = [smap[:, y, x] / smap[:, y, x].norm() for smap, label in zip(support_maps, support_y, strict=True)
                    if label == c for y in range(smap.shape[1]) for x in range(smap.shape[2])]
            for y in range(qmap.shape[1]):
                for x in range(qmap.shape[2]):
                    descriptor = qmap[:, y, x] / qmap[:, y, x].norm()
                    similarities = sorted((float(descriptor @ s) for s in bank), reverse=True)
                    scores[i, c] += sum(similarities[:k])
    return scores


@pytest.mark.parametrize("k", [1, 3, 20])  # 20 > the 2 shots x 4 descriptors of a class: capped at 8
def test_scores_equal_a_brute_force_loop_over_local_descriptors(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    learner = DN4(small_backbone(hidden=5), k_neighbors=k)
    support = torch.randn(2, 6, 5 * 2 * 2, generator=g, dtype=torch.float64)
    query = torch.randn(2, 4, 5 * 2 * 2, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])  # not class-major in every task
    scores = learner.predict_features(support, support_y, query, 3)
    for b in range(2):
        expected = brute_force(query[b].view(4, 5, 2, 2), support[b].view(6, 5, 2, 2), support_y[b], 3, k)
        torch.testing.assert_close(scores[b], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [3, 6])  # 6 > the 1 shot x 4 descriptors of class 0: that class sums only 4
def test_variable_shots_equal_the_brute_force_loop(k: int) -> None:
    """Classes with 1, 2 and 3 support images (variable-shot episodes): each class's own descriptors only."""
    g = torch.Generator().manual_seed(2)
    learner = DN4(small_backbone(hidden=5), k_neighbors=k)
    support = torch.randn(2, 6, 5 * 2 * 2, generator=g, dtype=torch.float64)
    query = torch.randn(2, 4, 5 * 2 * 2, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 1, 2, 2, 2], [2, 1, 2, 0, 1, 2]])
    scores = learner.predict_features(support, support_y, query, 3)
    for b in range(2):
        expected = brute_force(query[b].view(4, 5, 2, 2), support[b].view(6, 5, 2, 2), support_y[b], 3, k)
        torch.testing.assert_close(scores[b], expected, rtol=1e-10, atol=1e-10)


def test_chunked_similarities_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    learner = DN4(small_backbone())
    support, query = torch.randn(3, 10, 32, generator=g), torch.randn(3, 7, 32, generator=g)
    support_y = torch.arange(5).repeat_interleave(2).repeat(3, 1)
    whole = learner.predict_features(support, support_y, query, 5)
    monkeypatch.setattr(dn4, "SIMILARITY_BUDGET", 50)  # one query per chunk
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 5), whole, rtol=0, atol=1e-5)


def trained(steps: int = 2) -> DN4:
    torch.manual_seed(0)
    learner = DN4(small_backbone())
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    for step in range(steps):
        learner.meta_train_step(template_batch(2, n_shot=2, seed=step))
    return learner


def test_meta_loss_is_cross_entropy_on_the_scores() -> None:
    learner = trained(steps=0)
    batch = template_batch(2, n_shot=2, seed=3)
    loss, logits = learner.meta_loss(batch)
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()))
    assert logits.shape == (2, 15, 5)


def test_a_query_does_not_depend_on_the_other_queries() -> None:
    learner = trained()
    batch = template_batch(2, n_shot=2, seed=11)
    scores = learner.predict(batch)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    permuted = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, perm],
                                                   query_y=batch.query_y[:, perm]))
    torch.testing.assert_close(permuted, scores[:, perm], rtol=0, atol=1e-5)
    subset = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, 5:8], query_y=batch.query_y[:, 5:8]))
    torch.testing.assert_close(subset, scores[:, 5:8], rtol=0, atol=1e-5)


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = DN4(small_backbone())
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(80):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)


class TokensOnly(Backbone):
    """A stand-in for a backbone without spatial maps (e.g. a vision transformer's tokens)."""

    has_feature_maps = False
    _no_maps_reason = "it gives tokens"

    def __init__(self) -> None:
        super().__init__()
        self.feature_dim, self.spec, self.stages = 4, default_spec(8, 1, imagenet=False), ["linear"]
        self.linear = nn.Linear(64, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NoFeatureMapsError("no maps")

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        raise NoFeatureMapsError("no maps")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_bad_input() -> None:
    with pytest.raises(NoFeatureMapsError, match=r"DN4 needs spatial feature maps.*it gives tokens"):
        DN4(TokensOnly())
    with pytest.raises(TypeError, match="fewshot Backbone"):
        DN4(nn.Identity())
    with pytest.raises(ValueError, match="k_neighbors"):
        DN4(small_backbone(), k_neighbors=0)
    learner = DN4(small_backbone())
    with pytest.raises(ValueError, match="built for"):
        learner.predict_features(torch.zeros(1, 2, 30), torch.tensor([[0, 1]]), torch.zeros(1, 2, 30), 2)
