"""The command-line apps end to end, as real subprocesses on tiny synthetic image folders."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.evaluation import paired_comparison

REPO = Path(__file__).resolve().parent.parent


def make_folder(root: Path, classes: int, *, size: int = 28, seed: int) -> Path:
    """root/<class>/*.png: ``classes`` greyscale classes of 8 noisy copies of one random pattern each."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        pattern = rng.integers(0, 256, (size, size))
        for i in range(8):
            pixels = np.clip(pattern + rng.normal(0, 40, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / f"class{c:02d}" / f"{i}.png")
    return root


def fewshot(*args: str, check: bool = True, processes: int = 0, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m fewshot *args``; with ``processes``, under torchrun with that many CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes else []
    done = subprocess.run([sys.executable, *launcher, "-m", "fewshot", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"fewshot {' '.join(args)} exited with {done.returncode}:\n{output(done)[-3000:]}")
    return done


def output(done: subprocess.CompletedProcess[str]) -> str:
    """What the app printed: Hydra's log handler writes to stdout, Hydra's own errors to stderr."""
    return done.stdout + done.stderr


def dataset_args(root: Path, key: str = "dataset") -> list[str]:
    return [f"{key}=folder", f"{key}.loader.root={root}", f"{key}.channels=1", f"{key}.loader.image_size=28",
            f"{key}.loader.mean=[0.5]", f"{key}.loader.std=[0.5]"]


# Tiny 3-way episodes, few steps and episodes: the runs take seconds.
TINY = ["dataset.loader.fractions={train:0.5,val:0.25,test:0.25}", "episode.n_way=3",
        "episode.train_n_way=3", "episode.n_query=3", "episode.train_n_query=3", "evaluation.episodes=6",
        "evaluation.n_query=3", "evaluation.batch_size=4", "backbone.hidden=8",
        "progress=false"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("images")
    return make_folder(base / "source", 12, seed=0), make_folder(base / "target", 5, seed=1)


@pytest.fixture(scope="module")
def trained_run(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    fewshot("train", *dataset_args(folders[0]), *TINY, "trainer.steps=4", "trainer.log_every=1", "trainer.val_every=2",
            "trainer.val_episodes=4", "trainer.checkpoint_every=2", f"hydra.run.dir={run}")
    return run


def accuracies(results_json: Path) -> list[list[float]]:
    document = json.loads(results_json.read_text())
    return [learner["accuracies"] for result in document["results"] for learner in result["learners"]]


@pytest.mark.slow
def test_train_writes_a_complete_run_directory(trained_run: Path) -> None:
    for name in ("config.yaml", "cli.log", "metrics.csv", "results.json", "results.csv", "results.md",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt", ".hydra/config.yaml"):
        assert (trained_run / name).is_file(), name
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [float(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[1]["val_accuracy"] and rows[3]["val_accuracy"]
    assert len(accuracies(trained_run / "results.json")[0]) == 6


@pytest.mark.slow
def test_eval_reproduces_the_runs_test_numbers_bit_for_bit(trained_run: Path, tmp_path: Path) -> None:
    fewshot("eval", f"run={trained_run}", "progress=false", f"hydra.run.dir={tmp_path}")
    assert accuracies(tmp_path / "results.json") == accuracies(trained_run / "results.json")
    assert (tmp_path / "results.csv").read_text() == (trained_run / "results.csv").read_text()


@pytest.mark.slow
def test_eval_on_another_dataset_reports_train_and_test_data(trained_run: Path, folders: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    fewshot("eval", f"run={trained_run}", *dataset_args(folders[1], key="test_dataset"), "progress=false",
            f"hydra.run.dir={tmp_path}")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["train_dataset"], r["test_dataset"]) for r in rows] == [("source/train", "target/test")]
    assert "trained on `source/train`, tested on `target/test`" in (tmp_path / "results.md").read_text()
    own = json.loads((trained_run / "results.json").read_text())["results"][0]["spec"]
    cross = json.loads((tmp_path / "results.json").read_text())["results"][0]["spec"]
    assert (cross["dataset"], cross["episodes"], cross["n_way"]) == ("target/test", own["episodes"], own["n_way"])


@pytest.mark.slow
def test_eval_warns_when_test_classes_were_training_classes(trained_run: Path, folders: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    fewshot("eval", f"run={trained_run}", *dataset_args(folders[0], key="test_dataset"), "progress=false",
            f"hydra.run.dir={tmp_path}")
    assert "6 of the 12 test classes of source/test were also training classes" in (tmp_path / "cli.log").read_text()
    assert "also training classes" not in (trained_run / "cli.log").read_text()


@pytest.mark.slow
def test_eval_refuses_test_images_of_another_shape(trained_run: Path, folders: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    done = fewshot("eval", f"run={trained_run}", *dataset_args(folders[1], key="test_dataset"),
                   "test_dataset.loader.image_size=14", f"hydra.run.dir={tmp_path}", check=False)
    assert done.returncode == 2
    assert "test_dataset.loader.image_size=28" in output(done)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_a_multirun_sweep_merges_into_one_table(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    fewshot("train", "-m", *dataset_args(folders[0]), *TINY, "trainer.steps=2", "trainer.val_every=0",
            "learner=protonet,anil", "episode=5w1s,5w5s", f"hydra.sweep.dir={sweep}")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    fewshot("report", f"dir={sweep}")
    rows = list(csv.DictReader((sweep / "report" / "results.csv").open()))
    assert sorted((r["method"], r["n_shot"]) for r in rows) == [("folder-anil", "1"), ("folder-anil", "5"),
                                                               ("folder-protonet", "1"), ("folder-protonet", "5")]
    table = (sweep / "report" / "results.md").read_text()
    assert "| method | 3-way 1-shot | 3-way 5-shot |" in table
    assert "query sets balanced: 3 queries per class" in table
    merged = json.loads((sweep / "report" / "results.json").read_text())["results"]
    # runs on the same episodes are pooled: one result per setting, holding both learners and their paired test
    assert sorted(accuracy for r in merged for learner in r["learners"] for accuracy in [learner["accuracies"]]) == \
        sorted(accuracies(sweep / job / "results.json")[0] for job in ("0", "1", "2", "3"))
    assert [len(r["learners"]) for r in merged] == [2, 2]
    for r in merged:
        a, b = (learner["accuracies"] for learner in r["learners"])
        assert r["comparisons"][0]["mean_difference"] == pytest.approx(paired_comparison(a, b).mean_difference)
    assert "| folder-" in (sweep / "report" / "comparisons.md").read_text()


@pytest.mark.slow
def test_finetune_pretrain_and_pretrained_backbone_weights(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pretrain_args = ["trainer.epochs=1", "trainer.batch_size=8", "learner.steps=3"]
    fewshot("train", *dataset_args(folders[0]), *TINY, "learner=finetune", "trainer=pretrain", *pretrain_args,
            f"hydra.run.dir={tmp_path / 'finetune'}")
    for name in ("metrics.csv", "checkpoints/last.ckpt", "results.json", "learning_curve.png"):
        assert (tmp_path / "finetune" / name).is_file(), name
    fewshot("pretrain", *dataset_args(folders[0]), "backbone.hidden=8", "trainer.epochs=1", "trainer.batch_size=8",
            "dataset.loader.fractions={train:0.5,val:0.25,test:0.25}", "progress=false",
            f"hydra.run.dir={tmp_path / 'pretrain'}")
    weights = tmp_path / "pretrain" / "backbone.safetensors"
    assert weights.is_file()
    fewshot("train", *dataset_args(folders[0]), *TINY, "learner=baselinepp", "trainer=pretrain", "learner.steps=3",
            f"backbone_weights={weights}", f"hydra.run.dir={tmp_path / 'baselinepp'}")
    assert not (tmp_path / "baselinepp" / "metrics.csv").exists()  # pretraining skipped: the weights were given
    assert "weights" in (tmp_path / "baselinepp" / "cli.log").read_text()
    assert len(accuracies(tmp_path / "baselinepp" / "results.json")[0]) == 6


@pytest.mark.slow
def test_distributed_training_over_two_processes_gives_the_one_process_results(folders: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    args = [*dataset_args(folders[0]), *TINY, "trainer.steps=3", "trainer.meta_batch=2", "trainer.val_every=0"]
    fewshot("train", *args, f"hydra.run.dir={tmp_path / 'one'}")
    fewshot("train", *args, "trainer.distributed=true", f"hydra.run.dir={tmp_path / 'two'}", processes=2)
    assert (tmp_path / "two" / "results.csv").read_text() == (tmp_path / "one" / "results.csv").read_text()
    one, two = (list(csv.DictReader((tmp_path / run / "metrics.csv").open())) for run in ("one", "two"))
    assert [float(r["loss"]) for r in two] == pytest.approx([float(r["loss"]) for r in one], rel=1e-4)
    done = fewshot("train", *args, "trainer.distributed=true", check=False, processes=2, cwd=tmp_path)
    assert done.returncode != 0 and "pass hydra.run.dir=<dir>" in output(done)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "trainer.bogus=1"], "Key 'bogus' is not in struct"),
    (["train", "learner=protonett"], "Could not find 'learner/protonett'"),
    (["eval", "run=/no/such/run"], "is not a fewshot-train run directory"),
    (["report", "dir=/no/such/sweep"], "is not a folder"),
])
def test_bad_config_or_input_exits_with_status_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = fewshot(*args, f"hydra.run.dir={tmp_path}", check=False)
    assert done.returncode == 2
    assert message in output(done)
    assert "Traceback" not in output(done)


@pytest.mark.slow
def test_an_unknown_added_trainer_key_is_refused(folders: tuple[Path, Path], tmp_path: Path) -> None:
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "+trainer.warmup=5", f"hydra.run.dir={tmp_path}",
                   check=False)
    assert done.returncode == 2
    last = output(done).strip().splitlines()[-1]
    assert "TypeError" in last and "warmup" in last


def test_unknown_app_prints_usage() -> None:
    done = fewshot("fit", check=False)
    assert done.returncode == 2
    assert "usage: python -m fewshot {train,eval,pretrain,report,data check,episodes export}" in done.stderr
