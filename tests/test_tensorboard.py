"""TensorBoard event files beside metrics.csv: read back, the same numbers as metrics.csv and results.json, each
step once after a resume, the hyper-parameters and the plots; the logging.tensorboard switch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from test_cli import TINY, dataset_args, fewshot, folders  # noqa: F401 (fixture)
from test_meta_train import CONFIG, SETTINGS, Crash, crash_at, learner, sampler, validate
from test_trainers import DATA, PRETRAIN, _episodic, _learner, _run

from fewshot import app_config
from fewshot.training import PretrainThenEpisodic, SupervisedPretrainer
from fewshot.training.meta_train import config_differences, meta_train
from fewshot.training.tensorboard import TensorBoardLog, flatten

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="needs the tensorboard package (the dev extra installs it)")


def events(run: Path) -> event_accumulator.EventAccumulator:
    """Every event file of ``run`` as TensorBoard reads a run, without its clean-up of steps logged twice
    (``purge_orphaned_data``), so that a duplicated step shows."""
    return event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0},
                                              purge_orphaned_data=False).Reload()


def scalars(run: Path, part: str) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value), ...]} of the scalars ``<part>/<column>``."""
    found = events(run)
    return {tag.split("/", 1)[1]: [(e.step, e.value) for e in found.Scalars(tag)]
            for tag in found.Tags()["scalars"] if tag.startswith(f"{part}/")}


