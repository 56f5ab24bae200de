"""Determinism on CPU: the same config and seed give identical episodes, training curves, weights and test
accuracy; another seed gives others (so the equality checks can fail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_reliability import make_image_folder, run_cli, tiny_args

from episodes import EpisodeSampler, FewShotDataset
from fewshot.backbones import create_backbone
from fewshot.evaluation import evaluate
from fewshot.learners import MAML, OuterOptimizer
from fewshot.training.meta_train import TrainSettings, meta_train


def dataset() -> FewShotDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 16, 16), generator=g, dtype=torch.uint8).repeat_interleave(4, 0)
    images = (images.int() + torch.randint(-30, 31, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return FewShotDataset.from_tensors(images, torch.arange(10).repeat_interleave(4), [f"c{i}" for i in range(10)],
                                       name="tiny", mean=(0.5,), std=(0.5,))


def run(seed: int, tmp_path: Path) -> tuple[list[dict[str, float]], dict[str, torch.Tensor], list[float]]:
    """First-order MAML on Conv4 (batch norm) for 6 steps; returns the history, the weights, test accuracies."""
    torch.manual_seed(seed)
    learner = MAML(create_backbone("conv4", in_channels=1, hidden=8, input_size=16), n_way=3, inner_lr=0.4,
                   inner_steps=1, first_order=True)
    learner.configure_optimizer(OuterOptimizer(lr=1e-2))
    sampler = EpisodeSampler(dataset(), n_way=3, n_shot=1, n_query=2, seed=seed)
    result = meta_train(learner, sampler, settings=TrainSettings(steps=6, meta_batch=2, log_every=1),
                        run_dir=tmp_path, progress=False)
    scores = evaluate({"maml": learner}, dataset(), n_way=3, n_shot=1, n_query=2, episodes=6, seed=7, batch_size=3,
                      progress=False)
    return result.history, learner.state_dict(), scores.learners[0].accuracies.tolist()


def test_same_seed_same_curve_weights_and_accuracy(tmp_path: Path) -> None:
    first, second, other = run(0, tmp_path / "a"), run(0, tmp_path / "b"), run(1, tmp_path / "c")
    assert first[0] == second[0] and first[2] == second[2]
    assert all(torch.equal(first[1][k], second[1][k]) for k in first[1])
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()
    assert first[0] != other[0]
    assert not all(torch.equal(first[1][k], other[1][k]) for k in first[1])


def test_episodes_do_not_depend_on_the_global_rng() -> None:
    sampler = EpisodeSampler(dataset(), n_way=3, n_shot=1, n_query=2, seed=3)
    torch.manual_seed(0)
    a = sampler.batch(torch.arange(4))
    torch.manual_seed(1)
    torch.rand(100)
    b = sampler.batch(torch.arange(4))
    assert torch.equal(a.classes, b.classes) and torch.equal(a.support_x, b.support_x)
    assert torch.equal(a.query_x, b.query_x)


@pytest.mark.slow
def test_two_cli_runs_give_identical_metrics_and_results(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    runs = {name: tmp_path / name for name in ("a", "b", "seed1")}
    for name, folder in runs.items():
        extra = ["seed=1"] if name == "seed1" else []
        proc = run_cli("train", [*tiny_args(data), *extra, f"hydra.run.dir={folder}"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout
    metrics = {name: (folder / "metrics.csv").read_bytes() for name, folder in runs.items()}
    results = {name: json.loads((folder / "results.json").read_text())["results"] for name, folder in runs.items()}
    assert metrics["a"] == metrics["b"] and results["a"] == results["b"]
    assert metrics["a"] != metrics["seed1"]
