"""The meta-training loop in process: resume bit for bit (dropout RNG, scheduler, best.ckpt, metrics.csv),
refusal to resume another configuration, divergence, and clean run directories."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from episodes import EpisodeSampler, FewShotDataset
from fewshot.learners import OuterOptimizer, ProtoNet
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.meta_train import TrainSettings, check_resume, config_differences, meta_train

CONFIG = {"backbone": {"name": "tiny", "hidden": 8}, "trainer": {"steps": 12, "optimizer": {"total_steps": 12}},
          "progress": False}


class DropoutNet(nn.Module):
    """conv -> ReLU -> dropout -> pool on 1x8x8 images: dropout draws from the global torch RNG in training."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.feature_dim = hidden * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def sampler() -> EpisodeSampler:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=g, dtype=torch.uint8).repeat_interleave(4, 0)
    images = (images.int() + torch.randint(-20, 21, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    data = FewShotDataset.from_tensors(images, torch.arange(8).repeat_interleave(4), [f"c{i}" for i in range(8)],
                                       name="tiny", mean=(0.5,), std=(0.5,))
    return EpisodeSampler(data, n_way=3, n_shot=1, n_query=2, seed=0)


def learner(*, hidden: int = 8, lr: float = 1e-2, name: str = "adam") -> ProtoNet:
    torch.manual_seed(0)
    model = ProtoNet(DropoutNet(hidden))
    model.configure_optimizer(OuterOptimizer(name=name, lr=lr, schedule="step", step_size=5, gamma=0.5))
    return model


def validate(model: ProtoNet) -> float:
    """A deterministic score that moves with the weights (no RNG drawn)."""
    with torch.no_grad():
        return float(torch.sigmoid(sum(p.sum() for p in model.parameters())))


SETTINGS = TrainSettings(steps=12, meta_batch=2, val_every=3, checkpoint_every=4, log_every=1)


class Crash(Exception):
    pass


def crash_at(step: int) -> object:
    calls = iter(range(1, 100))

    def check(model: ProtoNet) -> float:
        if next(calls) * SETTINGS.val_every == step:
            raise Crash
        return validate(model)

    return check


def train(run: Path | None, *, config: dict | None = None, settings: TrainSettings = SETTINGS, **kwargs: object):
    model = learner(**kwargs)
    result = meta_train(model, sampler(), settings=settings, validate=validate, run_dir=run, config=config or CONFIG,
                        progress=False)
    return model, result


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    reference, result = train(tmp_path / "reference")
    run = tmp_path / "crashed"
    with pytest.raises(Crash):  # dies at step 9: last.ckpt is at step 8, metrics.csv has rows up to 9
        meta_train(learner(), sampler(), settings=SETTINGS, validate=crash_at(9), run_dir=run, config=CONFIG,
                   progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == 8
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 8
    torch.manual_seed(1234)  # a new process has other global RNG states: resuming must restore them
    resumed, resumed_result = train(run)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed_result.history == result.history and resumed_result.best_step == result.best_step
    assert (run / "metrics.csv").read_bytes() == (tmp_path / "reference" / "metrics.csv").read_bytes()
    best = [load_checkpoint(r / "checkpoints" / "best.ckpt")["learner"] for r in (tmp_path / "reference", run)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])
    assert resumed.scheduler.state_dict() == reference.scheduler.state_dict()
    assert not list(tmp_path.rglob("*.tmp"))


def test_dropout_makes_the_rng_state_matter(tmp_path: Path) -> None:
    """Without the restored RNG the resumed run differs: the test above can fail."""
    reference, _ = train(tmp_path / "reference")
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        meta_train(learner(), sampler(), settings=SETTINGS, validate=crash_at(9), run_dir=run, config=CONFIG,
                   progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    state["rng"]["torch"] = torch.manual_seed(1234).get_state()
    torch.save(state, run / "checkpoints" / "last.ckpt")
    resumed, _ = train(run)
    assert not all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(),
                                                     strict=True))


def test_more_steps_continue_a_finished_run(tmp_path: Path) -> None:
    reference, result = train(tmp_path / "reference")
    short = TrainSettings(steps=8, meta_batch=2, val_every=3, checkpoint_every=4, log_every=1)
    short_config = {**CONFIG, "trainer": {"steps": 8, "optimizer": {"total_steps": 8}}}
    train(tmp_path / "run", settings=short, config=short_config)
    continued, continued_result = train(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), continued.state_dict().values(),
                                                 strict=True))
    def training_rows(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in row.items() if k != "val_accuracy"} for row in history]

    assert training_rows(continued_result.history) == training_rows(result.history)  # the short run validated at 8


