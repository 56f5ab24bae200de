"""Every option of every config group composes and instantiates; unknown keys and options fail."""

from __future__ import annotations

import importlib
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
from synthetic_datasets import SYNTHETIC_COPIES

from episodes import EpisodeSampler, FewShotDataset
from fewshot.learners import Learner, MetaLearner, OuterOptimizer
from fewshot.training import EpisodicTrainer, PretrainThenEpisodic, SupervisedPretrainer
from fewshot.training.meta_train import TrainSettings
from fewshot.training.pretrain import pretrain_backbone

CONFIGS = Path(__file__).resolve().parent.parent / "fewshot" / "configs"


def options(group: str) -> list[str]:
    """The user-facing options of a config group, read from its folder: bases (a subfolder such as
    experiment/base/, or a file named _*.yaml) are inherited through `defaults`, not chosen."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if not p.name.startswith("_"))


def experiment_bases() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "experiment" / "base").glob("*.yaml"))


def own_defaults(path: Path) -> list[str]:
    """The entries of a YAML file's own `defaults` list, as written (``override /group: option`` as such)."""
    entries = OmegaConf.load(path).get("defaults", [])
    return [e if isinstance(e, str) else " ".join(f"{k}: {v}" for k, v in e.items()) for e in entries]


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


IMAGE_FOLDER_LOADER = "episodes.datasets.load_image_folder"
MINI_IMAGENET_LOADER = "episodes.datasets.load_mini_imagenet"


def data_overrides(loader: DictConfig, image_folder: Path, mini_imagenet: Path, key: str = "dataset") -> list[str]:
    """Point a loader without embedded data (root: ???) at the small synthetic copy in its real format."""
    if not OmegaConf.is_missing(loader, "root"):
        return []
    if loader._target_ == IMAGE_FOLDER_LOADER:
        return [f"{key}.loader.root={image_folder}", f"{key}.loader.image_size=12"]
    if loader._target_ == MINI_IMAGENET_LOADER:
        return [f"{key}.loader.root={mini_imagenet}"]
    if loader._target_ in SYNTHETIC_COPIES:  # tests/synthetic_datasets.py: a small copy in the real layout, 12x12
        return [f"{key}.loader.root={SYNTHETIC_COPIES[loader._target_](image_folder.parent)}",
                f"{key}.loader.image_size=12"]
    pytest.fail(f"{loader._target_} needs files (root: ???) and this test has no synthetic copy in its format: add one")


def train_config(*overrides: str) -> DictConfig:
    return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_instantiates_all_its_splits(option: str, image_folder: Path, mini_imagenet: Path) -> None:
    loader = train_config(f"dataset={option}").dataset.loader
    cfg = train_config(f"dataset={option}", *data_overrides(loader, image_folder, mini_imagenet))
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
    loader = compose("eval", overrides=["run=/nowhere", f"test_dataset={option}"]).test_dataset.loader
    cfg = compose("eval", overrides=["run=/nowhere", f"test_dataset={option}",
                                     *data_overrides(loader, image_folder, mini_imagenet, key="test_dataset")])
    data = instantiate(cfg.test_dataset.loader, split=cfg.test_dataset.splits.test)
    assert data.images.shape[1] == cfg.test_dataset.channels
    if "fractions" in loader and list(loader.fractions) == ["test"]:  # a user's folder, tested on all its classes
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


def _backbone_option(option: str) -> object:
    """A backbone option, marked ``interop`` when its model comes from timm or torchvision."""
    _, from_library, _ = str(OmegaConf.load(CONFIGS / "backbone" / f"{option}.yaml").name).partition(":")
    return pytest.param(option, marks=pytest.mark.interop) if from_library else option


@pytest.mark.parametrize("option", [_backbone_option(o) for o in options("backbone")])
def test_every_backbone_instantiates_and_embeds(option: str) -> None:
    cfg = train_config(f"backbone={option}")
    library, sep, _ = cfg.backbone.name.partition(":")
    if sep:
        try:
            importlib.import_module(library)
        except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError
            pytest.skip(f"backbone={option} needs {library}, which does not import here ({type(err).__name__})")
    backbone = instantiate(cfg.backbone)
    channels, size = backbone.spec.in_channels, backbone.spec.input_size
    with torch.no_grad():
        features = backbone.eval()(torch.zeros(2, channels, *size))
    assert features.shape == (2, backbone.feature_dim)
    # The input the backbone is built for is the one its config names (a fixed one, e.g. conv4_84's 3x84x84,
    # or the dataset's channels and image size).
    expected = OmegaConf.to_container(cfg.backbone, resolve=True)
    assert channels == expected["in_channels"]
    assert tuple(size) == (expected["input_size"],) * 2


