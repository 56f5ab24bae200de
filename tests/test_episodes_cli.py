"""Canonical test episodes through the CLI: ``episodes export`` writes a run's test episodes to a file, ``eval`` on
that file gives the per-episode accuracies of the seeded test, and a file that is edited, made on another copy of
the data or of another shape is refused in one line with exit status 2, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import TINY, accuracies, dataset_args, fewshot, folders, output  # noqa: F401 (fixture)
from test_episode_file import rewrite

from episodes.episode_file import read_episodes_file

EVALUATION = [a for a in TINY if not a.startswith(("progress=", "backbone."))]  # the keys export knows


@pytest.fixture(scope="module")
def exported(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    """A seeded run (one training step) and the file of its test episodes."""
    base = tmp_path_factory.mktemp("episodes")
    fewshot("episodes", "export", *dataset_args(folders[0]), *EVALUATION, f"out={base / 'episodes.json'}")
    fewshot("train", *dataset_args(folders[0]), *TINY, "trainer.steps=1", f"hydra.run.dir={base / 'run'}")
    return base / "run", base / "episodes.json"


def last_line(done) -> str:
    return output(done).strip().splitlines()[-1]


@pytest.mark.slow
def test_eval_on_the_exported_file_gives_the_seeded_per_episode_accuracies(exported: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    run, path = exported
    episodes = read_episodes_file(path)
    assert [(s.n_way, s.n_shot, s.n_query, s.num_episodes, s.seed) for s in episodes.sets] == [(3, 1, 3, 6, 2017)]
    fewshot("eval", f"run={run}", f"evaluation.episodes_file={path}", "progress=false", f"hydra.run.dir={tmp_path}")
    assert accuracies(tmp_path / "results.json") == accuracies(run / "results.json")
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["results"][0]["spec"]["episodes_file"] == episodes.checksum
    assert result["provenance"]["test_data"]["fingerprint"] == episodes.fingerprint  # the copy the file was made on


@pytest.mark.slow
def test_an_edited_file_or_one_of_another_copy_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    run, path = exported
    edited = tmp_path / "edited.json"
    edited.write_text(path.read_text().replace('"query":[[[', '"query":[[[1', 1))  # one position changed
    done = fewshot("eval", f"run={run}", f"evaluation.episodes_file={edited}", check=False)
    assert done.returncode == 2 and f"{edited} was edited or damaged" in last_line(done)
    other = tmp_path / "other.json"
    other.write_text(path.read_text())
    rewrite(other, lambda d: d["dataset"].__setitem__("fingerprint", "0" * 64))  # as if made on another copy
    done = fewshot("eval", f"run={run}", f"evaluation.episodes_file={other}", check=False)
    assert done.returncode == 2 and f"{other} was made on another copy of the data" in last_line(done)
    assert not (run / "eval").exists()  # refused before the re-test wrote anything


@pytest.mark.slow
def test_a_file_of_another_shape_is_refused_before_training(exported: tuple[Path, Path], folders: tuple[Path, Path],  # noqa: F811
                                                            tmp_path: Path) -> None:
    _, path = exported
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "evaluation.n_query=2",
                   f"evaluation.episodes_file={path}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2
    assert last_line(done).endswith("set evaluation.n_query=3 evaluation.episodes=6")
    assert not (tmp_path / "run" / "checkpoints").exists()
