"""benchmarks/easyfsl_peer.py on 20 leaderboard episodes (run by .ci/interop, where easyfsl and torchvision import;
skipped elsewhere): easyfsl's ProtoNet and 1-shot SimpleShot score every episode as this library's do; its 5-shot
SimpleShot is exactly cosine nearest centroid on the same CL2N features (the one scoring difference the report
names); its TIM gets this library's TIM settings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners import ProtoNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import easyfsl_peer  # benchmarks/easyfsl_peer.py

pytestmark = pytest.mark.interop
EPISODES = 20


@pytest.fixture(scope="module")
def inputs() -> tuple[nn.Module, object, torch.Tensor]:
    """The pretrained Conv4, the normalised test split and a base mean (any centre will do: the mean feature of
    the first 200 test images)."""
    for name in ("torchvision", "easyfsl.methods", "easyfsl.utils"):
        try:
            importlib.import_module(name)
        except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError
            pytest.skip(f"{name} does not import here ({type(err).__name__}: {err}); .ci/interop installs easyfsl")
    backbone, test = easyfsl_peer.load_inputs()
    with torch.no_grad():
        centre = backbone(test.to_float(test.images[:200])).mean(0)
    return backbone, test, centre


def both(learner, model, test, n_way: int, n_shot: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = {"n_way": n_way, "n_shot": n_shot, "episodes": EPISODES}
    ours, _ = easyfsl_peer.fewshot_correct(learner, test, batch_size=8, **shape)
    theirs, _ = easyfsl_peer.easyfsl_correct(model, test, **shape)
    return ours, theirs


@pytest.mark.parametrize(("method", "n_shot"), [("protonet", 1), ("protonet", 5), ("simpleshot", 1)])
def test_same_accuracy_on_every_episode(inputs, method: str, n_shot: int) -> None:
    backbone, test, centre = inputs
    ours, theirs = both(*easyfsl_peer.build_pair(method, backbone, centre), test, 5, n_shot)
    assert ours.shape == (EPISODES,) and int(ours.min()) >= 0 and int(ours.max()) <= 75
    assert torch.equal(ours, theirs)
    row = easyfsl_peer.compare(ours, theirs, 75)
    assert row["episodes_differing"] == 0 and row["largest_episode_difference"] == 0.0
    assert row["fewshot"] == row["easyfsl"] and row["p_value"] == 1.0


def test_easyfsl_simpleshot_is_cosine_to_the_same_centroids(inputs) -> None:
    """5-shot: easyfsl's SimpleShot equals this library's ProtoNet with cosine distance on CL2N features."""
    backbone, test, centre = inputs

    class CL2N(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.backbone(x) - centre, dim=-1)

    _, easy = easyfsl_peer.build_pair("simpleshot", backbone, centre)
    ours, theirs = both(ProtoNet(CL2N(), distance="cosine").eval(), easy, test, 5, 5)
    assert torch.equal(ours, theirs)


def test_tim_pair_shares_the_config_settings(inputs) -> None:
    backbone, _, centre = inputs
    ours, easy = easyfsl_peer.build_pair("tim", backbone, centre)
    config = easyfsl_peer.tim_settings()
    assert (ours.steps, ours.lr, ours.temperature) == (config["steps"], config["lr"], config["temperature"])
    assert (easy.fine_tuning_steps, easy.fine_tuning_lr, easy.temperature) == (ours.steps, ours.lr, ours.temperature)
    assert (easy.cross_entropy_weight, easy.marginal_entropy_weight, easy.conditional_entropy_weight) == (
        ours.ce_weight, ours.marginal_weight, ours.conditional_weight)
    assert easy.feature_normalization == 2
    assert all(not p.requires_grad for p in easy.backbone.parameters())
    assert all(p.requires_grad for p in backbone.parameters())  # easyfsl froze its own copy only
