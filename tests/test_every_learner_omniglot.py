"""Every learner option (discovered from configs/learner/) runs on real Omniglot well above chance: built by its own
config on the shared pretrained Conv4 (benchmarks/results/pretrained/), meta-trained for a few steps when it is a
meta-learner, its base-class statistics fitted when it keeps some, then scored on fixed test episodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from episodes import EpisodeSampler, FewShotDataset
from episodes.datasets import load_omniglot
from fewshot.backbones import load_pretrained, normalise_for
from fewshot.evaluation import evaluate
from fewshot.learners import MetaLearner, OuterOptimizer
from fewshot.training.meta_train import TrainSettings, meta_train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "benchmarks" / "results" / "pretrained" / "conv4_omniglot_trainval" / "backbone.safetensors"
LEARNERS = sorted(p.stem for p in (ROOT / "fewshot" / "configs" / "learner").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_context() -> Iterator[None]:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def splits() -> tuple[FewShotDataset, FewShotDataset]:
    """200 training classes and the 1692 test classes of the Vinyals split."""
    train = load_omniglot(split="train")
    return train.subset(torch.randperm(train.num_classes, generator=torch.Generator().manual_seed(0))[:200]), \
        load_omniglot(split="test")


@pytest.mark.parametrize("option", LEARNERS)
def test_learner_scores_real_omniglot_well_above_chance(option: str, splits: tuple[FewShotDataset, FewShotDataset]
                                                        ) -> None:
    cfg = compose("train", overrides=[f"learner={option}"])
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone)
    load_pretrained(backbone, WEIGHTS)
    train, test = (normalise_for(d, backbone.spec) for d in splits)
    learner = instantiate(cfg.learner, backbone=backbone)
    if isinstance(learner, MetaLearner):
        learner.configure_optimizer(OuterOptimizer(lr=1e-3))
        sampler = EpisodeSampler(train, n_way=5, n_shot=1, n_query=5, seed=0)
        meta_train(learner, sampler, settings=TrainSettings(steps=30, meta_batch=2), progress=False)
    learner.fit_base_classes(train)
    result = evaluate({option: learner}, test, n_way=5, n_shot=1, n_query=5, episodes=20, seed=3, batch_size=10,
                      progress=False, permutations=0)
    assert result[option].mean > 0.4, result[option].mean  # twice chance (0.2); measured 0.45-0.99
