"""Every Mini-ImageNet paper setting runs end to end through the real CLI, on synthetic pixels in a real format.

No Mini-ImageNet pixels exist here, so every experiment file whose dataset is Mini-ImageNet (found by
composing each file of configs/experiment/: ProtoNet, MAML, Baseline, Baseline++, RFS, ...) is trained for a
step or an epoch on random images written as learn2learn's
``mini-imagenet-cache-{split}.pkl`` with the Ravi & Larochelle class counts (64/16/20), then tested.
What this checks is the wiring of each file (data, backbone, learner, trainer, validation, test),
not the accuracy.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from test_cli import REPO, fewshot

PER_CLASS = 21  # enough for ProtoNet's 1 + 15 training images and Baseline++'s 5 + 16 test images per class

EXPERIMENTS = REPO / "fewshot" / "configs" / "experiment"


def short_run(cfg: DictConfig) -> list[str]:
    """Overrides that shorten the run of a composed experiment, read from its trainer, learner and backbone;
    everything else is the experiment file as a user runs it."""
    short = ["evaluation.episodes=2"]
    # A two-stage trainer (pretrain_episodic) holds its stages under trainer.pretrain and trainer.episodic.
    stages = [f"trainer.{k}" for k in ("pretrain", "episodic") if k in cfg.trainer] or ["trainer"]
    for key in stages:
        trainer = OmegaConf.select(cfg, key)
        if "steps" in trainer:  # episodic training: validate and checkpoint within the few steps
            one_step = "inner_steps" in cfg.learner  # second-order inner loops (MAML family): one step is enough
            steps = 1 if one_step else 2
            short += [f"{key}.steps={steps}", f"{key}.val_every={steps}", f"{key}.val_episodes=2",
                      f"{key}.checkpoint_every=1", f"{key}.log_every=1"]
            if "meta_batch" in trainer:  # one task per step: the wiring is the same with 8 (MetaOptNet: 90 s)
                short.append(f"{key}.meta_batch=1")
        if "epochs" in trainer:  # supervised pretraining: one epoch
            short.append(f"{key}.epochs=1")
    if OmegaConf.is_interpolation(cfg.backbone, "input_size"):
        # A backbone built for the dataset's image size (ResNet12 on 1280 84x84 images takes minutes on 2 CPU
        # cores): 32x32 keeps the wiring check short. A backbone with a fixed input (conv4_84) keeps 84x84.
        short.append("dataset.loader.image_size=32")
    return short


def mini_imagenet_runs() -> dict[str, list[str]]:
    """Every experiment file whose composed dataset is Mini-ImageNet, with the overrides that shorten it."""
    runs = {}
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        for path in sorted(EXPERIMENTS.glob("*.yaml")):  # bases (experiment/base/) are not experiments
            cfg = compose("train", overrides=[f"experiment={path.stem}"], return_hydra_config=True)
            if cfg.hydra.runtime.choices.dataset == "mini_imagenet":
                runs[path.stem] = short_run(cfg)
    return runs


RUNS = mini_imagenet_runs()
#: One row per method runs end to end (its first setting, e.g. 5w1s): the other rows of a method differ from it in
#: episode keys only, which tests/test_configs.py composes and instantiates for every file. About 20 s a row.
END_TO_END = sorted({name.split("_")[0]: name for name in sorted(RUNS, reverse=True)}.values())


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """learn2learn's layout with the real class counts: 64 train, 16 val, 20 test classes of random images."""
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(0)
    for split, classes, first in (("train", 64, 0), ("val", 16, 64), ("test", 20, 80)):
        data = {"image_data": rng.integers(0, 256, (classes * PER_CLASS, 84, 84, 3), dtype=np.uint8),
                "class_dict": {f"n{first + c:08d}": list(range(c * PER_CLASS, (c + 1) * PER_CLASS))
                               for c in range(classes)}}
        (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(data))
    return root


def test_discovery_finds_every_mini_imagenet_file() -> None:
    assert RUNS and set(RUNS) == {p.stem for p in EXPERIMENTS.glob("*mini_imagenet*.yaml")}
    assert {name.split("_")[0] for name in END_TO_END} == {name.split("_")[0] for name in RUNS}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", END_TO_END)
def test_experiment_runs_end_to_end(experiment: str, mini_imagenet: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fewshot("train", f"experiment={experiment}", f"dataset.loader.root={mini_imagenet}", *RUNS[experiment],
            "progress=false", f"hydra.run.dir={run}")
    document = json.loads((run / "results.json").read_text())
    (result,) = document["results"]
    method, setting = experiment.split("_")[0], experiment.rsplit("_", 1)[1]  # e.g. "maml", "5w5s"
    way, shot = setting[:-1].split("w")
    assert (result["spec"]["n_way"], result["spec"]["n_shot"]) == (int(way), int(shot))
    (learner,) = result["learners"]
    assert len(learner["accuracies"]) == 2 and all(0.0 <= a <= 1.0 for a in learner["accuracies"])
    assert document["provenance"]["config"]["name"] == f"{method}-mini_imagenet-{setting}"
    assert (run / "checkpoints" / "last.ckpt").is_file()