def csv_columns(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value as float32), ...]} of a metrics CSV's non-empty columns (TensorBoard keeps 32-bit
    values)."""
    rows = list(csv.DictReader(path.open()))
    return {key: [(int(float(r["step"])), float(np.float32(r[key]))) for r in rows if r[key]]
            for key in rows[0] if key != "step" and any(r[key] for r in rows)}


def test_a_resumed_meta_training_logs_each_step_once_with_the_csv_values(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with TensorBoardLog(log_dir=run, hparams=CONFIG) as log, pytest.raises(Crash):
        meta_train(learner(), sampler(), settings=SETTINGS, validate=crash_at(12), run_dir=run, config=CONFIG,
                   progress=False, tensorboard=log)  # dies at step 12: last.ckpt is at step 8, rows up to 11
    assert [step for step, _ in scalars(run, "meta_train")["loss"]] == list(range(1, 12))
    with TensorBoardLog(log_dir=run, hparams=CONFIG) as log:
        meta_train(learner(), sampler(), settings=SETTINGS, validate=validate, run_dir=run, config=CONFIG,
                   progress=False, tensorboard=log)
    logged = scalars(run, "meta_train")
    assert [step for step, _ in logged["loss"]] == list(range(1, 13))  # steps 9-11 of the crashed run are gone
    assert logged == csv_columns(run / "metrics.csv")
    assert [step for step, _ in logged["val_accuracy"]] == [3, 6, 9, 12]
    assert len(list(run.glob("events.out.tfevents.*.meta_train"))) == 1


def test_both_stages_of_pretrain_then_episodic_log_their_csv_rows(tmp_path: Path) -> None:
    trainer = PretrainThenEpisodic(pretrain=SupervisedPretrainer(**PRETRAIN), episodic=_episodic(steps=3))
    with TensorBoardLog(log_dir=tmp_path, hparams={"seed": 0}) as log:
        trainer.fit(_learner(), DATA, _run(tmp_path, tensorboard=log))
    assert scalars(tmp_path, "pretrain") == csv_columns(tmp_path / "pretrain_metrics.csv")
    assert [step for step, _ in scalars(tmp_path, "pretrain")["loss"]] == [1, 2]  # one point per epoch
    assert scalars(tmp_path, "meta_train") == csv_columns(tmp_path / "metrics.csv")
    assert set(scalars(tmp_path, "meta_train")) >= {"loss", "accuracy", "lr", "grad_norm"}


def test_the_hyper_parameters_are_the_flattened_config(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    config = {"trainer": {"steps": 12, "optimizer": {"lr": 0.001, "milestones": [4, 8]}}, "device": "cpu",
              "progress": False, "backbone_weights": None}
    assert flatten(config) == {"trainer.steps": 12, "trainer.optimizer.lr": 0.001,
                               "trainer.optimizer.milestones": "[4, 8]", "device": "cpu", "progress": False}
    TensorBoardLog(log_dir=tmp_path, hparams=config).close()
    TensorBoardLog(log_dir=tmp_path, hparams={**config, "device": "cuda"}).close()  # a second start replaces them
    content = events(tmp_path).PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert {k: v.WhichOneof("kind") for k, v in start.items()} == {
        "trainer.steps": "number_value", "trainer.optimizer.lr": "number_value",
        "trainer.optimizer.milestones": "string_value", "device": "string_value", "progress": "number_value"}
    assert (start["trainer.steps"].number_value, start["device"].string_value) == (12, "cuda")
    assert (start["trainer.optimizer.milestones"].string_value, start["progress"].number_value) == ("[4, 8]", 0)
    assert len(list(tmp_path.glob("events.out.tfevents.*.hparams"))) == 1


@pytest.mark.slow
def test_a_training_run_writes_scalars_hparams_and_plots_beside_metrics_csv(folders: tuple[Path, Path],  # noqa: F811
                                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    fewshot("train", *dataset_args(folders[0]), *TINY, "trainer.steps=4", "trainer.log_every=1",
            "trainer.val_every=2", "trainer.val_episodes=4", f"hydra.run.dir={run}")
    assert scalars(run, "meta_train") == csv_columns(run / "metrics.csv")
    assert set(scalars(run, "meta_train")) >= {"loss", "accuracy", "lr", "val_accuracy"}
    result = json.loads((run / "results.json").read_text())["results"][0]
    test = scalars(run, "test")
    assert test == {"accuracy_3way_1shot": [(0, float(np.float32(result["learners"][0]["mean"])))]}
    found = events(run)
    plot = found.Images("plots/learning_curve")[0]
    with Image.open(run / "learning_curve.png") as image:
        assert (plot.width, plot.height) == image.size
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    experiment = HParamsPluginData.FromString(found.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    metrics = {info.name.tag for info in experiment.metric_infos}
    assert {"meta_train/val_accuracy", "test/accuracy_3way_1shot"} <= metrics
    assert "trainer.steps" in {info.name for info in experiment.hparam_infos}
    fewshot("train", *dataset_args(folders[0]), *TINY, "trainer.steps=6", "trainer.log_every=1",  # resumed at 4
            "trainer.val_every=2", "trainer.val_episodes=4", f"hydra.run.dir={run}")
    assert [step for step, _ in scalars(run, "meta_train")["loss"]] == [1, 2, 3, 4, 5, 6]
    assert scalars(run, "meta_train") == csv_columns(run / "metrics.csv")


def test_the_logging_switch_keeps_a_run_resumable() -> None:
    saved = {"seed": 0, "trainer": {"steps": 12}}  # a run from before the switch existed
    assert config_differences(saved, saved | {"logging": {"tensorboard": "auto"}}) == []
    on, off = ({"logging": {"tensorboard": mode}} for mode in (True, False))
    assert config_differences(saved | on, saved | off) == []


@pytest.mark.parametrize(("mode", "installed", "writes"), [
    ("auto", True, True), ("auto", False, False), (True, True, True), (False, True, False)])
def test_the_switch(monkeypatch: pytest.MonkeyPatch, mode: object, installed: bool, writes: bool) -> None:
    monkeypatch.setattr(app_config, "tensorboard_available", lambda: installed)
    assert app_config.tensorboard_wanted(OmegaConf.create({"logging": {"tensorboard": mode}})) is writes


def test_true_without_the_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_config, "tensorboard_available", lambda: False)
    with pytest.raises(ValueError, match=r"logging.tensorboard=true but the tensorboard package is not installed.*"
                                         r"fewshot\[tensorboard\]"):
        app_config.tensorboard_wanted(OmegaConf.create({"logging": {"tensorboard": True}}))
