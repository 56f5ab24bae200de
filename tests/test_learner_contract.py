"""The learner contract, checked on every learner YAML (built from its config on a small Conv4): ``predict`` returns
finite (B, n_way*n_query, n_way) logits, changes no parameter or buffer, never reads the query labels, is
deterministic, and an inductive learner (``transductive = False``) scores each query on its own.

Meta-learners take one meta-training step first and learners that keep base-class statistics are fitted, so the
check runs on non-trivial weights and state. Per-method tests keep what is specific to each method."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from episodes import EpisodeBatch, EpisodeSampler, FewShotDataset
from fewshot.learners import Learner, MetaLearner, OuterOptimizer

LEARNERS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "learner")
                  .glob("*.yaml"))
N_WAY, N_SHOT, N_QUERY = 5, 2, 3


@pytest.fixture(scope="module", autouse=True)
def hydra_context() -> Iterator[None]:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def data() -> FewShotDataset:
    """8 classes of 6 random 28x28 grey images, each class around its own template (learnable, not trivial)."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(8, 1, 1, 28, 28, generator=g) * 255
    images = (templates + 40 * torch.randn(8, 6, 1, 28, 28, generator=g)).clamp(0, 255).to(torch.uint8)
    return FewShotDataset.from_tensors(images.flatten(0, 1), torch.arange(8).repeat_interleave(6),
                                       [f"c{i}" for i in range(8)], name="contract")


def build(option: str, data: FewShotDataset) -> Learner:
    cfg = compose("train", overrides=[f"learner={option}", "backbone.hidden=8", "episode=5w1s"])
    if "steps" in cfg.learner:  # fine-tuned heads: a few steps are enough to exercise them
        cfg.learner.steps = 3
    torch.manual_seed(0)
    learner = instantiate(cfg.learner, backbone=instantiate(cfg.backbone))
    learner.fit_base_classes(data)
    if isinstance(learner, MetaLearner):
        learner.configure_optimizer(OuterOptimizer(lr=1e-3))
        learner.meta_train_step(EpisodeSampler(data, n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY,
                                               seed=1).batch([0, 1]))
    return learner


def state(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("option", LEARNERS)
def test_predict_keeps_the_contract(option: str, data: FewShotDataset) -> None:
    learner = build(option, data)
    batch = EpisodeSampler(data, n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=0).batch([0, 1])
    before = state(learner)
    modes = [m.training for m in learner.modules()]

    logits = learner.predict(batch)
    assert logits.shape == (2, N_WAY * N_QUERY, N_WAY)
    assert bool(torch.isfinite(logits).all())
    after = state(learner)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"predict changed {changed}"
    assert [m.training for m in learner.modules()] == modes, "predict left a module in another train/eval mode"

    # Deterministic, and blind to the query labels (shuffled labels: the same logits, bit for bit).
    shuffled = dataclasses.replace(batch, query_y=batch.query_y[:, torch.randperm(batch.query_y.shape[1])])
    torch.testing.assert_close(learner.predict(shuffled).detach(), logits.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("option", LEARNERS)
def test_an_inductive_learner_scores_each_query_on_its_own(option: str, data: FewShotDataset) -> None:
    """Keep a permuted subset of the queries: an inductive learner gives them the same logits (to float rounding)."""
    learner = build(option, data)
    if learner.transductive:
        pytest.skip(f"{option} is transductive: its queries may depend on each other")
    batch = EpisodeSampler(data, n_way=N_WAY, n_shot=N_SHOT, n_query=N_QUERY, seed=0).batch([0, 1])
    keep = torch.tensor([7, 0, 13, 5])  # of the 15 queries of each task
    fewer: EpisodeBatch = dataclasses.replace(batch, query_x=batch.query_x[:, keep], query_y=batch.query_y[:, keep])
    torch.testing.assert_close(learner.predict(fewer).detach(), learner.predict(batch)[:, keep].detach(), rtol=1e-5,
                               atol=1e-5)
