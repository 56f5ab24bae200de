"""The frame both scoring functions share (:class:`fewshot.evaluation.frame.ScoringFrame`): every learner's own train
or eval mode is back after a learner fails mid-run, in the fixed-shape and the variable-episode harness, and one
argument check for both."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_harness import Recorder, ToyProto, WrongShape, run, toy_dataset

from episodes.variable import VariableShape
from fewshot.evaluation import EvaluationResult, evaluate_variable
from fewshot.learners.base import Learner


class WrongFeatureShape(ToyProto):
    """An embedding learner whose scores on embedded features drop the last class."""

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        return super().predict_features(support, support_y, query, n_way)[..., :-1]


def run_variable(learners: dict[str, Learner], **overrides: object) -> EvaluationResult:
    options: dict[str, object] = {"shape": VariableShape(min_way=3, max_way=5, max_query=2, max_support=10),
                                  "episodes": 3, "seed": 1, "progress": False, "permutations": 0}
    options.update(overrides)
    return evaluate_variable(learners, toy_dataset(), **options)


HARNESSES: dict[str, Callable[..., EvaluationResult]] = {"fixed": run, "variable": run_variable}


@pytest.mark.parametrize("harness", HARNESSES)
@pytest.mark.parametrize("failing", [WrongFeatureShape, WrongShape], ids=["embedded", "direct"])
def test_modes_are_restored_when_a_learner_fails(harness: str, failing: type[Learner]) -> None:
    learners: dict[str, Learner] = {"proto": ToyProto(), "zero": Recorder(), "bad": failing()}
    learners["proto"].train()
    learners["zero"].eval()
    learners["bad"].train()
    with pytest.raises(ValueError, match="learner 'bad' returned logits of shape"):
        HARNESSES[harness](learners)
    for name, mode in {"proto": True, "zero": False, "bad": True}.items():
        assert {m.training for m in learners[name].modules()} == {mode}, name


@pytest.mark.parametrize("harness", HARNESSES)
def test_both_harnesses_refuse_a_bool_permutation_count(harness: str) -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"permutations must be an integer >= 0 .* got True"):
        HARNESSES[harness]({"zero": recorder}, permutations=True)
    assert recorder.seen == [] and recorder.training
