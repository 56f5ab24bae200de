"""The leaderboard: regenerated from a small fixture of run results, byte for byte, README markers included; which
methods the best one does not significantly beat; the variance of a method trained with three seeds."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.evaluation import EpisodeSpec, EvaluationResult, LearnerResult, seed_and_episode_ci
from fewshot.evaluation.leaderboard import plot_leaderboard, tied_with_best
from fewshot.evaluation.runs import pool_same_episodes

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "leaderboard"
sys.path.insert(0, str(ROOT / "benchmarks"))
import leaderboard  # noqa: E402  (benchmarks/leaderboard.py)


def test_the_fixture_leaderboard_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    # Expected files: written by this command on the committed fixture and checked by hand (e.g. A's 5w1s cell:
    # 97.50 ± 1.05 spans [96.45, 98.55], below the ledger's 98.8 by 1.30; B is A minus 5 points there, every
    # episode, so the paired test separates them after Holm's correction and B's cell loses its ●).
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\n<!-- leaderboard:start -->\nold table\n<!-- leaderboard:end -->\n\nafter\n")
    shutil.copytree(FIXTURE / "table", tmp_path / "table")
    shutil.copy(FIXTURE / "table.json", tmp_path / "table.json")
    leaderboard.main(["--table", str(tmp_path / "table.json"), "--out", str(tmp_path / "out" / "leaderboard"),
                      "--experiments", str(FIXTURE / "experiments"), "--readme", str(readme)])
    assert (tmp_path / "out" / "leaderboard.md").read_bytes() == (FIXTURE / "expected.md").read_bytes()
    assert (tmp_path / "out" / "leaderboard_comparisons.md").read_bytes() == \
        (FIXTURE / "expected_comparisons.md").read_bytes()
    expected_table = next(block for block in (FIXTURE / "expected.md").read_text().split("\n\n")
                          if block.startswith("| method |"))
    assert readme.read_text() == (
        "# title\n\n<!-- leaderboard:start -->\n" + expected_table + "\n\nTrained with several seeds: A net (3 seeds). "
        "Each row above is one run; the variance over training seeds is under [Training-seed variance]"
        "(out/leaderboard.md#training-seed-variance).\n<!-- leaderboard:end -->\n\nafter\n")
    assert (tmp_path / "out" / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_training_seed_section_is_seed_and_episode_ci_of_the_three_runs() -> None:
    """Row A has runs a (seed 0), a_seed1 and a_seed2 on the same episodes: per setting the section gives
    seed_and_episode_ci of their (3, 8) table, in %, and each seed's mean; rows B and C have one run and no line."""
    runs = {seed: json.loads((FIXTURE / "table" / run / "results.json").read_text())["results"]
            for seed, run in ((0, "a"), (1, "a_seed1"), (2, "a_seed2"))}
    lines = (FIXTURE / "expected.md").read_text().partition("## Training-seed variance")[2].splitlines()
    rows = [line for line in lines if line.startswith(("| 5w", "| 20w"))]
    assert [line.split(" | ")[:3] for line in rows] == [["| 5w1s", "A net", "3"], ["| 5w5s", "A net", "3"],
                                                       ["| 20w1s", "A net", "3"], ["| 20w5s", "A net", "3"]]
    for line, i in zip(rows, range(4), strict=True):
        table = np.array([runs[seed][i]["learners"][0]["accuracies"] for seed in (0, 1, 2)])
        ci = seed_and_episode_ci(table, resamples=10_000, seed=0)
        cells = line.strip("| \n").split(" | ")
        assert cells[3:7] == [f"{100 * ci.mean:.2f}",
                              f"{100 * ci.episode_ci95_low:.2f} – {100 * ci.episode_ci95_high:.2f}",
                              f"{100 * ci.seed_ci95_low:.2f} – {100 * ci.seed_ci95_high:.2f}",
                              f"{100 * ci.bootstrap_ci95_low:.2f} – {100 * ci.bootstrap_ci95_high:.2f}"]
        assert cells[7] == ", ".join(f"{100 * table[s].mean():.2f} (seed {s})" for s in range(3))
    # By hand in 5w1s: seed 0 is row A's 97.50; seed 1 has two queries in 60 fewer right on 4 of 8 episodes
    # (97.50 - 100 * 2/60 / 2 = 95.83); seed 2 one more on 6 of 8 (97.50 + 100 * 1/60 * 6/8 = 98.75).
    assert rows[0].endswith("| 97.50 (seed 0), 95.83 (seed 1), 98.75 (seed 2) |")
    assert "| 97.36 |" in rows[0]  # (97.50 + 95.83 + 98.75) / 3


