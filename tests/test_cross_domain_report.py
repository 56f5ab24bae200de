"""``fewshot-report`` writes the cross-domain matrix (fewshot/evaluation/cross_domain.py) of the runs it merges when
they span more than one training or test dataset; run folders are written with the library's own writer, no
training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import fewshot, output

from fewshot.evaluation import EpisodeSpec, EvaluationResult, LearnerResult, gather_results
from fewshot.evaluation.cross_domain import cross_domain_report
from fewshot.evaluation.report import collect_provenance, write_json
from fewshot.evaluation.runs import different_copies, gather_by_training_data, load_runs

HEADER = "# Cross-domain accuracy (%, mean ± 95% CI): rows trained on, columns tested on\n\n"


def write_run(folder: Path, scores: dict[str, tuple[float, float]], *, train: str, test: str,
              overrides: list[str]) -> None:
    """``folder/results.json`` of one run tested in 5-way 1-shot: each learner's (mean, ci95), over two episodes
    whose accuracies average to the mean; and the run's ``.hydra/overrides.yaml`` (what the report names it by)."""
    learners = tuple(LearnerResult(name, torch.tensor([mean - 0.05, mean + 0.05], dtype=torch.float64), mean, ci95)
                     for name, (mean, ci95) in scores.items())
    spec = EpisodeSpec(dataset=test, n_way=5, n_shot=1, n_query=15, episodes=2, seed=0)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    write_json(folder / "results.json", [EvaluationResult(spec, learners, (), train, test)],
               provenance=collect_provenance())


def methods(report: Path) -> list[str]:
    return sorted(row["method"] for row in csv.DictReader((report / "results.csv").open()))


def test_report_writes_the_matrix_of_runs_trained_and_tested_on_two_datasets(tmp_path: Path) -> None:
    # Trained on omniglot (tested on it, re-tested on cub by fewshot-eval) and on cub (tested on cub only).
    write_run(tmp_path / "omni", {"ProtoNet": (0.90, 0.010), "MAML": (0.80, 0.020)}, train="omniglot/train",
              test="omniglot/test", overrides=["dataset=omniglot"])
    write_run(tmp_path / "omni" / "eval" / "t", {"ProtoNet": (0.70, 0.030), "MAML": (0.65, 0.025)},
              train="omniglot/train", test="cub/test", overrides=["run=omni", "test_dataset=cub"])
    write_run(tmp_path / "cub", {"ProtoNet": (0.85, 0.015)}, train="cub/train", test="cub/test",
              overrides=["dataset=cub"])
    done = fewshot("report", f"dir={tmp_path}", "include_eval=true")
    report = tmp_path / "report"
    # rows and columns in first-seen order: results files in path order (cub/, omni/eval/t/, omni/)
    assert (report / "cross_domain.md").read_text(encoding="utf-8") == HEADER + (
        "### ProtoNet, 5-way 1-shot\n\n"
        "| trained on \\ tested on | cub/test | omniglot/test |\n"
        "|---|---:|---:|\n"
        "| cub/train | 85.00 ± 1.50 | – |\n"
        "| omniglot/train | 70.00 ± 3.00 | 90.00 ± 1.00 |\n"
        "\n### MAML, 5-way 1-shot\n\n"
        "| trained on \\ tested on | cub/test | omniglot/test |\n"
        "|---|---:|---:|\n"
        "| omniglot/train | 65.00 ± 2.50 | 80.00 ± 2.00 |\n")
    assert f"cross-domain matrices (rows trained on, columns tested on) in {report / 'cross_domain.md'}" in output(done)
    # the main table still names the two ProtoNet runs tested on cub after their runs
    assert methods(report) == ["MAML", "MAML", "ProtoNet", "ProtoNet [dataset=cub]",
                               "ProtoNet [run=omni,test_dataset=cub]"]


def test_report_of_one_training_and_one_test_dataset_writes_no_matrix(tmp_path: Path) -> None:
    for name in ("ProtoNet", "MAML"):
        write_run(tmp_path / name, {name: (0.9, 0.01)}, train="omniglot/train", test="omniglot/test",
                  overrides=[f"learner={name}"])
    assert cross_domain_report(gather_by_training_data(load_runs(tmp_path))) is None
    done = fewshot("report", f"dir={tmp_path}")
    assert (tmp_path / "report" / "results.md").is_file()
    assert not (tmp_path / "report" / "cross_domain.md").exists()
    assert "cross-domain" not in output(done)


