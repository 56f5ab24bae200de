"""Every option of every config group composes and instantiates; unknown keys and options fail."""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from episodes import EpisodeSampler, FewShotDataset
from fewshot.learners import Learner, MetaLearner, OuterOptimizer
from fewshot.training.meta_train import TrainSettings
from fewshot.training.pretrain import pretrain_backbone

CONFIGS = Path(__file__).resolve().parent.parent / "fewshot" / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def hydra_context() -> Iterator[None]:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<class>/*.png: 10 RGB classes of 4 random 12x12 images."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"class{c}").mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """learn2learn's cache layout: mini-imagenet-cache-{split}.pkl with image_data and class_dict (3 classes x 2)."""
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(1)
    for k, split in enumerate(("train", "val", "test")):
        data = {"image_data": rng.integers(0, 256, (6, 84, 84, 3), dtype=np.uint8),
                "class_dict": {f"n0{k}00000{c}": [2 * c, 2 * c + 1] for c in range(3)}}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data))
    return root


def data_overrides(option: str, image_folder: Path, mini_imagenet: Path, key: str = "dataset") -> list[str]:
    """Point the datasets without embedded data at the small synthetic copies in the real formats."""
    if option == "folder":
        return [f"{key}.loader.root={image_folder}", f"{key}.loader.image_size=12"]
    if option == "mini_imagenet":
        return [f"{key}.loader.root={mini_imagenet}"]
    return []


def train_config(*overrides: str) -> DictConfig:
    return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_instantiates_all_its_splits(option: str, image_folder: Path, mini_imagenet: Path) -> None:
    cfg = train_config(f"dataset={option}", *data_overrides(option, image_folder, mini_imagenet))
    for role in ("train", "val", "test"):
        split = cfg.dataset.splits[role]
        if split is None:
            continue
        data = instantiate(cfg.dataset.loader, split=split)
        assert isinstance(data, FewShotDataset)
        assert data.images.shape[1] == cfg.dataset.channels
        assert data.images.shape[-1] == cfg.dataset.loader.image_size
    assert cfg.dataset.splits.train is not None and cfg.dataset.splits.test is not None


@pytest.mark.parametrize("option", options("test_dataset"))
def test_every_test_dataset_instantiates(option: str, image_folder: Path, mini_imagenet: Path) -> None:
    cfg = compose("eval", overrides=["run=/nowhere", f"test_dataset={option}",
                                     *data_overrides(option, image_folder, mini_imagenet, key="test_dataset")])
    data = instantiate(cfg.test_dataset.loader, split=cfg.test_dataset.splits.test)
    assert data.images.shape[1] == cfg.test_dataset.channels
    if option == "folder":  # a user's folder is tested on every one of its classes
        assert data.num_classes == 10


@pytest.mark.parametrize("option", options("episode"))
def test_every_episode_option_samples(option: str) -> None:
    ep = train_config(f"episode={option}").episode
    way, shot = (int(x) for x in option.removesuffix("s").split("w"))
    assert (ep.n_way, ep.n_shot) == (way, shot)
    data = FewShotDataset.from_tensors(torch.zeros(way * 20, 1, 4, 4, dtype=torch.uint8),
                                       torch.arange(way).repeat_interleave(20), [str(c) for c in range(way)], name="t")
    batch = EpisodeSampler(data, n_way=ep.train_n_way, n_shot=ep.train_n_shot, n_query=ep.train_n_query,
                           seed=0).batch([0])
    assert batch.support_x.shape[1] == ep.train_n_way * ep.train_n_shot


@pytest.mark.parametrize("option", options("backbone"))
def test_every_backbone_instantiates_and_embeds(option: str) -> None:
    cfg = train_config(f"backbone={option}")
    backbone = instantiate(cfg.backbone)
    channels, size = backbone.spec.in_channels, backbone.spec.input_size
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(2, channels, *size))
    assert features.shape == (2, backbone.feature_dim)
    if option == "conv4_84":
        assert (channels, size) == (3, (84, 84))


@pytest.mark.parametrize("option", options("learner"))
def test_every_learner_instantiates_on_its_backbone_and_predicts(option: str) -> None:
    cfg = train_config(f"learner={option}", "backbone.hidden=8", "learner.steps=2"
                       if option in ("finetune", "baselinepp") else "episode=5w1s")
    learner = instantiate(cfg.learner, backbone=instantiate(cfg.backbone))
    assert isinstance(learner, Learner)
    data = FewShotDataset.from_tensors(torch.randint(0, 256, (5 * 3, 1, 28, 28), dtype=torch.uint8),
                                       torch.arange(5).repeat_interleave(3), list("abcde"), name="t")
    batch = EpisodeSampler(data, n_way=5, n_shot=1, n_query=2, seed=0).batch([0, 1])
    assert learner.predict(batch).shape == (2, 10, 5)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_builds_its_settings(option: str) -> None:
    trainer = train_config(f"trainer={option}").trainer
    values = OmegaConf.to_container(trainer, resolve=True)
    if trainer.kind == "meta":
        assert isinstance(instantiate(trainer.optimizer), OuterOptimizer)
        settings = {k: v for k, v in values.items() if k not in ("kind", "optimizer", "val_episodes", "distributed")}
        assert TrainSettings(**settings).steps == trainer.steps
    else:
        assert trainer.kind == "supervised"
        keywords = {k: v for k, v in values.items() if k != "kind"}
        inspect.signature(pretrain_backbone).bind(None, None, seed=0, **keywords)  # every key is a real keyword


def test_evaluation_settings_follow_the_episode() -> None:
    cfg = train_config("episode=20w5s")
    assert [list(s) for s in cfg.evaluation.settings] == [[20, 5]]
    assert cfg.evaluation.episodes >= 600


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_composes_and_builds_its_learner(option: str) -> None:
    text = (CONFIGS / "experiment" / f"{option}.yaml").read_text()
    assert text.startswith("# @package _global_")
    cfg = train_config(f"experiment={option}")
    learner = instantiate(cfg.learner, backbone=instantiate(cfg.backbone))
    assert isinstance(learner, Learner)
    assert (cfg.trainer.kind == "meta") == isinstance(learner, MetaLearner)
    if option != "omniglot_quick":  # the paper rows: test protocol of at least 600 fixed episodes, a citation
        assert cfg.evaluation.episodes >= 600
        assert "20" in text.split("\n")[1]  # the year of the citation
        assert "%" in text or "(published: none)" in text  # the published number, or a statement that none exists
    if isinstance(learner, MetaLearner) and hasattr(learner, "n_way"):
        assert cfg.episode.train_n_way == cfg.episode.n_way  # a MAML head is built for one number of ways


def test_paper_rows_state_their_settings() -> None:
    maml = train_config("experiment=maml_mini_imagenet_5w1s")
    assert (maml.backbone.hidden, maml.learner.inner_lr, maml.learner.inner_steps, maml.learner.eval_inner_steps,
            maml.trainer.meta_batch, maml.learner.first_order) == (32, 0.01, 5, 10, 4, False)
    assert train_config("experiment=fomaml_omniglot_5w1s").learner.first_order
    proto = train_config("experiment=protonet_mini_imagenet_5w1s").episode
    assert (proto.train_n_way, proto.train_n_shot, proto.train_n_query) == (30, 1, 15)
    omniglot = train_config("experiment=protonet_omniglot_20w5s")
    assert (omniglot.episode.train_n_way, omniglot.episode.train_n_query, omniglot.dataset.splits.train) == (
        60, 5, "trainval")


@pytest.mark.parametrize("override", ["trainer.bogus=1", "learner.distnace=cosine", "learner=protonett",
                                      "backbone=conv5", "dataset.loader.rooot=/x"])
def test_an_unknown_key_or_option_fails_to_compose(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        train_config(override)


@pytest.mark.parametrize(("group", "key"), [("learner", "distnace"), ("backbone", "hiden"),
                                             ("trainer.optimizer", "learning_rate")])
def test_typed_constructors_reject_an_added_unknown_key(group: str, key: str) -> None:
    cfg = train_config(f"+{group}.{key}=1")
    target = OmegaConf.select(cfg, group)
    with pytest.raises(InstantiationException, match=key):
        if group == "learner":
            instantiate(target, backbone=instantiate(cfg.backbone))
        else:
            instantiate(target)


def test_other_apps_compose() -> None:
    assert compose("eval", overrides=["run=/a/run"]).checkpoint == "best"
    assert compose("pretrain").trainer.kind == "supervised"
    assert compose("report", overrides=["dir=/a/sweep"]).include_eval is False
    with pytest.raises(ConfigCompositionException):
        compose("eval", overrides=["run=/a/run", "test_dataset=nowhere"])
