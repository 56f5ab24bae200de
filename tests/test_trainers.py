"""The trainers a config names: each fits what it says, refuses what it cannot train, and the
pretrain-then-episodic trainer equals its two stages run by hand and resumes bit for bit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from episodes import FewShotDataset
from fewshot.backbones import create_backbone, load_pretrained, normalise_for, save_backbone
from fewshot.backbones.spec import BackboneSpec
from fewshot.learners import FineTune, FrozenFineTune, Learner, OuterOptimizer, ProtoNet
from fewshot.training import (
    EpisodeShape,
    EpisodicTrainer,
    PretrainThenEpisodic,
    Run,
    SupervisedPretrainer,
    TrainingData,
)
from fewshot.training.checkpoint import load_checkpoint


def _dataset(per_class: int = 6, classes: int = 6, seed: int = 0) -> FewShotDataset:
    """``classes`` classes of 16x16 grey images: a class-specific bright square plus noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (classes, per_class, 1, 16, 16), generator=g)
    for c in range(classes):
        images[c, :, :, 2 * c:2 * c + 4, 2 * c:2 * c + 4] += 150
    return FewShotDataset.from_tensors(images.flatten(0, 1).to(torch.uint8), torch.arange(classes).repeat_interleave(
        per_class), [f"c{i}" for i in range(classes)], name="squares", mean=(0.2,), std=(0.3,))


DATA = TrainingData(train=_dataset(), train_episode=EpisodeShape(3, 1, 2), val=_dataset(seed=1),
                    val_episode=EpisodeShape(3, 1, 2), val_seed=5, eval_batch_size=4)


def _learner(cls: type[Learner] = ProtoNet) -> Learner:
    torch.manual_seed(0)
    return cls(create_backbone("conv4", hidden=8, input_size=16))


def _run(run_dir: Path | None = None, **kwargs: object) -> Run:
    return Run(run_dir, {"seed": 0}, seed=0, device=torch.device("cpu"), progress=False, **kwargs)


def _episodic(steps: int = 6, **kwargs: object) -> EpisodicTrainer:
    return EpisodicTrainer(steps=steps, meta_batch=2, optimizer=OuterOptimizer(lr=1e-2), log_every=1, **kwargs)


PRETRAIN = {"epochs": 2, "batch_size": 8, "lr": 0.05}


def _state(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.state_dict().items()}


def test_episodic_trainer_refuses_a_learner_it_cannot_meta_train() -> None:
    with pytest.raises(TypeError, match="trainer=pretrain"):
        _episodic().fit(FineTune(create_backbone("conv4", hidden=8, input_size=16)), DATA, _run())


def test_episodic_trainer_validates_and_tests_the_best_step(tmp_path: Path) -> None:
    learner = _learner()
    history = _episodic(val_every=2, val_episodes=4).fit(learner, DATA, _run(tmp_path))
    assert [row["step"] for row in history] == [1, 2, 3, 4, 5, 6]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert all(torch.equal(v, best["learner"][k]) for k, v in learner.state_dict().items())
    assert best["step"] == max((r for r in history if "val_accuracy" in r), key=lambda r: r["val_accuracy"])["step"]


def test_supervised_pretrainer_trains_the_backbone_and_calls_fit_base_classes(tmp_path: Path) -> None:
    seen: list[str] = []

    class Recording(FrozenFineTune):
        def fit_base_classes(self, dataset: FewShotDataset) -> None:
            seen.append(dataset.name)

    learner = _learner(Recording)
    before = _state(learner)
    history = SupervisedPretrainer(**PRETRAIN).fit(learner, DATA, _run(tmp_path))
    assert [row["step"] for row in history] == [1.0, 2.0] and seen == ["squares"]
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())
    with (tmp_path / "metrics.csv").open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_supervised_pretrainer_skips_pretraining_when_weights_were_loaded() -> None:
    learner = _learner(FineTune)
    before = _state(learner)
    assert SupervisedPretrainer(**PRETRAIN).fit(learner, DATA, _run(backbone_pretrained=True)) == []
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_pretrain_then_episodic_equals_its_stages_run_by_hand(tmp_path: Path) -> None:
    combined = _learner()
    history = PretrainThenEpisodic(pretrain=SupervisedPretrainer(**PRETRAIN), episodic=_episodic()).fit(
        combined, DATA, _run(tmp_path / "a"))
    by_hand = _learner()
    SupervisedPretrainer(**PRETRAIN).pretrain(by_hand.backbone, DATA.train, _run())
    assert _episodic().fit(by_hand, DATA, _run(tmp_path / "b")) == history
    assert all(torch.equal(v, by_hand.state_dict()[k]) for k, v in combined.state_dict().items())
    assert (tmp_path / "a" / "pretrain_metrics.csv").is_file()


