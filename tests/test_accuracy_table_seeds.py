"""benchmarks/accuracy_table.py --seed-run: runs of a row's command with other training seeds are attached to the
row (and feed the leaderboard's training-seed variance), other commands or other test episodes are refused."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "leaderboard"
sys.path.insert(0, str(ROOT / "benchmarks"))
import accuracy_table  # noqa: E402  (benchmarks/accuracy_table.py)
import leaderboard  # noqa: E402  (benchmarks/leaderboard.py)

COMMAND = ["experiment=fixture_protonet", "trainer.steps=100", "progress=false"]


def make_run(folder: Path, results: str, *, seed: int, overrides: list[str], test_data: bool = True,
             edit: Callable[[dict], None] = lambda data: None) -> Path:
    """A run folder as ``python -m fewshot train`` leaves it, with the fixture results of run ``results``."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"name: {folder.name}\nseed: {seed}\ntrainer:\n  steps: 100\n"
                                        "backbone_weights: null\nlearner:\n  temperature: 1.0\n")
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "cli.log").write_text("[2026-01-01 00:00:00,000][x][INFO] - start\n"
                                    "[2026-01-01 00:01:30,000][x][INFO] - done\n")
    data = json.loads((FIXTURE / "table" / results / "results.json").read_text())
    if test_data:
        data["provenance"]["test_data"]["fingerprint"] = "f" * 64
    else:  # as results written before test classes were recorded (the committed seed-0 runs)
        del data["provenance"]["test_data"]
    edit(data)
    (folder / "results.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An accuracy table of rows A (a seed-0 run recording no test classes) and B, written by --run."""
    monkeypatch.setattr(accuracy_table, "EXPERIMENTS", FIXTURE / "experiments")
    a = make_run(tmp_path / "runs" / "a", "a", seed=0, overrides=COMMAND, test_data=False)
    b = make_run(tmp_path / "runs" / "b", "b", seed=0, overrides=COMMAND, test_data=False)
    accuracy_table.main(["--hardware", "fixture", "--run", f"A net={a}", "--run", f"B net={b}",
                         "--out", str(tmp_path / "table")])
    return tmp_path / "table.json"


def test_seed_runs_are_attached_to_their_row_and_reach_the_leaderboard(tmp_path: Path, table: Path) -> None:
    runs = [make_run(tmp_path / "runs" / f"a_seed{seed}", f"a_seed{seed}", seed=seed,
                     overrides=[*COMMAND[:1], f"seed={seed}", *COMMAND[1:], "hydra.run.dir=elsewhere"])
            for seed in (1, 2)]
    accuracy_table.main(["--hardware", "fixture", "--keep", str(table), "--out", str(tmp_path / "table"),
                         *(arg for run in runs for arg in ("--seed-run", f"A net={run}"))])
    a, b = json.loads(table.read_text())["rows"]
    assert (a["seed"], [(r["run"], r["seed"], r["steps_trained"]) for r in a["seed_runs"]]) == \
        (0, [("a_seed1", 1, 100), ("a_seed2", 2, 100)])
    expected = json.loads((FIXTURE / "table.json").read_text())["rows"][0]["seed_runs"]
    assert [r["cells"] for r in a["seed_runs"]] == [r["cells"] for r in expected]  # read from the same results
    assert "seed_runs" not in b and "seed" not in b
    assert (tmp_path / "table" / "a_seed2" / ".hydra" / "overrides.yaml").read_text().count("seed=2") == 1
    assert "; also trained with seed=1 (`a_seed1/results.json`); also trained with seed=2" in \
        table.with_suffix(".md").read_text()
    leaderboard.main(["--table", str(table), "--out", str(tmp_path / "out" / "leaderboard"), "--no-plot",
                      "--experiments", str(FIXTURE / "experiments")])
    expected_md = (FIXTURE / "expected.md").read_text().partition("## Training-seed variance")[2]
    assert "## Training-seed variance" + expected_md in (tmp_path / "out" / "leaderboard.md").read_text()


def other_episodes(data: dict) -> None:
    data["results"][2]["spec"]["episodes"] = 9
    data["results"][2]["learners"][0]["accuracies"].append(1.0)


@pytest.mark.parametrize(("seed", "overrides", "edit", "message"), [
    (1, ["experiment=other", "trainer.steps=100", "progress=false", "seed=1"], lambda data: None,
     r"is not the command of .*a with another seed=: it has \['experiment=other'\] where that run has "
     r"\['experiment=fixture_protonet'\]"),
    (1, [*COMMAND, "seed=1"], other_episodes,
     r"a_seed1 was not tested on the episodes of run a: other episodes in 20w1s"),
    (0, COMMAND, lambda data: None, r"trained with seed=0, which row 'A net' already has"),
])
def test_a_seed_run_of_another_command_or_other_episodes_is_refused(
        tmp_path: Path, table: Path, capsys: pytest.CaptureFixture[str], seed: int, overrides: list[str],
        edit: Callable[[dict], None], message: str) -> None:
    before = table.read_bytes()
    run = make_run(tmp_path / "runs" / "a_seed1", "a_seed1", seed=seed, overrides=overrides, edit=edit)
    with pytest.raises(SystemExit) as exit_info:
        accuracy_table.main(["--hardware", "fixture", "--keep", str(table), "--out", str(tmp_path / "table"),
                             "--seed-run", f"A net={run}"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and f"error: --seed-run 'A net={run}': " in error
    assert re.search(message, error), error
    assert table.read_bytes() == before and not (tmp_path / "table" / "a_seed1").exists()
