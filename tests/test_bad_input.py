"""Bad input through the real CLI: one line, exit status 2, the file or key named, nothing left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_cli import TINY, dataset_args, fewshot, folders, output, trained_run  # noqa: F401 (fixtures)

from fewshot.evaluation import read_json


def last_line(done) -> str:
    return output(done).strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("device", ["tpu", "mps", "banana"])
def test_an_unsupported_device_is_one_line(trained_run: Path, tmp_path: Path, device: str) -> None:  # noqa: F811
    done = fewshot("eval", f"run={trained_run}", f"device={device}", f"hydra.run.dir={tmp_path / 'out'}", check=False)
    assert done.returncode == 2 and f"device={device} is not supported" in last_line(done)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_damaged_run_config_names_the_file(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval", ".lock"))
    (run / "config.yaml").write_text("dataset: [unclosed\n")
    done = fewshot("eval", f"run={run}", check=False)
    assert done.returncode == 2 and f"{run / 'config.yaml'} is not readable YAML" in last_line(done)
    assert not (run / "eval").exists()  # the re-test's own folder is gone, and the eval/ folder it was the first in


@pytest.mark.slow
def test_a_corrupt_weights_file_names_the_file(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "learner=finetune", "trainer=pretrain",
                   f"backbone_weights={weights}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2 and str(weights) in last_line(done) and "ValueError" in last_line(done)


def test_a_truncated_results_file_names_the_file(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    damaged = tmp_path / "results.json"
    damaged.write_text((trained_run / "results.json").read_text()[:100])
    with pytest.raises(ValueError, match=f"{damaged} is not a readable results file"):
        read_json(damaged)


@pytest.mark.slow
@pytest.mark.parametrize(("override", "message"), [
    ("evaluation.settings=[[3,1],[2,1]]", "MAML head has 3 classes but the episodes are 2-way"),
    ("evaluation.settings=[[5,1]]", "n_way=5 but the dataset has only 3 classes"),
    ("evaluation.n_query=50", "n_query"),
    ("evaluation.episodes=1", "episodes must be >= 2"),
])
def test_a_test_that_would_fail_is_refused_before_training(folders: tuple[Path, Path], tmp_path: Path,  # noqa: F811
                                                          override: str, message: str) -> None:
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "learner=maml", "trainer.steps=1000", override,
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2 and message in last_line(done)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_retest_on_changed_test_data_is_refused(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    images = tmp_path / "images"
    shutil.copytree(folders[0], images)
    run = tmp_path / "run"
    fewshot("train", *dataset_args(images), *TINY, "trainer.steps=1", f"hydra.run.dir={run}")
    tested = read_json(run / "results.json")[1]["test_data"]["classes"]
    shutil.rmtree(images / tested[0])  # a class of the test split is gone since
    done = fewshot("eval", f"run={run}", "progress=false", check=False)
    assert done.returncode == 2 and "the test data changed since" in last_line(done)
    assert "classes missing" in last_line(done)
    assert not (run / "eval").exists()  # the refused re-test left no empty folder behind


def test_a_truncated_zip_names_the_file(tmp_path: Path) -> None:
    import zipfile

    from episodes.datasets import load_omniglot

    for name in ("images_background.zip", "images_evaluation.zip"):
        (tmp_path / name).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(zipfile.BadZipFile, match=f"{tmp_path / 'images_background.zip'} is not a readable zip"):
        load_omniglot(protocol="vinyals", root=tmp_path, split="test", cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_a_diverged_training_is_an_error_not_chance_accuracy(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "trainer.steps=30", "trainer.val_every=0",
                   "trainer.optimizer.lr=1e12", f"hydra.run.dir={tmp_path}", check=False)
    assert done.returncode == 2 and "non-finite" in last_line(done)
    assert "trainer.optimizer.lr" in last_line(done)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_eval_test_settings_change_key_by_key(trained_run: Path, tmp_path: Path) -> None:  # noqa: F811
    fewshot("eval", f"run={trained_run}", "evaluation.episodes=4", "progress=false", f"hydra.run.dir={tmp_path}")
    (result,), _ = read_json(tmp_path / "results.json")
    assert result.spec.episodes == 4 and len(result.learners[0].accuracies) == 4
    assert result.spec.n_query == read_json(trained_run / "results.json")[0][0].spec.n_query  # the run's own