def test_a_seed_run_on_other_episodes_is_refused(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "table", tmp_path / "table")
    shutil.copy(FIXTURE / "table.json", tmp_path / "table.json")
    path = tmp_path / "table" / "a_seed2" / "results.json"
    data = json.loads(path.read_text())
    data["results"][1]["spec"]["seed"] = 6  # 5w5s drawn with another episode seed
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"a_seed2 was not tested on the episodes of run a: other episodes in 5w5s"):
        leaderboard.main(["--table", str(tmp_path / "table.json"), "--out", str(tmp_path / "out" / "leaderboard"),
                          "--no-plot", "--experiments", str(FIXTURE / "experiments")])
    assert not (tmp_path / "out").exists()


def fixture_with_fingerprints(tmp_path: Path, prints: dict[str, str]) -> Path:
    """The fixture copied to ``tmp_path``, its runs' results recording the content fingerprints ``prints``."""
    shutil.copytree(FIXTURE / "table", tmp_path / "table")
    shutil.copy(FIXTURE / "table.json", tmp_path / "table.json")
    for run, fingerprint in prints.items():
        path = tmp_path / "table" / run / "results.json"
        data = json.loads(path.read_text())
        data["provenance"]["test_data"]["fingerprint"] = fingerprint
        path.write_text(json.dumps(data))
    return tmp_path / "table.json"


def test_a_fingerprint_recorded_by_some_runs_only_changes_nothing(tmp_path: Path) -> None:
    """Runs from before fingerprints were recorded count as scored on the copy of the run that records one."""
    table = fixture_with_fingerprints(tmp_path, {"a": "f" * 64})
    leaderboard.main(["--table", str(table), "--out", str(tmp_path / "out" / "leaderboard"), "--no-plot",
                      "--experiments", str(FIXTURE / "experiments")])
    assert (tmp_path / "out" / "leaderboard.md").read_bytes() == (FIXTURE / "expected.md").read_bytes()


def test_runs_on_different_copies_of_the_data_are_refused(tmp_path: Path) -> None:
    table = fixture_with_fingerprints(tmp_path, {"a": "f" * 64, "b": "e" * 64})
    with pytest.raises(ValueError, match="2 different copies of the data"):
        leaderboard.main(["--table", str(table), "--out", str(tmp_path / "out" / "leaderboard"), "--no-plot",
                          "--experiments", str(FIXTURE / "experiments")])
    assert not (tmp_path / "out").exists()


def test_a_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        leaderboard.main(["--table", str(FIXTURE / "table.json"), "--out", str(tmp_path / "lb"), "--no-plot",
                          "--experiments", str(FIXTURE / "experiments"), "--readme", str(readme)])
    assert readme.read_text() == "no markers\n"


def learner(name: str, scores: list[float], transductive: bool = False) -> tuple[str, EvaluationResult]:
    acc = torch.tensor(scores, dtype=torch.float64)
    spec = EpisodeSpec("d", 5, 1, 15, len(scores), 0)
    return "t", EvaluationResult(spec, (LearnerResult(name, acc, float(acc.mean()), 0.01, transductive),), (),
                                 None, "d")


def test_ties_are_judged_against_the_best_of_each_protocol() -> None:
    best = [1.0, 0.9] * 10
    [pooled] = pool_same_episodes([learner("best", best), learner("close", [1.0, 0.85] * 10),
                                   learner("far", [0.5, 0.4] * 10), learner("trans", [0.6, 0.7] * 10, True)])
    tied = tied_with_best(pooled)
    # close differs from best by 0.025 on average with p < 1e-10, far by 0.5: neither is tied. The transductive
    # learner is the best of its own protocol, so it is tied with itself, whatever the inductive scores.
    assert tied == {"best": True, "close": False, "far": False, "trans": True}
    [noisy] = pool_same_episodes([learner("best", best), learner("close", [1.0, 0.9] * 9 + [0.9, 1.0])])
    assert tied_with_best(noisy) == {"best": True, "close": True}  # one swapped pair: no significant difference
    with pytest.raises(ValueError, match="pool the runs"):
        tied_with_best(learner("alone", best)[1].__class__(pooled.spec, pooled.learners, (), None, "d"))


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    [pooled] = pool_same_episodes([learner("a", [1.0, 0.9] * 5), learner("b", [0.9, 0.8] * 5, True)])
    path = plot_leaderboard(tmp_path / "lb.png", [pooled])
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
