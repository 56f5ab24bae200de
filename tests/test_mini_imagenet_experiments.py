"""Every Mini-ImageNet paper setting runs end to end through the real CLI, on synthetic pixels in a real format.

No Mini-ImageNet pixels exist here, so each method's experiment file (ProtoNet, MAML, Baseline,
Baseline++, RFS) is trained for a step or an epoch on random images written as learn2learn's
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
from test_cli import fewshot

PER_CLASS = 21  # enough for ProtoNet's 1 + 15 training images and Baseline++'s 5 + 16 test images per class

# Overrides that shorten each run; everything else is the experiment file as a user runs it.
SHORT_META = ["trainer.steps=2", "trainer.val_every=2", "trainer.val_episodes=2", "trainer.checkpoint_every=1",
              "trainer.log_every=1", "evaluation.episodes=2"]
SHORT_PRETRAIN = ["trainer.epochs=1", "evaluation.episodes=2"]
RUNS = {
    "protonet_mini_imagenet_5w1s": SHORT_META,
    "maml_mini_imagenet_5w5s": [*SHORT_META, "trainer.steps=1", "trainer.val_every=1"],
    "baseline_mini_imagenet_5w1s": SHORT_PRETRAIN,
    "baselinepp_mini_imagenet_5w5s": SHORT_PRETRAIN,
    # ResNet12 on 1280 84x84 images takes minutes on 2 CPU cores; 32x32 keeps the wiring check short.
    "rfs_mini_imagenet_5w1s": [*SHORT_PRETRAIN, "dataset.loader.image_size=32"],
}


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


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(RUNS))
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
