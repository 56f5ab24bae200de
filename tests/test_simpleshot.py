"""SimpleShot: the feature transforms and nearest centroid against a hand computation, the base-class mean
(fitted by the supervised trainer, saved with the learner), untouched by predict, inductive, learning, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic import TEMPLATES, template_batch
from test_cli import TINY, dataset_args, fewshot, make_folder, output
from test_protonet import TinyNet
from torch import nn

from episodes import FewShotDataset
from fewshot.learners.metric.simpleshot import SimpleShot
from fewshot.training import EpisodeShape, Run, SupervisedPretrainer, TrainingData
from fewshot.training.checkpoint import load_checkpoint, save_checkpoint


class Features(nn.Identity):
    """Identity "backbone" over (N, 4) features."""

    feature_dim = 4


def feature_dataset(n_per_class: int = 3, classes: int = 5, *, seed: int = 0) -> FewShotDataset:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(classes * n_per_class, 4, generator=g, dtype=torch.float64) + 2.0
    return FewShotDataset.from_tensors(rows, torch.arange(classes).repeat_interleave(n_per_class),
                                       [f"c{i}" for i in range(classes)], name="features")


def template_dataset(per_class: int = 8, *, seed: int = 0) -> FewShotDataset:
    """The 20 synthetic template classes of tests/synthetic.py, ``per_class`` noisy float images each."""
    g = torch.Generator().manual_seed(seed)
    images = TEMPLATES.repeat_interleave(per_class, 0) + torch.randn(20 * per_class, 1, 8, 8, generator=g)
    return FewShotDataset.from_tensors(images, torch.arange(20).repeat_interleave(per_class),
                                       [f"t{i}" for i in range(20)], name="templates")


def test_cl2n_is_centering_then_l2_normalising_then_nearest_centroid() -> None:
    g = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    learner = SimpleShot(Features(), feature_transform="CL2N").double()
    base = feature_dataset()
    learner.fit_base_classes(base)
    mean = base.images.mean(0)
    torch.testing.assert_close(learner.base_mean, mean, rtol=0, atol=1e-12)
    assert int(learner.base_count) == len(base)
    expected = {"CL2N": torch.empty(2, 5, 3, dtype=torch.float64), "L2N": torch.empty(2, 5, 3, dtype=torch.float64),
                "UN": torch.empty(2, 5, 3, dtype=torch.float64)}
    transforms = {"CL2N": lambda x: (x - mean) / (x - mean).norm(), "L2N": lambda x: x / x.norm(), "UN": lambda x: x}
    for name, f in transforms.items():
        for b in range(2):
            for c in range(3):
                centroid = torch.stack([f(s) for s in support[b][support_y[b] == c]]).mean(0)
                for q in range(5):
                    expected[name][b, q, c] = -(f(query[b, q]) - centroid).norm()
        learner.feature_transform = name
        torch.testing.assert_close(learner.predict_features(support, support_y, query, 3), expected[name],
                                   rtol=1e-10, atol=1e-10)


def test_the_base_mean_covers_every_image_in_chunks_in_eval_mode_and_is_saved() -> None:
    torch.manual_seed(0)
    data = template_dataset(per_class=3)
    learner = SimpleShot(TinyNet(), chunk_size=7)
    bn_before = {k: v.clone() for k, v in learner.backbone.state_dict().items() if "running" in k}
    learner.fit_base_classes(data)
    assert learner.training  # mode restored
    for k, v in learner.backbone.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), k  # eval mode: batch norm statistics untouched
    learner.eval()
    with torch.no_grad():
        expected = learner.backbone(data.images).mean(0)
    torch.testing.assert_close(learner.base_mean, expected, rtol=1e-5, atol=1e-6)
    assert int(learner.base_count) == 60
    state = learner.state_dict()
    assert {"base_mean", "base_count"} <= set(state)
    fresh = SimpleShot(TinyNet())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.base_mean, learner.base_mean) and int(fresh.base_count) == 60




def test_cl2n_without_a_base_mean_says_how_to_get_one() -> None:
    learner = SimpleShot(TinyNet(), feature_transform="CL2N")
    with pytest.raises(ValueError, match=r"trainer=pretrain.*fit_base_classes"):
        learner.predict(template_batch(1, seed=0))
    assert SimpleShot(TinyNet(), feature_transform="L2N").predict(template_batch(1, seed=0)).shape == (1, 15, 5)


def test_invalid_arguments() -> None:
    with pytest.raises(TypeError, match="feature_dim"):
        SimpleShot(nn.Identity())
    with pytest.raises(ValueError, match="feature_transform"):
        SimpleShot(TinyNet(), feature_transform="L1N")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        SimpleShot(TinyNet(), chunk_size=0)


def test_supervised_pretraining_then_base_mean_learns_a_synthetic_task() -> None:
    torch.manual_seed(0)
    learner = SimpleShot(TinyNet(), feature_transform="CL2N")
    test = template_batch(20, seed=10_000)
    start = (SimpleShot(TinyNet(), feature_transform="L2N").predict(test).argmax(-1) == test.query_y).float().mean()
    trainer = SupervisedPretrainer(epochs=6, batch_size=32, lr=0.05, weight_decay=0.0)
    trainer.fit(learner, TrainingData(train=template_dataset(), train_episode=EpisodeShape(5, 1, 3)),
                Run(None, {}, 0, torch.device("cpu"), progress=False))
    assert int(learner.base_count) == 160  # the trainer called fit_base_classes with the training classes
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.8 and accuracy > start + 0.1, (start, accuracy)


@pytest.mark.slow
def test_cli_trains_fits_and_refuses_an_unfitted_checkpoint(tmp_path: Path) -> None:
    images = make_folder(tmp_path / "images", 12, seed=0)
    args = [*dataset_args(images), *TINY, "learner=simpleshot", "learner.feature_transform=CL2N"]
    episodic = fewshot("train", *args, f"hydra.run.dir={tmp_path / 'episodic'}", check=False)
    assert episodic.returncode == 2 and "trainer=pretrain" in output(episodic).strip().splitlines()[-1]
    run = tmp_path / "run"
    fewshot("train", *args, "trainer=pretrain", "trainer.epochs=1", "trainer.batch_size=8", f"hydra.run.dir={run}")
    ckpt = run / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)
    assert int(state["learner"]["base_count"]) > 0
    state["learner"]["base_count"].zero_()  # a checkpoint of a learner never fitted on its base classes
    save_checkpoint(ckpt, state)
    done = fewshot("eval", f"run={run}", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}", check=False)
    last = output(done).strip().splitlines()[-1]
    assert done.returncode == 2 and "no base-class mean" in last and "fit_base_classes" in last, output(done)
    assert "Traceback" not in output(done)
