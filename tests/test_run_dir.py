"""Run directories are never silently corrupted or overwritten: one writer at a time, never a folder that is not a
run, and a refused run changes nothing in the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_cli import TINY, dataset_args, fewshot, make_folder, output

from fewshot.training import run_dir
from fewshot.training.run_dir import claim_run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), the lock file left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_second_claim_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = claim_run_dir(tmp_path / "run")
    with pytest.raises(ValueError, match="another process"):
        claim_run_dir(tmp_path / "run")
    first.release()
    claim_run_dir(tmp_path / "run").release()


def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"not a fewshot run \(thesis\.tex\)"):
        claim_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        claim_run_dir(tmp_path / "file")


def test_a_run_folder_and_its_temporary_files_are_accepted(tmp_path: Path) -> None:
    for name in ("config.yaml", "metrics.csv", ".results.json.abc123.tmp", "checkpoints"):
        (tmp_path / name).write_text("")
    claim_run_dir(tmp_path).release()


def test_a_folder_that_cannot_be_written_is_refused_with_what_to_do(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(run_dir.os, "open", read_only)  # what a read-only folder does to the lock file
    with pytest.raises(PermissionError, match=r"cannot write to hydra.run.dir=.*\(Permission denied\).*<folder>"):
        claim_run_dir(tmp_path / "run")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders; the refusal is tested with a patched os.open above")
def test_cli_refuses_a_read_only_run_folder_in_one_line(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        done = fewshot("train", *dataset_args(images), *TINY, f"hydra.run.dir={run}", check=False)
    finally:
        run.chmod(0o755)
    assert done.returncode == 2 and "Traceback" not in output(done)
    assert "cannot write to hydra.run.dir=" in output(done).strip().splitlines()[-1]
    assert list(run.iterdir()) == []


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images") / "source", 12, seed=0)


@pytest.mark.slow
def test_cli_refuses_a_folder_of_user_files_and_writes_nothing(images: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    done = fewshot("train", *dataset_args(images), *TINY, "trainer.steps=1", f"hydra.run.dir={tmp_path}", check=False)
    assert done.returncode == 2 and "not a fewshot run (notes.txt)" in output(done).strip().splitlines()[-1]
    assert snapshot(tmp_path) == {"notes.txt": b"keep me"}


@pytest.mark.slow
def test_cli_refuses_a_run_folder_another_process_writes(images: Path, tmp_path: Path) -> None:
    lock = claim_run_dir(tmp_path)  # as a training in progress holds it
    try:
        done = fewshot("train", *dataset_args(images), *TINY, "trainer.steps=1", f"hydra.run.dir={tmp_path}",
                       check=False)
    finally:
        lock.release()
    assert done.returncode == 2 and "another process" in output(done)
    assert snapshot(tmp_path) == {}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["episodic", "pretrain"])
def test_a_refused_rerun_with_other_settings_changes_nothing(images: Path, tmp_path: Path, trainer: str) -> None:
    args = [*dataset_args(images), *TINY, f"trainer={trainer}", f"hydra.run.dir={tmp_path}"]
    length = ["trainer.steps=2"] if trainer == "episodic" else ["trainer.epochs=1", "trainer.batch_size=16"]
    fewshot("train", *args, *length)
    before = snapshot(tmp_path)
    done = fewshot("train", *args, *length, "backbone.hidden=4", check=False)
    assert done.returncode == 2 and "another configuration" in output(done)
    assert snapshot(tmp_path) == before  # config.yaml, .hydra/, the log, results: all as they were
