"""The evaluation harness: same episodes for every learner, embed-once equal to predict, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch, FewShotDataset
from episodes.sampler import EpisodeSampler
from episodes.variable import VariableShape
from fewshot.evaluation import EvaluationResult, evaluate, evaluate_settings, evaluate_variable, paired_comparison
from fewshot.evaluation.frame import default_embed_chunk
from fewshot.learners.base import EmbeddingLearner, Learner

N_WAY, N_SHOT, N_QUERY, EPISODES = 3, 2, 3, 20


def toy_dataset(classes: int = 8, per_class: int = 6, size: int = 8, noise: float = 150.0) -> FewShotDataset:
    """uint8 (N, 1, size, size) images: a random template per class plus heavy noise (accuracy well below 1)."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(classes, 1, 1, size, size, generator=g) * 255
    images = templates + noise * torch.randn(classes, per_class, 1, size, size, generator=g)
    images = images.clamp(0, 255).round().to(torch.uint8).flatten(0, 1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(classes)], name="toy",
                                       mean=(0.5,), std=(0.25,))


class ToyProto(EmbeddingLearner):
    """Conv + BatchNorm (non-trivial running statistics) + ReLU, nearest class mean."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.copy_(torch.randn(4, generator=g) * 0.1)
            self.bn.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
            self.bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x))).flatten(1)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        onehot = F.one_hot(support_y, n_way).to(support.dtype)
        protos = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)
        return -((query.unsqueeze(2) - protos.unsqueeze(1)) ** 2).sum(-1)


class OneStepHead(Learner):
    """A linear head on pixels, one gradient step per task from shared weights (needs autograd in predict)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, N_WAY, generator=torch.Generator().manual_seed(2)) * 0.01)

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        xs, xq = batch.support_x.flatten(2), batch.query_x.flatten(2)
        w = self.weight.detach().expand(batch.n_tasks, -1, -1).clone().requires_grad_(True)
        logits = xs @ w
        loss = F.cross_entropy(logits.flatten(0, 1), batch.support_y.flatten(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, w)
        return (xq @ (w - 0.05 * grad)).detach()


class Recorder(Learner):
    """Constant logits (always label 0) that records which episodes it was shown."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[EpisodeBatch] = []

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        self.seen.append(batch)
        logits = torch.zeros(batch.n_tasks, batch.query_y.shape[1], batch.n_way)
        logits[..., 0] = self.scale.detach()
        return logits


def run(learners: dict[str, Learner], **overrides: object) -> EvaluationResult:
    options: dict[str, object] = {"n_way": N_WAY, "n_shot": N_SHOT, "n_query": N_QUERY, "episodes": EPISODES,
                                  "seed": 5, "batch_size": 6, "progress": False, "permutations": 200}
    options.update(overrides)
    return evaluate(learners, toy_dataset(), **options)


def manual_accuracies(learner: Learner, seed: int = 5) -> torch.Tensor:
    """Each episode on its own through ``predict``: the reference the harness must reproduce."""
    sampler = EpisodeSampler(toy_dataset(), n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=seed,
                             num_episodes=EPISODES)
    learner.eval()
    scores = []
    for i in range(EPISODES):
        batch = sampler[i].as_batch()
        scores.append((learner.predict(batch).argmax(-1) == batch.query_y).double().mean())
    return torch.stack(scores)


def test_embed_once_equals_predict_on_images_exactly() -> None:
    fast = run({"proto": ToyProto()}, embed_once=True)["proto"]
    slow = run({"proto": ToyProto()}, embed_once=False)["proto"]
    assert fast.accuracies.dtype == torch.float64 and fast.accuracies.shape == (EPISODES,)
    assert torch.equal(fast.accuracies, slow.accuracies)
    assert (fast.mean, fast.ci95) == (slow.mean, slow.ci95)
    assert 0.4 < fast.mean < 0.95 and len(fast.accuracies.unique()) > 1  # not a trivially constant score


def test_several_settings_share_one_embedding_and_equal_separate_runs() -> None:
    learners: dict[str, Learner] = {"proto": ToyProto(), "step": OneStepHead()}
    settings = [(N_WAY, N_SHOT), (N_WAY, 1), (N_WAY, 3)]  # OneStepHead is N_WAY-way only
    together = evaluate_settings(learners, toy_dataset(), settings=settings, n_query=N_QUERY, episodes=EPISODES,
                                 seed=5, batch_size=6, progress=False, permutations=0)
    assert [(r.spec.n_way, r.spec.n_shot) for r in together] == settings
    for result, (n_way, n_shot) in zip(together, settings, strict=True):
        alone = run(learners, n_way=n_way, n_shot=n_shot, permutations=0)
        for name in learners:
            assert torch.equal(result[name].accuracies, alone[name].accuracies)
    with pytest.raises(ValueError, match="settings"):
        evaluate_settings(learners, toy_dataset(), settings=[], n_query=N_QUERY)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_accuracies_equal_episode_by_episode_reference(batch_size: int) -> None:
    result = run({"proto": ToyProto(), "head": OneStepHead()}, batch_size=batch_size)
    assert torch.equal(result["proto"].accuracies, manual_accuracies(ToyProto()))
    assert torch.equal(result["head"].accuracies, manual_accuracies(OneStepHead()))


def test_every_learner_sees_the_same_fixed_episodes() -> None:
    first, second = Recorder(), Recorder()
    result = run({"first": first, "second": second}, batch_size=8)
    sampler = EpisodeSampler(toy_dataset(), n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=5)
    expected_classes = sampler.indices(torch.arange(EPISODES))[2]
    for recorder in (first, second):
        assert torch.equal(torch.cat([b.episode_ids for b in recorder.seen]), torch.arange(EPISODES))
        assert torch.equal(torch.cat([b.classes for b in recorder.seen]), expected_classes)
        assert [b.n_tasks for b in recorder.seen] == [8, 8, 4]
    # Always answering label 0 gets exactly one class of queries right in every episode.
    assert torch.equal(result["first"].accuracies, torch.full((EPISODES,), 1 / N_WAY, dtype=torch.float64))
    assert result["first"].ci95 == 0.0
    other = Recorder()
    assert run({"other": other}, seed=6).spec.seed == 6
    assert not torch.equal(torch.cat([b.classes for b in other.seen]), expected_classes)


def test_learners_are_left_unchanged_and_modes_restored() -> None:
    learners: dict[str, Learner] = {"proto": ToyProto(), "head": OneStepHead()}
    before = {name: {k: v.clone() for k, v in learner.state_dict().items()} for name, learner in learners.items()}
    learners["proto"].train()
    learners["head"].eval()
    for embed_once in (True, False):
        run(learners, embed_once=embed_once)
    assert learners["proto"].training and not learners["head"].training
    for name, learner in learners.items():
        for key, value in learner.state_dict().items():
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"


def test_result_fields_and_pairwise_comparisons() -> None:
    result = run({"proto": ToyProto(), "head": OneStepHead(), "zero": Recorder()}, train_dataset="toy-train")
    assert [r.name for r in result.learners] == ["proto", "head", "zero"]
    assert vars(result.spec) == {"dataset": "toy", "n_way": N_WAY, "n_shot": N_SHOT, "n_query": N_QUERY,
                                 "episodes": EPISODES, "seed": 5, "episodes_file": None, "variable": None}
    assert (result.train_dataset, result.test_dataset, result.spec.setting) == ("toy-train", "toy", "3-way 2-shot")
    assert [(c.learner_a, c.learner_b) for c in result.comparisons] == [
        ("proto", "head"), ("proto", "zero"), ("head", "zero")]
    for c in result.comparisons:
        expected = paired_comparison(result[c.learner_a].accuracies, result[c.learner_b].accuracies,
                                     permutations=200, seed=5)
        assert c.result == expected
    with pytest.raises(KeyError, match="no learner named 'maml'"):
        result["maml"]


class WrongShape(Recorder):
    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        return super().predict(batch)[..., :2]


class ChunkRecorder(ToyProto):
    """ToyProto that records how many images each embedding pass gets."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[int] = []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.chunks.append(len(x))
        return super().embed(x)


def test_embed_chunk_default_is_device_aware_and_never_changes_scores() -> None:
    """On a CPU the default chunk is 128 images (faster there than 1024, benchmarks/results/embed_chunk.md); any chunk
    gives the same accuracies. 40 classes x 6 images, 3-way 2-shot 3-query, 20 episodes in one batch of 32."""
    data = toy_dataset(classes=40)
    options: dict[str, object] = {"n_way": N_WAY, "n_shot": N_SHOT, "n_query": N_QUERY, "episodes": EPISODES,
                                  "seed": 5, "batch_size": 32, "progress": False, "permutations": 0}
    scores = {}
    for chunk in (None, 7, 1024):
        learner = ChunkRecorder()
        scores[chunk] = evaluate({"proto": learner}, data, embed_chunk=chunk, **options)["proto"].accuracies
        distinct = sum(learner.chunks)
        assert distinct > 128  # the 20 episodes use more distinct images than one default chunk
        expected = {None: default_embed_chunk(torch.device("cpu")), 7: 7, 1024: 1024}[chunk]
        assert learner.chunks == [expected] * (distinct // expected) + ([distinct % expected] if distinct % expected
                                                                         else [])
    assert default_embed_chunk(torch.device("cpu")) == 128 and default_embed_chunk(torch.device("cuda")) == 1024
    assert torch.equal(scores[None], scores[7]) and torch.equal(scores[None], scores[1024])


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(ValueError, match="returned logits of shape"):
        run({"bad": WrongShape()})
    with pytest.raises(ValueError, match="at least one learner"):
        run({})
    with pytest.raises(TypeError, match="not a fewshot Learner"):
        run({"linear": nn.Linear(2, 2)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="episodes must be >= 2"):
        run({"zero": Recorder()}, episodes=1)
    with pytest.raises(ValueError, match=r"call learner.to\('cpu'\)"):
        run({"proto": ToyProto().to("meta")})
    with pytest.raises(ValueError, match="batch_size"):
        run({"zero": Recorder()}, batch_size=0)
    for chunk in (0, True, 2.5):  # the fixed-shape and the variable harness refuse a bad chunk alike
        with pytest.raises(ValueError, match="embed_chunk must be an integer >= 1"):
            run({"zero": Recorder()}, embed_chunk=chunk)
        with pytest.raises(ValueError, match="embed_chunk must be an integer >= 1"):
            evaluate_variable({"zero": Recorder()}, toy_dataset(), shape=VariableShape(min_way=2, max_way=3),
                              episodes=2, embed_chunk=chunk, progress=False)


def test_library_embedding_learners_embed_once_is_exact() -> None:
    from fewshot.backbones import Conv4
    from fewshot.learners import FineTune, ProtoNet

    torch.manual_seed(0)
    learners: dict[str, Learner] = {"protonet": ProtoNet(Conv4(hidden=8, input_size=16)),
                                    "finetune": FineTune(Conv4(hidden=8, input_size=16), steps=3, lr=0.1)}
    options = {"n_way": N_WAY, "n_shot": N_SHOT, "n_query": N_QUERY, "episodes": 8, "batch_size": 5,
               "progress": False, "permutations": 0}
    fast = evaluate(learners, toy_dataset(size=16), embed_once=True, **options)
    slow = evaluate(learners, toy_dataset(size=16), embed_once=False, **options)
    for name in learners:
        assert torch.equal(fast[name].accuracies, slow[name].accuracies), name
    assert fast.comparisons[0].result.permutation_p_value is None


@pytest.mark.slow
def test_protonet_conv4_on_embedded_omniglot_embed_once_is_exact() -> None:
    from episodes.datasets import load_omniglot
    from fewshot.backbones import create_backbone
    from fewshot.learners import ProtoNet

    torch.manual_seed(0)
    dataset = load_omniglot(split="test")
    learner = ProtoNet(create_backbone("conv4"))
    options = {"n_way": 5, "n_shot": 1, "n_query": 15, "episodes": 40, "seed": 0, "progress": False}
    fast = evaluate({"protonet": learner}, dataset, embed_once=True, **options)["protonet"]
    slow = evaluate({"protonet": learner}, dataset, embed_once=False, **options)["protonet"]
    assert torch.equal(fast.accuracies, slow.accuracies)
    assert fast.mean > 0.3  # a random Conv4 is already far above chance (0.2) on Omniglot
