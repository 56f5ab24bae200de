"""Meta-Dataset-style variable episodes: the sampling formulas against hand computations, the algorithm's bounds
over many episodes, seeding (episode i a pure function of (seed, i)), every learner YAML on variable-shot and
variable-way episodes (finite logits or the documented refusal), and the evaluation of a variable sampler."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from test_learner_contract import LEARNERS, build, state

from episodes import EpisodeBatch, FewShotDataset
from episodes.variable import VariableEpisodeSampler, VariableShape, episode_counts
from fewshot.backbones import create_backbone
from fewshot.evaluation import EpisodeSpec, check_variable, evaluate_variable, mean_ci95
from fewshot.learners.gradient.maml import MAML
from fewshot.learners.metric.protonet import ProtoNet

#: The learners with a head of a fixed number of classes: they score variable shots, not variable ways.
FIXED_WAYS = {"anil", "boil", "fomaml", "imaml", "maml", "mamlpp", "metasgd", "reptile"}


def dataset(sizes: list[int], *, side: int = 4, seed: int = 0) -> FewShotDataset:
    """Classes of the given sizes, each image its class's random template plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    templates = torch.rand(len(sizes), 1, side, side, generator=g) * 255
    noise = 40 * torch.randn(len(labels), 1, side, side, generator=g)
    images = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
    return FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(len(sizes))], name="variable")


def test_episode_counts_follow_the_paper_formulas() -> None:
    """|c| = 20, 40, 100; beta = 0.5; alpha = 0, log 2, log 0.5. By hand: q = min(10, 20 // 2) = 10; remaining
    10, 30, 90; S = (floor(5) + 1) + (floor(15) + 1) + (floor(45) + 1) = 68; weights 20, 80, 50 (sum 150), so
    k = floor(65 * 20/150) + 1 = 9, floor(65 * 80/150) + 1 = 35 -> capped at 30 remaining, floor(65 * 50/150) + 1
    = 22."""
    n_query, shots = episode_counts(torch.tensor([20, 40, 100]), beta=0.5,
                                    log_weights=torch.tensor([0.0, math.log(2), math.log(0.5)], dtype=torch.float64),
                                    shape=VariableShape())
    assert n_query == 10 and shots.tolist() == [9, 30, 22]


def test_the_support_set_is_capped() -> None:
    """50 classes of 1000: each adds min(100, 990) * 0.99 + 1 -> 99 + 1, 5000 in all, capped at 500; equal
    weights: k = floor(450 / 50) + 1 = 10 each. max_support_per_class=1: S = N, one shot each."""
    sizes, weights = torch.full((50,), 1000), torch.zeros(50, dtype=torch.float64)
    n_query, shots = episode_counts(sizes, beta=0.99, log_weights=weights, shape=VariableShape())
    assert n_query == 10 and shots.tolist() == [10] * 50
    _, shots = episode_counts(sizes, beta=0.99, log_weights=weights, shape=VariableShape(max_support_per_class=1))
    assert shots.tolist() == [1] * 50


