"""Negative-transfer tests (fewshot/evaluation/transfer.py) on per-episode accuracies built by hand, and the
cross-domain matrix (fewshot/evaluation/cross_domain.py) on a fixture."""

from __future__ import annotations

import pytest
import torch

from fewshot.evaluation.cross_domain import cross_domain_markdown, cross_domain_matrix
from fewshot.evaluation.results import EpisodeSpec, EvaluationResult, LearnerResult
from fewshot.evaluation.transfer import TransferPair, transfer_markdown, transfer_tests

# Four episodes. Arm "a": pretrained - scratch = -0.1, -0.2, -0.1, -0.2: mean -0.15, sample sd 0.0577, t = -5.196,
# df 3, two-sided p = 0.013847 (scipy.stats.ttest_rel gives the same). Arm "b": identical accuracies, p = 1. Arm "c":
# +0.3, +0.2, +0.3, +0.2: t = +8.660, p = 0.003239. Holm over the three: c (smallest) 3 * 0.003239 = 0.009717,
# a max(0.009717, 2 * 0.013847) = 0.027694, b 1.
ACCURACIES = {
    "a (pretrained)": [0.5, 0.4, 0.5, 0.4], "a (scratch)": [0.6, 0.6, 0.6, 0.6],
    "b (pretrained)": [0.5, 0.6, 0.7, 0.8], "b (scratch)": [0.5, 0.6, 0.7, 0.8],
    "c (pretrained)": [0.9, 0.8, 0.9, 0.8], "c (scratch)": [0.6, 0.6, 0.6, 0.6],
}
PAIRS = [TransferPair(arm, f"{arm} (pretrained)", f"{arm} (scratch)") for arm in "abc"]


def _learner(name: str, values: list[float], mean: float | None = None, ci95: float = 0.0) -> LearnerResult:
    accuracies = torch.tensor(values, dtype=torch.float64)
    return LearnerResult(name, accuracies, float(accuracies.mean()) if mean is None else mean, ci95)


def _result(learners: list[LearnerResult], *, train: str | None = "train", test: str = "test", n_shot: int = 1,
            ) -> EvaluationResult:
    spec = EpisodeSpec(dataset=test, n_way=5, n_shot=n_shot, n_query=5, episodes=len(learners[0].accuracies), seed=0)
    return EvaluationResult(spec, tuple(learners), (), train, test)


def _study() -> EvaluationResult:
    return _result([_learner(name, values) for name, values in ACCURACIES.items()])


def test_negative_transfer_flag_follows_the_holm_adjusted_paired_test() -> None:
    tests = transfer_tests([_study()], PAIRS, alpha=0.05)
    by_arm = {t.pair.arm: t for t in tests}
    assert by_arm["a"].comparison.mean_difference == pytest.approx(-0.15)
    assert by_arm["a"].comparison.t_statistic == pytest.approx(-5.196152, abs=1e-6)
    assert by_arm["a"].comparison.p_value == pytest.approx(0.013847, abs=1e-6)
    assert by_arm["c"].comparison.p_value == pytest.approx(0.003239, abs=1e-6)
    assert [by_arm[arm].holm_p for arm in "abc"] == pytest.approx([0.027694, 1.0, 0.009717], abs=1e-6)
    assert [by_arm[arm].verdict for arm in "abc"] == ["negative transfer", "no significant difference",
                                                       "positive transfer"]
    assert [by_arm[arm].negative for arm in "abc"] == [True, False, False]
    # At alpha 0.02 the raw p of "a" (0.0138) would pass but its adjusted one (0.0277) does not: no flag.
    strict = {t.pair.arm: t for t in transfer_tests([_study()], PAIRS, alpha=0.02)}
    assert not strict["a"].negative and strict["c"].verdict == "positive transfer"


def test_family_spans_every_episode_set() -> None:
    # The same study twice (two test sets): six tests, so "a"'s p is multiplied by up to 6 - rank.
    other = _result([_learner(name, values) for name, values in ACCURACIES.items()], test="shifted")
    tests = transfer_tests([_study(), other], PAIRS, alpha=0.05)
    assert len(tests) == 6 and {t.test_dataset for t in tests} == {"test", "shifted"}
    # sorted raw p: c, c (0.003239), a, a (0.013847), b, b (1): a's Holm p = max(6 * 0.003239, 4 * 0.013847)
    assert [t.holm_p for t in tests if t.pair.arm == "a"] == pytest.approx([0.055387] * 2, abs=1e-6)
    assert not any(t.negative for t in tests)


def test_markdown_flag_row_names_the_negative_arm_in_its_column() -> None:
    five = _result([_learner(name, [0.7] * 4) for name in ACCURACIES], n_shot=5)
    tests = transfer_tests([_study(), five], PAIRS, alpha=0.1)  # six tests: a's Holm p = 5 * 0.013847 = 0.069
    text = transfer_markdown([_study(), five], tests)
    flag = next(line for line in text.splitlines() if line.startswith("| **negative transfer**"))
    assert flag == "| **negative transfer** (pretrained < scratch, Holm p < 0.1) | a | none |"
    assert "| test | a | 5-way 1-shot | -15.00 |" in text and "**negative transfer** |" in text


def test_missing_learner_or_bad_alpha_is_refused() -> None:
    with pytest.raises(ValueError, match="has no learner"):
        transfer_tests([_study()], [TransferPair("d", "d (pretrained)", "d (scratch)")])
    with pytest.raises(ValueError, match="alpha"):
        transfer_tests([_study()], PAIRS, alpha=1.0)


def _matrix_fixture() -> list[EvaluationResult]:
    return [
        _result([_learner("ProtoNet", [0.9], 0.90, 0.010), _learner("MAML", [0.8], 0.80, 0.020)], train="A", test="A"),
        _result([_learner("ProtoNet", [0.7], 0.70, 0.030)], train="A", test="B"),
        _result([_learner("ProtoNet", [0.85], 0.85, 0.015)], train="B", test="B"),
        _result([_learner("ProtoNet", [0.6], 0.60, 0.050)], train=None, test="A"),
    ]


def test_cross_domain_matrix_rows_train_columns_test() -> None:
    assert cross_domain_matrix(_matrix_fixture(), method="ProtoNet", setting="5-way 1-shot") == (
        "| trained on \\ tested on | A | B |\n"
        "|---|---:|---:|\n"
        "| A | 90.00 ± 1.00 | 70.00 ± 3.00 |\n"
        "| B | – | 85.00 ± 1.50 |\n"
        "| (not recorded) | 60.00 ± 5.00 | – |\n")
    text = cross_domain_markdown(_matrix_fixture(), digits=1)
    assert "### ProtoNet, 5-way 1-shot" in text and "### MAML, 5-way 1-shot" in text
    assert text.endswith("### MAML, 5-way 1-shot\n\n| trained on \\ tested on | A |\n|---|---:|\n| A | 80.0 ± 2.0 |\n")


def test_cross_domain_refuses_ambiguous_or_absent_cells() -> None:
    twice = [*_matrix_fixture(), _result([_learner("ProtoNet", [0.5], 0.5, 0.1)], train="A", test="B")]
    with pytest.raises(ValueError, match="two results for 'ProtoNet'"):
        cross_domain_markdown(twice)
    with pytest.raises(ValueError, match="no result of 'ProtoNet' in '5-way 5-shot'"):
        cross_domain_matrix(_matrix_fixture(), method="ProtoNet", setting="5-way 5-shot")
