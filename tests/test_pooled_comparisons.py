"""Runs scored on identical episodes are pooled and compared pairwise, with Holm's correction; transductive against
inductive pairs are marked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fewshot.evaluation import EpisodeSpec, EvaluationResult, LearnerResult, gather_results, paired_comparison
from fewshot.evaluation.metrics import holm_adjust
from fewshot.evaluation.report import collect_provenance, comparisons_markdown, write_json
from fewshot.evaluation.runs import load_runs, pool_same_episodes, write_results


def result(name: str, accuracies: list[float], *, transductive: bool = False, seed: int = 0,
           n_shot: int = 1) -> EvaluationResult:
    acc = torch.tensor(accuracies, dtype=torch.float64)
    spec = EpisodeSpec(dataset="omniglot/test", n_way=5, n_shot=n_shot, n_query=15, episodes=len(accuracies),
                       seed=seed)
    learner = LearnerResult(name, acc, float(acc.mean()), 0.01, transductive)
    return EvaluationResult(spec, (learner,), (), "omniglot/trainval", "omniglot/test")


def test_holm_matches_a_hand_computation() -> None:
    # sorted 0.01, 0.02, 0.04, 0.3 -> 4*0.01=0.04, 3*0.02=0.06, 2*0.04=0.08, 1*0.3=0.3 (already non-decreasing)
    assert holm_adjust([0.04, 0.01, 0.3, 0.02]) == pytest.approx([0.08, 0.04, 0.3, 0.06])
    # monotone step-down: 3*0.01=0.03, 2*0.011=0.022 -> raised to 0.03; capped at 1
    assert holm_adjust([0.01, 0.011, 0.9]) == pytest.approx([0.03, 0.03, 0.9])
    assert holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.5, 1.5])


def test_runs_on_the_same_episodes_are_pooled_with_every_paired_test(caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = [0.8, 0.9, 1.0, 0.7], [0.6, 0.9, 0.8, 0.7], [1.0, 1.0, 0.9, 1.0]
    inputs = [("tested", result("a", a)), ("tested", result("b", b)), ("tested", result("c", c, transductive=True))]
    with caplog.at_level(logging.WARNING):
        [pooled] = pool_same_episodes(inputs)
    assert [learner.name for learner in pooled.learners] == ["a", "b", "c"]
    assert [(x.learner_a, x.learner_b) for x in pooled.comparisons] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pooled.comparisons[0].result == paired_comparison(a, b)
    assert pooled.comparisons[2].result == paired_comparison(b, c)
    assert "2 paired comparisons set a transductive learner" in caplog.text


def test_other_episodes_or_other_test_classes_are_not_pooled() -> None:
    scores = [0.5, 0.6, 0.7]
    kept = pool_same_episodes([("x", result("a", scores)), ("x", result("b", scores, seed=1)),
                               ("y", result("c", scores)), ("x", result("d", scores, n_shot=5))])
    assert [[learner.name for learner in r.learners] for r in kept] == [["a"], ["b"], ["c"], ["d"]]
    with pytest.raises(ValueError, match="rename the learners"):
        pool_same_episodes([("x", result("a", scores)), ("x", result("a", scores))])


def test_comparisons_table_marks_holm_significance_and_mixed_protocols() -> None:
    a = [1.0] * 10
    b = [0.5, 0.6] * 5
    c = [0.9, 1.0] * 5
    [pooled] = pool_same_episodes([("t", result("a", a)), ("t", result("b", b)),
                                   ("t", result("c", c, transductive=True))])
    table = comparisons_markdown(pooled)
    holm = holm_adjust([x.result.p_value for x in pooled.comparisons])
    rows = [line for line in table.splitlines() if line.startswith("| a ") or line.startswith("| b ")]
    assert rows[0].startswith("| a | b | +45.00 |") and f"| {holm[0]:.2g} | yes |" in rows[0]
    assert "(transductive vs inductive) | " in rows[1]
    assert "5-way 1-shot, 15 queries per class, 10 episodes (seed 0)" in table
    with pytest.raises(ValueError, match="alpha"):
        comparisons_markdown(pooled, alpha=1.5)


def test_gather_results_pools_separate_runs_and_the_report_files_say_so(tmp_path: Path) -> None:
    for name, scores in (("a", [0.8, 0.9, 1.0]), ("b", [0.7, 0.9, 0.8])):
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "results.json", [result(name, scores)],
                   provenance={**collect_provenance(), "test_data": {"classes": ["x"], "class_sizes": [20]}})
    merged = gather_results(load_runs(tmp_path))
    assert len(merged) == 1 and len(merged[0].comparisons) == 1
    out = tmp_path / "report"
    out.mkdir()
    write_results(out, merged, collect_provenance())
    assert "query sets balanced: 15 queries per class" in (out / "results.md").read_text()
    assert "| a | b | +10.00 |" in (out / "comparisons.md").read_text()
    assert len(json.loads((out / "results.json").read_text())["results"][0]["comparisons"]) == 1
