"""Cross-domain matrices: the accuracy of each method trained on dataset A and tested on dataset B.

Any set of results (one study, or many runs gathered with
:func:`~fewshot.evaluation.runs.gather_by_training_data`, which keeps a method's name across the data it was trained
and tested on) gives one matrix per method and setting: rows are the training data
(``EvaluationResult.train_dataset``), columns the test data, cells ``mean ± 95% half-width`` in percent, ``–`` where
that combination was not run. ``fewshot-report`` writes them to ``cross_domain.md`` (:func:`cross_domain_report`)
when the runs span more than one training or test dataset.
"""

from __future__ import annotations

from collections.abc import Iterable

from fewshot.evaluation.results import EvaluationResult, LearnerResult

__all__ = ["UNRECORDED", "cross_domain_markdown", "cross_domain_matrix", "cross_domain_report"]

#: the row label of results that did not record their training data
UNRECORDED = "(not recorded)"


def _cells(results: Iterable[EvaluationResult]) -> dict[tuple[str, str, str, str], LearnerResult]:
    """{(method, setting, train data, test data): result}, in first-seen order; two results for one key are an
    error (the matrix could show only one of them)."""
    cells: dict[tuple[str, str, str, str], LearnerResult] = {}
    for result in results:
        if not isinstance(result, EvaluationResult):
            raise TypeError(f"expected EvaluationResult, got {type(result).__name__}")
        for learner in result.learners:
            key = (learner.name, result.spec.setting, result.train_dataset or UNRECORDED, result.test_dataset)
            if key in cells:
                raise ValueError(f"two results for {learner.name!r} {key[1]} trained on {key[2]} and tested on "
                                 f"{key[3]}; a matrix holds one per cell (rename the learners, e.g. by run)")
            cells[key] = learner
    return cells


def _matrix(cells: dict[tuple[str, str, str, str], LearnerResult], method: str, setting: str, digits: int) -> str:
    mine = {(train, test): cell for (m, s, train, test), cell in cells.items() if (m, s) == (method, setting)}
    rows = list(dict.fromkeys(train for train, _ in mine))
    columns = list(dict.fromkeys(test for _, test in mine))
    lines = ["| trained on \\ tested on | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        texts = []
        for column in columns:
            cell = mine.get((row, column))
            texts.append("–" if cell is None else f"{100 * cell.mean:.{digits}f} ± {100 * cell.ci95:.{digits}f}")
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def cross_domain_matrix(results: Iterable[EvaluationResult], *, method: str, setting: str, digits: int = 2) -> str:
    """The markdown matrix of one ``method`` in one ``setting`` (e.g. ``"5-way 1-shot"``): rows training data,
    columns test data, both in first-seen order."""
    cells = _cells(results)
    if not any((m, s) == (method, setting) for m, s, _, _ in cells):
        have = sorted({(m, s) for m, s, _, _ in cells})
        raise ValueError(f"no result of {method!r} in {setting!r}; the results hold {have}")
    return _matrix(cells, method, setting, digits)


def cross_domain_markdown(results: Iterable[EvaluationResult], *, digits: int = 2) -> str:
    """One ``### method, setting`` section with its :func:`cross_domain_matrix` per method and setting of
    ``results``, in first-seen order."""
    cells = _cells(results)
    if not cells:
        raise ValueError("no results to tabulate; pass EvaluationResults (e.g. from gather_by_training_data or "
                         "read_json)")
    return _markdown(cells, digits)


def _markdown(cells: dict[tuple[str, str, str, str], LearnerResult], digits: int) -> str:
    sections = [f"### {method}, {setting}\n\n{_matrix(cells, method, setting, digits)}"
                for method, setting in dict.fromkeys((m, s) for m, s, _, _ in cells)]
    return "# Cross-domain accuracy (%, mean ± 95% CI): rows trained on, columns tested on\n\n" + "\n".join(sections)


def cross_domain_report(results: Iterable[EvaluationResult], *, digits: int = 2) -> str | None:
    """:func:`cross_domain_markdown` of ``results`` when they were trained on more than one dataset or tested on
    more than one (results without a recorded training dataset count as one more), else None: with one of each,
    every matrix would be a single cell that the results table already shows. Give it results named by
    :func:`~fewshot.evaluation.runs.gather_by_training_data`, so that a method trained on two datasets is one
    matrix with two rows."""
    cells = _cells(results)
    trained = {train for _, _, train, _ in cells}
    tested = {test for _, _, _, test in cells}
    if len(trained) < 2 and len(tested) < 2:
        return None
    return _markdown(cells, digits)
