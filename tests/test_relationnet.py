"""Relation networks: scores in [0, 1], MSE to one-hot, maps of the backbone's declared shape, the pair
computation against concatenated maps by hand, untouched by predict, inductive, learning, bad backbones."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from torch import nn

from episodes import EpisodeBatch
from fewshot.backbones import Backbone, Conv4, NoFeatureMapsError
from fewshot.backbones.spec import default_spec
from fewshot.learners import OuterOptimizer
from fewshot.learners.metric import relationnet
from fewshot.learners.metric.relationnet import RelationNet


def small_backbone() -> Conv4:
    """Conv4 on 1x8x8 images, max-pools in the first two blocks only: (8, 2, 2) feature maps."""
    return Conv4(in_channels=1, hidden=8, input_size=8, pooled_blocks=2)


def trained(steps: int = 2, **kwargs: object) -> RelationNet:
    torch.manual_seed(0)
    learner = RelationNet(small_backbone(), hidden=8, fc_hidden=4, **kwargs)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    for step in range(steps):
        learner.meta_train_step(template_batch(2, n_shot=2, seed=step))
    return learner


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


def test_scores_lie_in_unit_interval_and_loss_is_mse_to_one_hot() -> None:
    learner = trained()
    batch = template_batch(3, n_shot=2, seed=5)
    loss, scores = learner.meta_loss(batch)
    assert scores.shape == (3, 15, 5) and bool(((scores >= 0) & (scores <= 1)).all())
    onehot = torch.zeros(3, 15, 5)
    for b in range(3):
        for i in range(15):
            onehot[b, i, batch.query_y[b, i]] = 1.0
    torch.testing.assert_close(loss, ((scores - onehot) ** 2).mean())
    predicted = learner.predict(batch)
    assert bool(((predicted >= 0) & (predicted <= 1)).all())


def test_relation_module_receives_maps_of_the_backbone_declared_shape() -> None:
    learner = trained(steps=0)
    seen = []
    learner.relation.register_forward_pre_hook(lambda module, args: seen.append([a.shape for a in args[:2]]))
    learner.predict(template_batch(2, n_shot=3, seed=1))
    learner.meta_loss(template_batch(2, n_shot=3, seed=2))
    assert learner.backbone.feature_map_shape() == (8, 2, 2) == learner.map_shape
    assert seen == [[torch.Size([2, 5, 8, 2, 2]), torch.Size([2, 15, 8, 2, 2])]] * 2


def paper_layers(learner: RelationNet) -> nn.Sequential:
    """The relation module in the paper's order, conv -> BN -> ReLU -> max-pool (x2) -> fc -> ReLU -> fc ->
    sigmoid, built from the learner's own layers: the module to check the learner against."""
    rel = learner.relation
    conv2, norm2 = (m for m in rel.rest if isinstance(m, nn.Conv2d | nn.BatchNorm2d))
    fc1, fc2 = (m for m in rel.rest if isinstance(m, nn.Linear))
    pools = [m for m in rel.rest if isinstance(m, nn.MaxPool2d)] + [nn.Identity(), nn.Identity()]
    return nn.Sequential(rel.conv1, rel.norm1, nn.ReLU(), pools[0], conv2, norm2, nn.ReLU(), pools[1], nn.Flatten(),
                         fc1, nn.ReLU(), fc2, nn.Sigmoid())


def upsample(batch: EpisodeBatch, size: int) -> EpisodeBatch:
    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.flatten(0, 1), size=size).unflatten(0, x.shape[:2])

    return dataclasses.replace(batch, support_x=resize(batch.support_x), query_x=resize(batch.query_x))


@pytest.mark.parametrize(("pooling", "size", "pools"), [("sum", 8, 1), ("mean", 8, 1), ("sum", 16, 2)])
def test_scores_equal_the_module_on_concatenated_class_and_query_maps(pooling: str, size: int, pools: int) -> None:
    """By hand: class map = sum (or mean) of its support maps, each pair concatenated [class, query] on
    channels and passed through the paper's layers; the learner's split first convolution (and, in eval mode,
    folded first batch norm) gives the same. 2x2 maps (8x8 images) are pooled once, 4x4 maps twice."""
    torch.manual_seed(0)
    learner = RelationNet(Conv4(in_channels=1, hidden=8, input_size=size, pooled_blocks=2), hidden=8, fc_hidden=4,
                          shot_pooling=pooling)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    for step in range(2):
        learner.meta_train_step(upsample(template_batch(2, n_shot=2, seed=step), size))
    learner.eval()
    assert sum(isinstance(m, nn.MaxPool2d) for m in learner.relation.rest) == pools
    layers = paper_layers(learner)
    batch = upsample(template_batch(2, n_shot=3, seed=9), size)
    with torch.no_grad():
        scores = learner.predict(batch)
        for b in range(2):
            maps = learner.backbone.forward_features(batch.support_x[b])
            queries = learner.backbone.forward_features(batch.query_x[b])
            for c in range(5):
                members = maps[batch.support_y[b] == c]
                class_map = members.sum(0) if pooling == "sum" else members.mean(0)
                for i in range(15):
                    pair = torch.cat([class_map, queries[i]])[None]  # (1, 2C, h, w)
                    torch.testing.assert_close(scores[b, i, c], layers(pair)[0, 0], rtol=1e-5, atol=1e-6)