def test_episodes_keep_the_algorithms_bounds() -> None:
    sizes = [2, 3, 5, 8, 13, 21, 34, 55, 89, 40, 30, 20]
    data = dataset(sizes)
    shape = VariableShape(min_way=3, max_way=9, max_support=60, max_support_per_class=20)
    sampler = VariableEpisodeSampler(data, shape=shape, seed=3, num_episodes=300)
    class_sizes, offsets = data.class_sizes, data.offsets
    ways, imbalanced = set(), 0
    for i in range(300):
        support, support_y, query, query_y, classes = sampler.indices(i)
        n_way = len(classes)
        ways.add(n_way)
        assert len(set(classes.tolist())) == n_way
        q = min(10, int(class_sizes[classes].min()) // 2)
        shots = torch.bincount(support_y, minlength=n_way)
        assert support_y.tolist() == sorted(support_y.tolist()) and query_y.tolist() == sorted(query_y.tolist())
        assert torch.bincount(query_y, minlength=n_way).tolist() == [q] * n_way
        assert bool((shots >= 1).all()) and bool((shots <= class_sizes[classes] - q).all()) and len(support) <= 60
        imbalanced += len(set(shots.tolist())) > 1
        for rows, labels in ((support, support_y), (query, query_y)):  # every image from its label's class
            c = classes[labels]
            assert bool(((rows >= offsets[c]) & (rows < offsets[c + 1])).all())
        assert len(set(support.tolist()) | set(query.tolist())) == len(support) + len(query)  # all distinct
    assert ways == set(range(3, 10)) and imbalanced > 200


def test_the_support_size_is_uniform_over_its_range() -> None:
    """Equal classes of 40 (q = 10, 30 remaining) and equal weights: every class gets floor(30 beta) + 1 shots,
    each of 1..30 equally likely."""
    shape = VariableShape(min_way=5, max_way=5, min_log_weight=0.0, max_log_weight=0.0)
    sampler = VariableEpisodeSampler(dataset([40] * 8), shape=shape, seed=0, num_episodes=600)
    shots = [torch.bincount(sampler.indices(i)[1]) for i in range(600)]
    assert all(len(set(k.tolist())) == 1 for k in shots)
    counts = torch.bincount(torch.stack([k[0] for k in shots]), minlength=31)[1:]
    assert len(counts) == 30 and int(counts.min()) >= 8 and int(counts.max()) <= 35  # 20 expected each


def test_an_episode_is_a_pure_function_of_seed_and_id() -> None:
    data = dataset([6, 9, 12, 15, 18, 21, 24])
    a = VariableEpisodeSampler(data, shape=VariableShape(min_way=2, max_way=7), seed=5, num_episodes=20)
    b = VariableEpisodeSampler(data, shape=VariableShape(min_way=2, max_way=7), seed=5, num_episodes=20)
    forward = [a[i] for i in range(10)]
    for i in [7, 3, 9, 0]:
        episode = b[i]
        assert episode.episode_id == i
        for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert torch.equal(getattr(episode, field), getattr(forward[i], field))
    rows = [torch.cat(a.indices(i)) for i in range(10)]
    assert len({tuple(r.tolist()) for r in rows}) == 10
    other = VariableEpisodeSampler(data, shape=VariableShape(min_way=2, max_way=7), seed=6)
    assert sum(torch.equal(torch.cat(other.indices(i)), rows[i]) for i in range(10)) == 0


def test_batches_shots_and_bad_input() -> None:
    data = dataset([6, 9, 12, 15, 18, 21, 24])
    sampler = VariableEpisodeSampler(data, shape=VariableShape(min_way=3, max_way=6), seed=0, num_episodes=4)
    batch = sampler.batch([2])
    assert isinstance(batch, EpisodeBatch) and batch.shots.tolist() == [torch.bincount(batch.support_y[0]).tolist()]
    with pytest.raises(ValueError, match=r"different numbers of support images per class \(\[.*use batch.shots"):
        _ = batch.n_shot
    with pytest.raises(ValueError, match="batch variable episodes one id at a time"):
        sampler.batch([0, 1, 2, 3])
    with pytest.raises(IndexError, match="out of range"):
        sampler.batch([4])
    with pytest.raises(ValueError, match="only 7 classes"):
        VariableEpisodeSampler(data, seed=0, shape=VariableShape(min_way=8))
    with pytest.raises(ValueError, match=r"at least 2 images per class.*class 1 \('c1'\) has 1"):
        VariableEpisodeSampler(dataset([3, 1, 4, 5, 6]), seed=0)
    for bad, message in [({"min_way": 1}, "min_way must be an int >= 2"), ({"max_way": 4}, "max_way must be"),
                         ({"max_support": 20}, "max_support must be an int >= 50"),
                         ({"min_log_weight": 1.0}, "min_log_weight <= max_log_weight"),
                         ({"max_log_weight": float("nan")}, "finite")]:
        with pytest.raises(ValueError, match=message):
            VariableShape(**bad)


@pytest.fixture(scope="module")
def hydra_context() -> Iterator[None]:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


def test_the_meta_dataset_config_is_the_papers_distribution(hydra_context: None) -> None:
    cfg = compose("train", overrides=["evaluation=meta_dataset"])
    assert instantiate(cfg.evaluation.variable) == VariableShape() == VariableShape(
        min_way=5, max_way=50, max_query=10, max_support=500, max_support_per_class=100,
        min_log_weight=math.log(0.5), max_log_weight=math.log(2))
    assert (cfg.evaluation.episodes, list(cfg.evaluation.settings)) == (600, [])


@pytest.mark.parametrize("option", LEARNERS)
def test_every_learner_scores_variable_episodes_or_refuses_their_ways(option: str, hydra_context: None) -> None:
    """Built as in the contract test (5-way head), on 28x28 classes of 6 to 20 images: a 5-way and a 7-way episode
    with imbalanced shots. Every learner scores the 5-way one; a learner with a fixed-size head refuses the 7-way
    one through check_ways, with the error ``predict`` raises."""
    data = dataset([6, 8, 10, 12, 14, 16, 18, 20], side=28)
    sampler = VariableEpisodeSampler(data, shape=VariableShape(min_way=5, max_way=8), seed=0)
    five, seven = sampler.batch([0]), sampler.batch([8])
    assert (five.n_way, five.shots.tolist(), seven.n_way, seven.shots.tolist()) == (
        5, [[5, 2, 14, 9, 3]], 7, [[8, 4, 7, 13, 5, 3, 3]])
    learner = build(option, data)
    before = state(learner)
    for batch in (five, seven):
        try:
            learner.check_ways(batch.n_way)
        except ValueError as err:
            assert option in FIXED_WAYS and batch.n_way == 7
            with pytest.raises(ValueError, match=f"^{re.escape(str(err))}$"):
                learner.predict(batch)
            continue
        logits = learner.predict(batch)
        assert logits.shape == (1, batch.query_y.shape[1], batch.n_way) and bool(torch.isfinite(logits).all())
    after = state(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_harness_scores_each_variable_episode() -> None:
    """Per-episode accuracies equal each episode's own predict call (embedded once or not), with mean_ci95."""
    data = dataset([6, 8, 10, 12, 14, 16, 18, 20], side=28)
    torch.manual_seed(0)
    protonet = ProtoNet(create_backbone("conv4", hidden=8, in_channels=1, input_size=28))
    shape = VariableShape(min_way=3, max_way=8)
    sampler = VariableEpisodeSampler(data, shape=shape, seed=11, num_episodes=8)
    expected = torch.zeros(8, dtype=torch.float64)
    for i in range(8):
        batch = sampler.batch([i])
        expected[i] = (protonet.predict(batch).argmax(-1) == batch.query_y).double().mean()
    for embed_once in (True, False):
        result = evaluate_variable({"protonet": protonet}, data, shape=shape, episodes=8, seed=11, progress=False,
                                   embed_once=embed_once, permutations=0)
        torch.testing.assert_close(result["protonet"].accuracies, expected)
        assert (result["protonet"].mean, result["protonet"].ci95) == mean_ci95(expected)
        assert result.spec == EpisodeSpec(dataset="variable", n_way=0, n_shot=0, n_query=0, episodes=8, seed=11,
                                          variable=shape)
        assert result.spec.setting == "variable-way variable-shot (3-8 ways)"


def test_a_fixed_head_is_refused_variable_ways_and_scores_variable_shots() -> None:
    data = dataset([6, 8, 10, 12, 14, 16, 18, 20], side=16)
    maml = MAML(create_backbone("conv4", hidden=4, in_channels=1, input_size=16), n_way=5, batched=False)
    with pytest.raises(ValueError, match=r"learner 'maml' \(MAML\) cannot score variable-way episodes of 5 to 8 ways "
                                         r"\(this MAML head has 5 classes.*min_way = max_way = 5.*learner=protonet"):
        check_variable({"maml": maml}, data, shape=VariableShape(min_way=5, max_way=8), episodes=4)
    result = evaluate_variable({"maml": maml}, data, shape=VariableShape(min_way=5, max_way=5), episodes=4,
                               progress=False, permutations=0)
    assert result["maml"].accuracies.shape == (4,) and bool(((result["maml"].accuracies >= 0)
                                                             & (result["maml"].accuracies <= 1)).all())