def test_pretrain_then_episodic_resumes_bit_for_bit_without_pretraining_again(tmp_path: Path) -> None:
    trainer = PretrainThenEpisodic(pretrain=SupervisedPretrainer(**PRETRAIN), episodic=_episodic(checkpoint_every=3))
    whole = _learner()
    trainer.fit(whole, DATA, _run(tmp_path / "whole"))
    half = _learner()
    PretrainThenEpisodic(pretrain=SupervisedPretrainer(**PRETRAIN), episodic=_episodic(steps=3)).fit(
        half, DATA, _run(tmp_path / "half"))
    (tmp_path / "half" / "pretrain_metrics.csv").unlink()
    resumed = _learner()  # fresh weights: the checkpoint must supply the pretrained ones
    trainer.fit(resumed, DATA, _run(tmp_path / "half"))
    assert not (tmp_path / "half" / "pretrain_metrics.csv").exists()  # no second pretraining
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())


def test_pretrain_then_episodic_needs_matching_stages() -> None:
    with pytest.raises(ValueError, match="distributed"):
        PretrainThenEpisodic(pretrain=SupervisedPretrainer(**PRETRAIN, distributed=True), episodic=_episodic())
    with pytest.raises(TypeError):
        PretrainThenEpisodic(pretrain=_episodic(), episodic=_episodic())  # type: ignore[arg-type]


def test_trainer_constructors_validate() -> None:
    with pytest.raises(TypeError, match="OuterOptimizer"):
        EpisodicTrainer(steps=1, meta_batch=1, optimizer={"lr": 1e-3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        SupervisedPretrainer(epochs=0, batch_size=8, lr=0.1)
    with pytest.raises(ValueError, match="n_way"):
        EpisodeShape(1, 1, 1)


def test_loaded_weights_carry_their_spec_to_the_data(tmp_path: Path) -> None:
    trained = create_backbone("conv4", hidden=8, input_size=16, in_channels=1)
    trained.spec = BackboneSpec((16, 16), 1, (0.25,), (0.5,))
    path = save_backbone(trained, tmp_path / "b.safetensors", name="conv4",
                         kwargs={"hidden": 8, "input_size": 16, "in_channels": 1})
    fresh = create_backbone("conv4", hidden=8, input_size=16, in_channels=1)
    load_pretrained(fresh, path)
    assert fresh.spec == trained.spec
    data = normalise_for(DATA.train, fresh.spec)
    x = data.images[:3]
    assert torch.equal(data.to_float(x), (x.float() / 255 - 0.25) / 0.5)
    with pytest.raises(ValueError, match="image_size=28"):
        normalise_for(_dataset(), BackboneSpec((28, 28), 1, (0.0,), (1.0,)))


def test_diverged_state_stops_training_and_evaluation() -> None:
    from fewshot.evaluation import evaluate

    learner = _learner(FineTune)
    with torch.no_grad():
        learner.backbone.block1[1].running_var.fill_(float("inf"))  # what lr=1e12 leaves behind
    with pytest.raises(FloatingPointError, match=r"block1\.1\.running_var holds non-finite"):
        SupervisedPretrainer(**PRETRAIN).fit(learner, DATA, _run(backbone_pretrained=True))
    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate({"diverged": learner}, DATA.train, n_way=3, n_shot=1, n_query=2, episodes=4, progress=False)


def test_nan_logits_are_an_error_not_an_accuracy() -> None:
    from fewshot.evaluation import evaluate

    class NaNs(Learner):
        def predict(self, batch):
            return torch.full((*batch.query_y.shape, batch.n_way), float("nan"))

    with pytest.raises(FloatingPointError, match="NaN or infinite logits"):
        evaluate({"nan": NaNs()}, DATA.train, n_way=3, n_shot=1, n_query=2, episodes=4, progress=False)
