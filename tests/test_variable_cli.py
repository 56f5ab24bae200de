"""Variable (Meta-Dataset-style) test episodes through the real CLI: ``evaluation=meta_dataset`` on train and eval
(the same seeded episodes), and a learner that cannot score them refused in one line before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import TINY, dataset_args, fewshot, folders, output  # noqa: F401 (fixtures)

#: The tiny folder's test split has 3 classes: episodes of 2 or 3 ways.
VARIABLE = ["evaluation=meta_dataset", "evaluation.variable.min_way=2", "evaluation.variable.max_way=3"]


def variable_accuracies(run: Path) -> list[float]:
    (result,) = json.loads((run / "results.json").read_text())["results"]
    spec = result["spec"]
    assert (spec["n_way"], spec["n_shot"], spec["n_query"], spec["variable"]["min_way"], spec["variable"]["max_way"],
            spec["variable"]["max_query"]) == (0, 0, 0, 2, 3, 10)
    (learner,) = result["learners"]
    return learner["accuracies"]


@pytest.mark.slow
def test_train_and_eval_score_the_same_variable_episodes(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    fewshot("train", *dataset_args(folders[0]), *TINY, *VARIABLE, "trainer.steps=2", f"hydra.run.dir={run}")
    trained = variable_accuracies(run)
    assert len(trained) == 6 and "| variable-way variable-shot (2-3 ways) |" in (run / "results.md").read_text()
    fewshot("eval", f"run={run}", "evaluation.episodes=4", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}")
    assert variable_accuracies(tmp_path / "eval") == trained[:4]  # episode i depends on (seed, i) only
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    found = accumulator.EventAccumulator(str(run)).Reload()
    assert [e.value for e in found.Scalars("test/accuracy_variable")] == pytest.approx([sum(trained) / 6])


@pytest.mark.slow
def test_a_learner_that_cannot_score_variable_ways_is_refused(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    done = fewshot("train", *dataset_args(folders[0]), *TINY, *VARIABLE, "learner=maml", "trainer.steps=1000",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    last = output(done).strip().splitlines()[-1]
    assert done.returncode == 2
    assert "learner 'folder-maml' (MAML) cannot score variable-way episodes of 2 to 3 ways" in last
    assert "min_way = max_way = 3" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
