"""The Python API refuses, where a value enters, what would later give a wrong number or a crash deep inside torch;
each error says what was expected."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import get_class
from omegaconf import OmegaConf

from episodes import FewShotDataset
from fewshot.backbones import create_backbone
from fewshot.evaluation import evaluate
from fewshot.learners import ProtoNet
from fewshot.training.trainers import SupervisedPretrainer

IMAGES = torch.randint(0, 255, (40, 1, 16, 16), dtype=torch.uint8)
OFFSETS = torch.arange(0, 41, 4)
NAMES = tuple(f"c{i}" for i in range(10))


def dataset() -> FewShotDataset:
    return FewShotDataset(IMAGES, OFFSETS, NAMES, "tiny")


CASES: list[tuple[str, Callable[[], object], str]] = [
    ("a std of 0 (division by zero in to_float)",
     lambda: FewShotDataset(IMAGES, OFFSETS, NAMES, "tiny", std=(0.0,)), "finite std > 0"),
    ("three channel statistics for grey images",
     lambda: FewShotDataset(IMAGES, OFFSETS, NAMES, "tiny", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0)),
     "3 normalisation values for 1-channel images; give 1"),
    ("two classes of one name (re-tests match classes by name)",
     lambda: FewShotDataset(IMAGES, OFFSETS, ("a",) * 10, "tiny"), "class names must be unique"),
    ("a subset of classes that do not exist", lambda: dataset().subset([3, 99]), r"class indices in \[0, 10\)"),
    ("pretraining milestones out of order",
     lambda: SupervisedPretrainer(epochs=10, batch_size=8, lr=0.1, milestones=[5, 2]), "increasing epochs"),
    ("a milestone before the first epoch",
     lambda: SupervisedPretrainer(epochs=10, batch_size=8, lr=0.1, milestones=[0, 5]), "increasing epochs >= 1"),
    ("a learning-rate factor of 0", lambda: SupervisedPretrainer(epochs=1, batch_size=8, lr=0.1, gamma=0.0),
     "0 < gamma <= 1"),
    ("a negative momentum", lambda: SupervisedPretrainer(epochs=1, batch_size=8, lr=0.1, momentum=-1.0),
     "0 <= momentum < 1"),
    ("an unknown pretraining optimizer",
     lambda: SupervisedPretrainer(epochs=1, batch_size=8, lr=0.1, optimizer="adamw"), "unknown optimizer"),
    ("a negative number of permutations, refused before any episode is scored",
     lambda: evaluate({"p": ProtoNet(create_backbone("conv4", hidden=8, in_channels=1, input_size=16))}, dataset(),
                      n_way=3, n_shot=1, n_query=1, episodes=4, seed=0, progress=False, permutations=-1),
     "permutations must be an integer >= 0"),
]


@pytest.mark.parametrize(("what", "build", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_values_are_refused_where_they_enter(what: str, build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_float_features_need_no_image_statistics() -> None:
    features = torch.randn(40, 5)
    assert dataset().with_images(features).images.dtype == torch.float32  # (N, D) features are not images


LEARNERS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "learner")
                  .glob("*.yaml"))


def float_keywords(option: str) -> tuple[type, dict, list[str]]:
    """The learner class of ``learner=<option>``, its config's keywords and those the constructor types as float."""
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"learner={option}"])
    keywords = {k: v for k, v in OmegaConf.to_container(cfg.learner, resolve=True).items() if k != "_target_"}
    cls = get_class(cfg.learner._target_)
    hints = typing.get_type_hints(cls.__init__)
    return cls, keywords, [k for k in keywords if hints.get(k) in (float, float | None)]


@pytest.mark.parametrize("option", LEARNERS)
def test_every_learner_refuses_nan_for_each_real_valued_setting(option: str) -> None:
    cls, keywords, names = float_keywords(option)
    accepted = []
    for name in names:
        backbone = create_backbone("conv4", hidden=8, in_channels=1, input_size=28)
        try:
            cls(backbone, **{**keywords, name: float("nan")})
        except (ValueError, TypeError) as err:
            assert name in str(err), f"{option}: the error for {name}=nan does not name it: {err}"
        else:
            accepted.append(name)
    assert not accepted, f"learner={option} accepts NaN for {accepted}"


def test_pixels_scale_to_the_cpu_quotients_on_every_device() -> None:
    # On CPU to_float divides; on other devices it looks the CPU's quotients up (CUDA's scalar division multiplies
    # by the reciprocal). Both routes must give the same bits: checked here with the table on the CPU.
    from episodes.dataset import pixel_values

    every = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(pixel_values(torch.device("cpu"))[every.long()], every.float() / 255.0)
    assert torch.equal(dataset().to_float(IMAGES[:4]), IMAGES[:4].float() / 255.0)


def test_a_truncated_pickle_names_the_file(tmp_path: Path) -> None:
    import pickle

    from episodes.datasets.pickles import read_learn2learn_pickle

    data = {"image_data": torch.zeros(4, 8, 8, 3, dtype=torch.uint8).numpy(), "class_dict": {"n01": [0, 1, 2, 3]}}
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    path.write_bytes(pickle.dumps(data)[:200])
    with pytest.raises(ValueError, match=f"{path} ends before its pickle does"):
        read_learn2learn_pickle(path)