def test_resuming_another_configuration_is_refused(tmp_path: Path) -> None:
    train(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    other = {**CONFIG, "backbone": {"name": "tiny", "hidden": 16}}
    with pytest.raises(ValueError, match=r"another configuration \(backbone.hidden: 8 -> 16\).*new run directory"):
        check_resume(tmp_path, other)
    with pytest.raises(ValueError, match=r"backbone.hidden: 8 -> 16"):
        train(tmp_path, config=other, hidden=16)
    with pytest.raises(ValueError, match="does not match this learner and backbone"):
        train(tmp_path, config=None, hidden=16)  # no config to compare: the shapes still catch it
    with pytest.raises(ValueError, match="at step 12, past the 6 steps"):
        train(tmp_path, settings=TrainSettings(steps=6, meta_batch=2))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_config_differences_names_nested_keys_and_skips_resumable_ones() -> None:
    saved = {"a": 1, "b": {"c": 2, "d": 3}, "progress": True, "trainer": {"steps": 5, "lr": 0.1}}
    current = {"a": 1, "b": {"c": 4}, "progress": False, "trainer": {"steps": 9, "lr": 0.1}, "e": 0}
    assert config_differences(saved, current) == ["b.c: 2 -> 4", "b.d: 3 -> '<missing>'", "e: '<missing>' -> 0"]
    # An option a later version added, at its null default, keeps older checkpoints resumable.
    assert config_differences(saved, saved | {"new_option": None}) == []
    assert config_differences(saved | {"new_option": None}, saved) == ["new_option: None -> '<missing>'"]
    assert config_differences(saved, saved) == []
    assert config_differences({"evaluation": {"seed": 1, "episodes": 10}},
                              {"evaluation": {"seed": 2, "episodes": 600}}) == ["evaluation.seed: 1 -> 2"]


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    settings = TrainSettings(steps=12, meta_batch=2, checkpoint_every=1, log_every=1)
    with pytest.raises(FloatingPointError, match=r"meta-training step \d+: .*lower"):
        train(tmp_path, settings=settings, lr=1e30, name="sgd")
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert 1 <= state["step"] < 12
    assert all(torch.isfinite(v).all() for v in state["learner"].values() if v.is_floating_point())
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_fresh_run_drops_files_of_a_run_killed_before_its_first_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"stale")
    (tmp_path / "metrics.csv").write_text("step,loss\n1.0,9.9\n2.0,9.9\n")
    _, result = train(tmp_path, settings=TrainSettings(steps=4, meta_batch=2, log_every=2))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [float(r["step"]) for r in rows] == [2.0, 4.0] == [r["step"] for r in result.history]
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


def test_without_a_run_directory_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, result = train(None, settings=TrainSettings(steps=3, meta_batch=1, log_every=1))
    assert [r["step"] for r in result.history] == [1.0, 2.0, 3.0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("settings", "message"), [
    ({"lr": -1.0}, "finite number > 0"), ({"lr": float("nan")}, "finite number > 0"),
    ({"name": "adamw"}, "use one of \\['adam', 'sgd'\\]"), ({"schedule": "exp"}, "outer optimizer schedule"),
    ({"momentum": 1.5}, "momentum < 1"), ({"weight_decay": -0.1}, "weight_decay >= 0"),
    ({"gamma": 0.0}, "0 < gamma <= 1"), ({"step_size": 0}, "step_size >= 1"), ({"total_steps": -1}, "total_steps"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0"),
])
def test_outer_optimizer_settings_are_checked_when_built(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OuterOptimizer(**settings)