def test_training_scores_use_batch_statistics_of_all_pairs() -> None:
    """In training mode every (query, class) pair of the batch goes through batch norm together, as the
    paper's concatenated pair batch does."""
    learner = trained()
    batch = template_batch(2, n_shot=2, seed=12)
    reference = copy.deepcopy(learner)
    _, scores = learner.meta_loss(batch)
    with torch.no_grad():
        maps = reference.backbone.forward_features(torch.cat([batch.support_x.flatten(0, 1),
                                                              batch.query_x.flatten(0, 1)]))
        support, queries = maps[:20].unflatten(0, (2, 10)), maps[20:].unflatten(0, (2, 15))
        classes = torch.stack([torch.stack([support[b][batch.support_y[b] == c].sum(0) for c in range(5)])
                               for b in range(2)])
        pairs = torch.cat([classes[:, None].expand(-1, 15, -1, -1, -1, -1),
                           queries[:, :, None].expand(-1, -1, 5, -1, -1, -1)], dim=3).flatten(0, 2)
        expected = paper_layers(reference)(pairs).view(2, 15, 5)
    torch.testing.assert_close(scores.detach(), expected, rtol=1e-4, atol=1e-5)


def test_chunked_evaluation_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    learner = trained()
    batch = template_batch(3, n_shot=2, seed=4)
    whole = learner.predict(batch)
    monkeypatch.setattr(relationnet, "EVAL_PAIRS", 7)  # 1 query (5 pairs) per pass
    torch.testing.assert_close(learner.predict(batch), whole, rtol=0, atol=1e-6)




def test_a_query_does_not_depend_on_the_other_queries() -> None:
    learner = trained()
    batch = template_batch(2, n_shot=2, seed=11)
    scores = learner.predict(batch)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    permuted = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, perm],
                                                   query_y=batch.query_y[:, perm]))
    torch.testing.assert_close(permuted, scores[:, perm], rtol=0, atol=1e-6)
    subset = learner.predict(dataclasses.replace(batch, query_x=batch.query_x[:, :3], query_y=batch.query_y[:, :3]))
    torch.testing.assert_close(subset, scores[:, :3], rtol=0, atol=1e-6)


def test_other_shots_and_ways_and_maps_without_room_to_pool() -> None:
    learner = trained()
    assert learner.predict(template_batch(2, n_way=9, n_shot=1, seed=3)).shape == (2, 27, 9)
    flat = RelationNet(Conv4(in_channels=1, hidden=8, input_size=16), hidden=8, fc_hidden=4)  # 8x1x1 maps
    assert flat.map_shape == (8, 1, 1)
    images = template_batch(2, seed=0)
    assert flat.predict(upsample(images, 16)).shape == (2, 15, 5)


def test_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = RelationNet(small_backbone(), hidden=8, fc_hidden=8)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(100):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)


def test_a_backbone_without_maps_is_refused_when_built() -> None:
    with pytest.raises(NoFeatureMapsError, match=r"RelationNet needs spatial feature maps.*it gives tokens"):
        RelationNet(TokensOnly())
    with pytest.raises(TypeError, match="fewshot Backbone"):
        RelationNet(nn.Linear(4, 4))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="hidden"):
        RelationNet(small_backbone(), hidden=0)
    with pytest.raises(ValueError, match="fc_hidden"):
        RelationNet(small_backbone(), fc_hidden=-1)
    with pytest.raises(ValueError, match="shot_pooling"):
        RelationNet(small_backbone(), shot_pooling="max")  # type: ignore[arg-type]
    learner = RelationNet(small_backbone())
    with pytest.raises(ValueError, match="built for"):
        learner.predict_features(torch.zeros(1, 5, 7), torch.arange(5)[None], torch.zeros(1, 3, 7), 5)
