"""The bad-input catalogue at the command line: every case ends with a clear one-line message, a non-zero
exit status and no partial file (real ``python -m fewshot`` subprocesses on a tiny synthetic image folder).

Out-of-memory has no GPU here: ``_guard`` is tested in process with a task that raises it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from episodes.datasets.download import DownloadError
from fewshot import hydra_app

REPO = Path(__file__).resolve().parent.parent


def make_image_folder(root: Path, *, classes: int = 20, per_class: int = 5, size: int = 16) -> Path:
    """``root/classNN/i.png``: greyscale images, each class a noisy copy of its own random pattern."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        pattern = rng.integers(0, 256, (size, size))
        for i in range(per_class):
            pixels = np.clip(pattern + rng.normal(0, 30, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def tiny_args(data: Path) -> list[str]:
    """ProtoNet / Conv4 (8 channels) on 16x16 greyscale images: 10/5/5 classes, 5-way 1-shot, 2 queries."""
    return ["dataset=folder", f"dataset.loader.root={data}", "dataset.loader.image_size=16",
            "dataset.channels=1", "++dataset.loader.channels=1",
            "++dataset.loader.fractions={train:0.5,val:0.25,test:0.25}", "++dataset.loader.mean=[0.5]",
            "++dataset.loader.std=[0.5]", "episode.train_n_query=2", "episode.n_query=2",
            "evaluation.n_query=2", "evaluation.episodes=5", "evaluation.batch_size=5", "trainer.steps=6",
            "trainer.val_every=3", "trainer.val_episodes=3", "trainer.checkpoint_every=2", "trainer.log_every=1",
            "backbone.hidden=8", "progress=false", "device=cpu"]


def run_cli(app: str, args: list[str], *, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m fewshot <app> <args>`` with one thread; stdout and stderr together in ``.stdout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "fewshot", app, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def no_partial_files(folder: Path) -> list[Path]:
    """Temporary or staging files left anywhere under ``folder`` (should be none)."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".extract-")]


def assert_clean_failure(proc: subprocess.CompletedProcess[str], message: str, folder: Path) -> None:
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout
    assert not no_partial_files(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, finished run directory) of one tiny training run, shared by the checkpoint cases."""
    base = tmp_path_factory.mktemp("trained")
    data = make_image_folder(base / "data")
    run = base / "run"
    proc = run_cli("train", [*tiny_args(data), f"hydra.run.dir={run}"], cwd=base)
    assert proc.returncode == 0, proc.stdout
    return data, run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# --- data ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("layout, message", [
    ("missing", "is not a folder"),
    ("empty", "has no class folders"),
    ("flat", "has no class folders"),  # images directly in root: wrong layout
])
def test_missing_empty_or_flat_dataset_root(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "0.png")
    proc = run_cli("train", [*tiny_args(root), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, message, tmp_path)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_omniglot_root_without_the_sets(tmp_path: Path) -> None:
    root = tmp_path / "omniglot"
    root.mkdir()
    (root / "notes.txt").write_text("not omniglot")
    proc = run_cli("train", ["dataset.loader.root=" + str(root), "trainer.steps=1", "progress=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, "images_background", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image_is_named_and_nothing_is_cached(tmp_path: Path, damage: str) -> None:
    data = make_image_folder(tmp_path / "data")
    bad = data / "class03" / "2.png"
    bad.write_bytes(b"not a png" if damage == "garbage" else bad.read_bytes()[:40])
    proc = run_cli("train", [*tiny_args(data), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, str(bad), tmp_path)
    assert not list(data.rglob("*.pt")), "a half-built cache was left behind"


@pytest.mark.slow
def test_unreadable_split_file(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_bytes(b"\x89\x00garbage\nno,header\n")
    proc = run_cli("train", ["dataset=mini_imagenet", f"dataset.loader.root={root}", "trainer.steps=1",
                             "progress=false", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, "train.csv", tmp_path)


# --- configuration ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("learner=nosuch", "Could not find 'learner/nosuch'"),
    ("dataset=nosuch", "Could not find 'dataset/nosuch'"),
    ("backbone=nosuch", "Could not find 'backbone/nosuch'"),
    ("trainer.stepz=3", "Key 'stepz' is not in struct"),
    ("backbone.name=nosuch", "nosuch"),
    ("+learner.temperatur=2", "temperatur"),
])
def test_unknown_names_and_keys(tmp_path: Path, override: str, message: str) -> None:
    data = make_image_folder(tmp_path / "data", classes=8, per_class=3)
    proc = run_cli("train", [*tiny_args(data), override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, message, tmp_path)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("episode.train_n_way=11", "n_way"),     # 10 training classes
    ("episode.train_n_query=5", "n_query"),  # 1 shot + 5 queries > 5 images per class
])
def test_impossible_episode_shapes(tmp_path: Path, override: str, message: str) -> None:
    data = make_image_folder(tmp_path / "data")
    proc = run_cli("train", [*tiny_args(data), override, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, message, tmp_path)
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- checkpoints --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_eval_with_a_checkpoint_of_another_backbone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained
    other = copy_run(run, tmp_path / "run")
    for saved in (other / "config.yaml", other / ".hydra" / "config.yaml"):
        assert "hidden: 8" in saved.read_text()
        saved.write_text(saved.read_text().replace("hidden: 8", "hidden: 16"))
    proc = run_cli("eval", [f"run={other}", "progress=false", "device=cpu"], cwd=tmp_path)
    assert_clean_failure(proc, "does not match this learner and backbone: backbone.block1.0.weight: (8, 1, 3, 3) in "
                               "the checkpoint, (16, 1, 3, 3) here", tmp_path)
    assert "size mismatch" not in proc.stdout  # the short message, not torch's list of every tensor
    assert not list(other.glob("eval/*/results.json"))


@pytest.mark.slow
def test_resume_with_another_backbone(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    other = copy_run(run, tmp_path / "run")
    kept = [*(other / "checkpoints").iterdir(), other / "config.yaml", other / "metrics.csv", other / "results.json"]
    before = {p: p.read_bytes() for p in kept}
    proc = run_cli("train", [*tiny_args(data), "backbone.hidden=16", f"hydra.run.dir={other}"], cwd=tmp_path)
    assert_clean_failure(proc, "trained with another configuration (backbone.hidden: 8 -> 16", tmp_path)
    assert {p: p.read_bytes() for p in kept} == before


@pytest.mark.slow
@pytest.mark.parametrize("app", ["train", "eval"])
def test_truncated_checkpoint(trained: tuple[Path, Path], tmp_path: Path, app: str) -> None:
    data, run = trained
    other = copy_run(run, tmp_path / "run")
    for name in ("last.ckpt", "best.ckpt"):
        path = other / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])
    args = ([*tiny_args(data), f"hydra.run.dir={other}"] if app == "train"
            else [f"run={other}", "progress=false", "device=cpu"])
    proc = run_cli(app, args, cwd=tmp_path)
    assert_clean_failure(proc, "cannot be read safely", tmp_path)


class _Exploit:
    """Unpickling this runs ``touch <marker>``: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_exploit_payload_is_live(tmp_path: Path) -> None:
    """The payload used below really runs code under plain pickle, so the refusals are meaningful."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Exploit(marker)))  # the point of the test
    assert marker.exists()


@pytest.mark.slow
def test_eval_refuses_a_malicious_checkpoint(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained
    other = copy_run(run, tmp_path / "run")
    marker = tmp_path / "pwned"
    state = torch.load(other / "checkpoints" / "best.ckpt", weights_only=True)
    torch.save({**state, "extra": _Exploit(marker)}, other / "checkpoints" / "best.ckpt")
    proc = run_cli("eval", [f"run={other}", "progress=false", "device=cpu"], cwd=tmp_path)
    assert_clean_failure(proc, "cannot be read safely", tmp_path)
    assert not marker.exists()


# --- divergence and memory ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["learner=maml", "learner.inner_lr=1e30", "learner.inner_steps=2"], "MAML inner loop diverged"),
    (["trainer.optimizer.lr=1e30", "trainer.optimizer.name=sgd"], "meta-training step"),
])
def test_non_finite_loss_stops_the_run(tmp_path: Path, overrides: list[str], message: str) -> None:
    data = make_image_folder(tmp_path / "data")
    proc = run_cli("train", [*tiny_args(data), "trainer.val_every=0", "trainer.checkpoint_every=1", *overrides,
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert_clean_failure(proc, message, tmp_path)
    assert "lower" in proc.stdout
    assert not (tmp_path / "run" / "results.json").exists()


def test_out_of_memory_gives_a_hint_and_exit_status_2(caplog: pytest.LogCaptureFixture) -> None:
    def task(cfg: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with caplog.at_level(logging.ERROR, logger="fewshot"), pytest.raises(SystemExit) as exit_info:
        hydra_app._guard(task)(OmegaConf.create())
    assert exit_info.value.code == 2
    assert "out of GPU memory" in caplog.text and "Tried to allocate 2.00 GiB" in caplog.text
    assert "trainer.meta_batch" in caplog.text and "learner=fomaml" in caplog.text


@pytest.mark.parametrize("error", [ValueError("bad n_way"), FileNotFoundError("no root"),
                                   FloatingPointError("non-finite"), pickle.UnpicklingError("refusing global"),
                                   DownloadError("downloading x failed: HTTP 404 Not Found")])
def test_guard_turns_expected_errors_into_status_2(caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    def task(cfg: object) -> None:
        raise error

    with caplog.at_level(logging.ERROR, logger="fewshot"), pytest.raises(SystemExit) as exit_info:
        hydra_app._guard(task)(OmegaConf.create())
    assert exit_info.value.code == 2
    assert f"{type(error).__name__}: {error}" in caplog.text


def test_guard_lets_programming_errors_through() -> None:
    def task(cfg: object) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        hydra_app._guard(task)(OmegaConf.create())


# --- crash and resume ---------------------------------------------------------------------------------------------

def crash_args(data: Path) -> list[str]:
    """200 steps with validation (best.ckpt), a step learning-rate schedule and a checkpoint every 10 steps."""
    return [*tiny_args(data), "trainer.steps=200", "trainer.checkpoint_every=10", "trainer.val_every=25",
            "trainer.log_every=5", "trainer.optimizer.schedule=step", "trainer.optimizer.step_size=30"]


def learner_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["learner"]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    proc = run_cli("train", [*crash_args(data), f"hydra.run.dir={reference}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "fewshot", "train", *crash_args(data), f"hydra.run.dir={crashed}"],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = crashed / "checkpoints" / "last.ckpt"
    try:
        while not last.exists() and child.poll() is None:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (crashed / "results.json").exists()
    killed_at = torch.load(last, weights_only=True)["step"]
    assert 10 <= killed_at < 200

    proc = run_cli("train", [*crash_args(data), f"hydra.run.dir={crashed}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert f"resumed from {last} at step {killed_at}" in proc.stdout
    assert (crashed / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    results = [json.loads((run / "results.json").read_text())["results"] for run in (reference, crashed)]
    assert results[0] == results[1]
    for name in ("last.ckpt", "best.ckpt"):
        assert_same_tensors(learner_state(crashed / "checkpoints" / name),
                            learner_state(reference / "checkpoints" / name))
    for key in ("optimizer", "scheduler", "step", "best_step", "best_val_accuracy", "history"):
        saved = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)[key] for run in (reference, crashed)]
        assert repr(saved[0]) == repr(saved[1]), key
    assert not no_partial_files(tmp_path)


@pytest.mark.slow
def test_ctrl_c_prints_one_line_saying_how_to_resume_and_the_same_command_resumes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = [*crash_args(data), "trainer.steps=1000"]  # a window wide enough to interrupt under CI load
    child = subprocess.Popen([sys.executable, "-m", "fewshot", "train", *args, f"hydra.run.dir={run}"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    try:
        while not last.exists() and child.poll() is None:
            time.sleep(0.005)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, out + err
    printed = out + err
    assert "Traceback" not in printed
    [line] = [line for line in printed.splitlines() if "interrupted" in line]
    assert line.endswith(f"run again with hydra.run.dir={run}")
    assert not (run / "results.json").exists()
    stopped_at = torch.load(last, weights_only=True)["step"]
    proc = run_cli("train", [*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert f"resumed from {last} at step {stopped_at}" in proc.stdout


# --- safe loading of caches ---------------------------------------------------------------------------------------

def test_malicious_decoded_cache_is_rebuilt_without_running_it(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from episodes.datasets.cache import cached_arrays

    marker = tmp_path / "pwned"
    path = tmp_path / "cache.pt"
    key = {"loader": "test", "version": 1}
    torch.save({"key": json.dumps(key, sort_keys=True, separators=(",", ":")), "images": _Exploit(marker)}, path)
    with caplog.at_level(logging.WARNING):
        arrays = cached_arrays(path, key=key, build=lambda: {"images": torch.arange(6)})
    assert not marker.exists()
    assert "unreadable" in caplog.text and torch.equal(arrays["images"], torch.arange(6))
    assert torch.equal(torch.load(path, weights_only=True)["images"], torch.arange(6))  # replaced by a safe file