def test_one_method_trained_on_two_datasets_is_one_matrix_with_two_rows(tmp_path: Path) -> None:
    write_run(tmp_path / "0", {"ProtoNet": (0.90, 0.010)}, train="omniglot/train", test="omniglot/test",
              overrides=["dataset=omniglot"])
    write_run(tmp_path / "1", {"ProtoNet": (0.60, 0.040)}, train="cub/train", test="omniglot/test",
              overrides=["dataset=cub"])
    # the main table renames the two runs of one method on one test set, as it always did ...
    assert [learner.name for result in gather_results(load_runs(tmp_path)) for learner in result.learners] == [
        "ProtoNet [dataset=omniglot]", "ProtoNet [dataset=cub]"]
    # ... but the matrix groups them by the method's own name: one matrix, a row per training dataset
    assert cross_domain_report(gather_by_training_data(load_runs(tmp_path))) == HEADER + (
        "### ProtoNet, 5-way 1-shot\n\n"
        "| trained on \\ tested on | omniglot/test |\n"
        "|---|---:|\n"
        "| omniglot/train | 90.00 ± 1.00 |\n"
        "| cub/train | 60.00 ± 4.00 |\n")


def test_two_runs_in_one_matrix_cell_are_named_after_their_runs(tmp_path: Path) -> None:
    write_run(tmp_path / "0", {"ProtoNet": (0.90, 0.010)}, train="omniglot/train", test="omniglot/test",
              overrides=["dataset=omniglot", "lr=0.1"])
    write_run(tmp_path / "1", {"ProtoNet": (0.80, 0.020)}, train="omniglot/train", test="omniglot/test",
              overrides=["dataset=omniglot", "lr=0.01"])
    write_run(tmp_path / "2", {"ProtoNet": (0.60, 0.040)}, train="cub/train", test="omniglot/test",
              overrides=["dataset=cub", "lr=0.1"])
    gathered = gather_by_training_data(load_runs(tmp_path))
    assert [learner.name for result in gathered for learner in result.learners] == [
        "ProtoNet [dataset=omniglot,lr=0.1]", "ProtoNet [dataset=omniglot,lr=0.01]", "ProtoNet"]
    text = cross_domain_report(gathered)
    assert text is not None
    assert "### ProtoNet [dataset=omniglot,lr=0.01], 5-way 1-shot\n\n" in text
    assert text.endswith("### ProtoNet, 5-way 1-shot\n\n| trained on \\ tested on | omniglot/test |\n|---|---:|\n"
                         "| cub/train | 60.00 ± 4.00 |\n")


def test_runs_read_once_serve_all_three_views(tmp_path: Path) -> None:
    """The report reads each results.json once (load_runs) and builds the table, the matrices and the copy notes
    from that one read: they equal the views of a separate read, and survive the folder's removal."""
    write_run(tmp_path / "runs" / "omni", {"ProtoNet": (0.90, 0.010)}, train="omniglot/train", test="omniglot/test",
              overrides=["dataset=omniglot"])
    write_run(tmp_path / "runs" / "cub", {"ProtoNet": (0.85, 0.015)}, train="cub/train", test="omniglot/test",
              overrides=["dataset=cub"])
    root = tmp_path / "runs"
    expected = (gather_results(load_runs(root)), gather_by_training_data(load_runs(root)),
                different_copies(load_runs(root)))
    runs = load_runs(root)
    for results_file in root.rglob("results.json"):
        results_file.unlink()
    assert [(r.spec, [(x.name, x.mean) for x in r.learners]) for r in gather_results(runs)] == [
        (r.spec, [(x.name, x.mean) for x in r.learners]) for r in expected[0]]
    assert [[x.name for x in r.learners] for r in gather_by_training_data(runs)] == [["ProtoNet"], ["ProtoNet"]]
    assert [[x.name for x in r.learners] for r in expected[1]] == [["ProtoNet"], ["ProtoNet"]]
    assert different_copies(runs) == expected[2] == []
    with pytest.raises(FileNotFoundError, match=r"no results\.json"):
        load_runs(root)