@pytest.mark.parametrize("option", options("learner"))
def test_every_learner_instantiates_on_its_backbone_and_predicts(option: str) -> None:
    short = ["learner.steps=2"] if "steps" in train_config(f"learner={option}").learner else []  # fitted heads
    cfg = train_config(f"learner={option}", "backbone.hidden=8", "episode=5w1s", *short)
    learner = instantiate(cfg.learner, backbone=instantiate(cfg.backbone))
    assert isinstance(learner, Learner)
    data = FewShotDataset.from_tensors(torch.randint(0, 256, (5 * 3, 1, 28, 28), dtype=torch.uint8),
                                       torch.arange(5).repeat_interleave(3), list("abcde"), name="t")
    batch = EpisodeSampler(data, n_way=5, n_shot=1, n_query=2, seed=0).batch([0, 1])
    assert learner.predict(batch).shape == (2, 10, 5)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_builds_its_settings(option: str) -> None:
    cfg = train_config(f"trainer={option}").trainer
    trainer = instantiate(cfg, _convert_="all")
    assert callable(trainer.fit) and trainer.distributed is False  # the Trainer protocol
    stages = {"pretrain": trainer.pretrain, "episodic": trainer.episodic} if isinstance(
        trainer, PretrainThenEpisodic) else {"": trainer}
    for key, stage in stages.items():
        values = OmegaConf.to_container(cfg[key] if key else cfg, resolve=True)
        if isinstance(stage, EpisodicTrainer):
            assert isinstance(stage.optimizer, OuterOptimizer)
            assert stage.settings == TrainSettings(**{k: values[k] for k in ("steps", "meta_batch", "val_every",
                                                                           "checkpoint_every", "log_every")})
        else:
            assert isinstance(stage, SupervisedPretrainer)
            keywords = {k: v for k, v in values.items() if k not in ("_target_", "distributed")}
            inspect.signature(pretrain_backbone).bind(None, None, seed=0, **keywords)  # every key is a real keyword
            assert stage.keywords["epochs"] == values["epochs"]


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
    trainer = instantiate(cfg.trainer, _convert_="all")
    assert isinstance(trainer, EpisodicTrainer | PretrainThenEpisodic) == isinstance(learner, MetaLearner)
    # A test protocol of at least 600 fixed episodes; a citation; the published numbers (a reproduction-ledger entry,
    # `ledger: <id>`, fewshot/evaluation/ledger.yaml), or a statement that none exist (the README's short job,
    # omniglot_quick, cites the recipe it shortens and says it has none).
    assert cfg.evaluation.episodes >= 600
    assert "20" in text.split("\n")[1]  # the year of the citation
    assert cfg.get("ledger") is not None or "(published: none)" in text
    if isinstance(learner, MetaLearner) and hasattr(learner, "n_way"):
        assert cfg.episode.train_n_way == cfg.episode.n_way  # a MAML head is built for one number of ways


@pytest.mark.parametrize("base", experiment_bases())
def test_every_experiment_base_is_global_and_inherited(base: str) -> None:
    """A base holds what a method family's rows share; it is not an option (options() skips it), and is used."""
    assert (CONFIGS / "experiment" / "base" / f"{base}.yaml").read_text().startswith("# @package _global_")
    users = [o for o in options("experiment") if f"base/{base}" in own_defaults(CONFIGS / "experiment" / f"{o}.yaml")]
    assert users, f"experiment/base/{base}.yaml is inherited by no experiment"
    assert base not in options("experiment")


def test_experiment_options_exclude_the_bases() -> None:
    assert options("experiment") and not set(options("experiment")) & {f"base/{b}" for b in experiment_bases()}
    assert all(not o.startswith("_") for o in options("experiment"))


@pytest.mark.parametrize("option", [o for o in options("learner")
                                    if [d for d in own_defaults(CONFIGS / "learner" / f"{o}.yaml") if d != "_self_"]])
def test_learner_variants_are_their_base_plus_their_own_keys(option: str) -> None:
    """A variant (e.g. fomaml: `defaults: [maml, _self_]`, first_order: true) composes to its base with its own
    keys set on top, and each of its own keys changes something (no restated copy of the base)."""
    raw = OmegaConf.load(CONFIGS / "learner" / f"{option}.yaml")
    (base,) = [d for d in own_defaults(CONFIGS / "learner" / f"{option}.yaml") if d != "_self_"]
    assert base in options("learner")
    parent = train_config(f"learner={base}").learner
    own = {k: v for k, v in raw.items() if k != "defaults"}
    assert own and all(k in parent and parent[k] != v for k, v in own.items())
    assert train_config(f"learner={option}").learner == OmegaConf.merge(parent, own)


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
                                             ("trainer.optimizer", "learning_rate"), ("trainer", "warmup")])
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
    assert compose("pretrain").trainer._target_ == "fewshot.training.SupervisedPretrainer"
    assert compose("report", overrides=["dir=/a/sweep"]).include_eval is False
    with pytest.raises(ConfigCompositionException):
        compose("eval", overrides=["run=/a/run", "test_dataset=nowhere"])
