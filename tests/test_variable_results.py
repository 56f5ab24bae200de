"""Results of variable (Meta-Dataset-style) episodes: the distribution recorded in the spec and read back from
results.json, pooled only with results of the same distribution, their wording in results.md, comparisons.md and
results.csv, and a change of ``evaluation.variable`` allowed on resume."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from episodes import FewShotDataset
from episodes.variable import VariableShape
from fewshot.backbones import create_backbone
from fewshot.evaluation import (
    EpisodeSpec,
    EvaluationResult,
    LearnerResult,
    evaluate_variable,
    gather_results,
    paired_comparison,
    plot_accuracy_vs_shots,
    read_json,
    write_json,
)
from fewshot.evaluation.runs import load_runs, pool_same_episodes, write_results
from fewshot.learners.metric.protonet import ProtoNet
from fewshot.training.meta_train import config_differences

SHAPE = VariableShape(min_way=3, max_way=8, max_query=4, max_support=100, max_support_per_class=20)


def result(name: str, accuracies: list[float], *, shape: VariableShape | None = SHAPE,
           seed: int = 3) -> EvaluationResult:
    acc = torch.tensor(accuracies, dtype=torch.float64)
    counts = (0, 0, 0) if shape is not None else (5, 1, 15)
    spec = EpisodeSpec("omniglot/test", *counts, episodes=len(accuracies), seed=seed, variable=shape)
    return EvaluationResult(spec, (LearnerResult(name, acc, float(acc.mean()), 0.01),), (), "omniglot/trainval",
                            "omniglot/test")


def test_a_variable_result_keeps_its_distribution_through_results_json(tmp_path: Path) -> None:
    variable, fixed = result("a", [0.5, 0.75, 1.0]), result("b", [0.5, 0.75, 1.0], shape=None)
    write_json(tmp_path / "results.json", [variable, fixed], provenance={"test_data": None})
    stored = json.loads((tmp_path / "results.json").read_text())["results"]
    assert stored[0]["spec"]["variable"] == {"min_way": 3, "max_way": 8, "max_query": 4, "max_support": 100,
                                             "max_support_per_class": 20, "min_log_weight": math.log(0.5),
                                             "max_log_weight": math.log(2.0)}
    assert "variable" not in stored[1]["spec"]  # fixed-shape results keep the format they always had
    back, _ = read_json(tmp_path / "results.json")
    assert [r.spec for r in back] == [variable.spec, fixed.spec]
    assert back[0].spec.variable == SHAPE  # the log-weights' floats exactly
    assert [r.spec.setting for r in back] == ["variable-way variable-shot (3-8 ways)", "5-way 1-shot"]
    assert dataclasses.replace(back[0].spec, variable=VariableShape(min_way=5, max_way=5)).setting == (
        "5-way variable-shot")


def test_a_spec_refuses_counts_that_contradict_its_kind() -> None:
    with pytest.raises(ValueError, match=r"variable episodes have no fixed n_way.*got \(5, 0, 0\)"):
        EpisodeSpec("d", 5, 0, 0, episodes=4, seed=0, variable=SHAPE)
    with pytest.raises(ValueError, match=r"n_way, n_shot and n_query must be >= 1, got \(0, 0, 0\)"):
        EpisodeSpec("d", 0, 0, 0, episodes=4, seed=0)


def test_variable_results_pool_only_with_the_same_distribution(tmp_path: Path) -> None:
    a, b = [0.5, 0.75, 1.0, 0.25], [0.25, 0.75, 0.5, 0.5]
    other = dataclasses.replace(SHAPE, max_query=2)
    for run, learner, scores, shape in (("r1", "a", a, SHAPE), ("r2", "b", b, SHAPE), ("r3", "c", b, other),
                                        ("r4", "d", b, None)):
        (tmp_path / run).mkdir()
        write_json(tmp_path / run / "results.json", result(learner, scores, shape=shape),
                   provenance={"test_data": None})
    gathered = gather_results(load_runs(tmp_path))  # read back from results.json, as the report does
    assert [[x.name for x in r.learners] for r in gathered] == [["a", "b"], ["c"], ["d"]]
    assert gathered[0].comparisons[0].result == paired_comparison(a, b)
    kept = pool_same_episodes([("x", result("a", a)), ("x", result("b", b, shape=other))])
    assert [[x.name for x in r.learners] for r in kept] == [["a"], ["b"]]


def test_reports_describe_variable_episodes_in_words(tmp_path: Path) -> None:
    variable = pool_same_episodes([("x", result("a", [0.5, 1.0, 0.75, 1.0])),
                                   ("x", result("b", [0.25, 1.0, 0.5, 1.0]))])[0]
    fixed = result("a", [0.6, 0.8, 0.7, 0.9], shape=None)
    write_results(tmp_path, [variable, fixed], {"test_data": None})
    text = (tmp_path / "results.md").read_text()
    assert ("- query sets balanced: 15 queries per class in every episode (the transductive methods' assumption "
            "holds)\n- variable episodes' query sets balanced: at most 4 queries per class, the same number for "
            "every class of an episode; fewer where one of its classes has under 8 images (half the smallest "
            "class, rounded down)\n") in text
    assert "| method | 5-way 1-shot | variable-way variable-shot (3-8 ways) |" in text  # variable columns last
    assert "10 queries" not in text and "0-way" not in text
    assert ("## omniglot/trainval → omniglot/test variable-way variable-shot (3-8 ways), at most 4 queries per "
            "class, the same number for every class of an episode; fewer where one of its classes has under 8 images "
            "(half the smallest class, rounded down), 4 episodes (seed 3; Meta-Dataset sampling: support set of at "
            "most 100 images, a class adding at most 20 to its size draw; class log-weights in [-0.693, 0.693])\n"
            ) in (tmp_path / "comparisons.md").read_text()
    with (tmp_path / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["n_way"], r["n_shot"], r["n_query"]) for r in rows] == [
        ("a", "", "", ""), ("b", "", "", ""), ("a", "5", "1", "15")]
    assert VariableShape(**json.loads(rows[0]["variable"])) == SHAPE and rows[2]["variable"] == ""
    assert plot_accuracy_vs_shots(tmp_path / "only_variable.png", [variable]) is None  # no shot count to plot
    assert not (tmp_path / "only_variable.png").exists()


def test_a_run_resumes_after_a_change_of_its_variable_episodes() -> None:
    saved = {"evaluation": {"seed": 0, "variable": None}}
    changed = {"evaluation": {"seed": 0, "variable": {"min_way": 5, "max_way": 20}}}
    assert config_differences(saved, changed) == []
    assert config_differences({"evaluation": {"seed": 0}}, changed) == []  # a run of an older version
    assert config_differences(saved, {"evaluation": {"seed": 1, "variable": None}}) == ["evaluation.seed: 0 -> 1"]


def test_the_spec_records_the_distribution_sampled() -> None:
    """More ways asked for than the test classes have: the episodes and the record are those of max_way = classes."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(6)
    images = (torch.rand(6, 1, 16, 16, generator=g)[labels] * 255).to(torch.uint8)
    data = FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(6)], name="six")
    torch.manual_seed(0)
    protonet = ProtoNet(create_backbone("conv4", hidden=4, in_channels=1, input_size=16))
    wide, exact = (evaluate_variable({"p": protonet}, data, shape=VariableShape(min_way=5, max_way=ways), episodes=3,
                                     seed=1, progress=False, permutations=0) for ways in (50, 6))
    assert wide.spec == exact.spec and wide.spec.variable == VariableShape(min_way=5, max_way=6)
    assert wide.spec.setting == "variable-way variable-shot (5-6 ways)"
    assert torch.equal(wide["p"].accuracies, exact["p"].accuracies)
