"""Reports of evaluation results: JSON with provenance, CSV and a markdown table (PNG plots:
:mod:`fewshot.evaluation.plots`).

Several results (e.g. a sweep over learners and shots) merge into one table: one row per
method, one column per setting (``5-way 1-shot``, prefixed by the dataset when results come
from several datasets). Every file is written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from episodes import FewShotDataset
from episodes.files import atomic_write_text
from episodes.fingerprint import content_fingerprint
from fewshot._version import __version__
from fewshot.evaluation.ledger import Verdict, cell_verdict
from fewshot.evaluation.metrics import holm_adjust
from fewshot.evaluation.results import EpisodeSpec, EvaluationResult, LearnerResult

logger = logging.getLogger(__name__)

FORMAT = "fewshot-evaluation/1"
CSV_COLUMNS = ("method", "train_dataset", "test_dataset", "n_way", "n_shot", "n_query", "episodes", "seed",
               "mean", "ci95", "variable")


def _as_list(results: EvaluationResult | Iterable[EvaluationResult]) -> list[EvaluationResult]:
    items = [results] if isinstance(results, EvaluationResult) else list(results)
    if not items:
        raise ValueError("no results to report; pass one EvaluationResult or a non-empty list of them")
    for item in items:
        if not isinstance(item, EvaluationResult):
            raise TypeError(f"expected EvaluationResult, got {type(item).__name__}")
    return items


def _git_revision() -> str | None:
    """The commit of the source checkout the package runs from, or None (not a git checkout, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def collect_provenance(*, config: Mapping[str, Any] | None = None, seed: int | None = None,
                       device: str | None = None, test_set: FewShotDataset | None = None) -> dict[str, Any]:
    """Where a result came from: the caller's config and seed, plus library and machine facts.

    Args:
        config: the full run configuration as plain JSON-ready values (e.g. ``OmegaConf.to_container``).
        seed: the run's seed.
        device: the device the evaluation ran on, e.g. ``"cuda:0"``.
        test_set: the classes tested on: their names, image counts and content fingerprint
            (:func:`episodes.fingerprint.content_fingerprint`: which copy of the data) are recorded (``test_data``), so
            a re-test can check it scores the same ones and ``report`` which results are comparable.
    """
    tested = None if test_set is None else {"name": test_set.name, "classes": list(test_set.class_names),
                                            "class_sizes": test_set.class_sizes.tolist(),
                                            "fingerprint": content_fingerprint(test_set)}
    return {
        "test_data": tested,
        "config": dict(config) if config is not None else None,
        "seed": seed,
        "fewshot_version": __version__,
        "git_revision": _git_revision(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": device,
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | os.PathLike[str], results: EvaluationResult | Iterable[EvaluationResult], *,
               provenance: Mapping[str, Any] | None = None) -> Path:
    """Write every field of ``results`` (per-episode accuracies included) and ``provenance``.

    ``provenance`` defaults to :func:`collect_provenance` with no config; pass
    ``collect_provenance(config=..., seed=..., device=...)`` to record the run. Non-finite floats
    (a t statistic of +-inf) are written as ``Infinity``, as Python's json does.
    """
    document = {
        "format": FORMAT,
        "provenance": dict(provenance) if provenance is not None else collect_provenance(),
        "results": [r.to_dict() for r in _as_list(results)],
    }
    text = json.dumps(document, indent=2)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> tuple[list[EvaluationResult], dict[str, Any]]:
    """Read a file of :func:`write_json`: (results, provenance)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable results file ({err}); it is truncated or damaged: re-run "
                         "the evaluation that wrote it (fewshot eval run=<its run>)") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fewshot evaluation file (expected format {FORMAT!r})")
    return [EvaluationResult.from_dict(r) for r in document["results"]], document["provenance"]


def csv_rows(results: EvaluationResult | Iterable[EvaluationResult]) -> list[dict[str, Any]]:
    """One row per learner per result, with the keys of ``CSV_COLUMNS`` (mean, ci95 in [0, 1]). Variable episodes
    leave n_way, n_shot and n_query empty and give their distribution (``spec.variable``) as JSON in ``variable``."""
    rows = []
    for result in _as_list(results):
        spec = result.spec
        fixed = spec.variable is None
        for learner in result.learners:
            rows.append({"method": learner.name, "train_dataset": result.train_dataset or "",
                         "test_dataset": result.test_dataset, "n_way": spec.n_way if fixed else "",
                         "n_shot": spec.n_shot if fixed else "", "n_query": spec.n_query if fixed else "",
                         "episodes": spec.episodes, "seed": spec.seed, "mean": learner.mean, "ci95": learner.ci95,
                         "variable": "" if fixed else json.dumps(dataclasses.asdict(spec.variable))})
    return rows


def write_csv(path: str | os.PathLike[str], results: EvaluationResult | Iterable[EvaluationResult]) -> Path:
    """Write :func:`csv_rows` with a header row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(results))
    return atomic_write_text(path, buffer.getvalue())


def _dataset_label(result: EvaluationResult) -> str:
    train, test = result.train_dataset, result.test_dataset
    return test if train is None or train == test else f"{train} → {test}"


def _cells(results: list[EvaluationResult]) -> tuple[list[str], list[str], dict[tuple[str, str], LearnerResult]]:
    """Merge results into (methods, column labels, {(method, column): result}) in first-seen order."""
    dataset_order = list(dict.fromkeys(_dataset_label(r) for r in results))
    ordered = sorted(results, key=lambda r: (dataset_order.index(_dataset_label(r)), r.spec.variable is not None,
                                             r.spec.n_way, r.spec.n_shot))  # variable episodes after fixed ones
    columns: list[str] = []
    methods: list[str] = []
    cells: dict[tuple[str, str], LearnerResult] = {}
    for result in ordered:
        setting = result.spec.setting
        column = setting if len(dataset_order) == 1 else f"{_dataset_label(result)} {setting}"
        if column not in columns:
            columns.append(column)
        for learner in result.learners:
            if (learner.name, column) in cells:
                raise ValueError(f"two results for {learner.name!r} in {column!r}; a table takes one result per "
                                 "method and setting (rename the learners or report the runs separately)")
            cells[learner.name, column] = learner
    for result in results:
        for learner in result.learners:
            if learner.name not in methods:
                methods.append(learner.name)
    transductive = {method for (method, _), cell in cells.items() if cell.transductive}
    methods.sort(key=lambda method: method in transductive)  # inductive rows first, transductive rows apart
    return methods, columns, cells


TRANSDUCTIVE_MARK = " (transductive)"


def _verdicts(results: list[EvaluationResult]) -> dict[tuple[str, str], Verdict]:
    """{(method, column): verdict} for the cells whose learner names a ledger entry with a number there."""
    datasets = list(dict.fromkeys(_dataset_label(r) for r in results))
    found = {}
    for result in results:
        setting = result.spec.setting
        column = setting if len(datasets) == 1 else f"{_dataset_label(result)} {setting}"
        for learner in result.learners:
            judged = cell_verdict(learner, result)
            if judged is not None:
                found[learner.name, column] = judged
    return found


def markdown_table(results: EvaluationResult | Iterable[EvaluationResult], *, digits: int = 2) -> str:
    """A table for a paper: ``| method | 5-way 1-shot | ... |`` with cells ``98.80 ± 0.21`` (percent,
    mean ± 95% half-width); ``–`` where a method was not run in a setting. Methods that used the unlabelled
    query set (transductive) come after the inductive ones and carry :data:`TRANSDUCTIVE_MARK` after their
    name. A cell whose result names a reproduction-ledger entry with a published number for its dataset and
    setting adds the verdict, e.g. ``98.54 ± 0.18 (paper 98.8: below by 0.26)``."""
    listed = _as_list(results)
    methods, columns, cells = _cells(listed)
    verdicts = _verdicts(listed)
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method in methods:
        row, transductive = [], False
        for column in columns:
            cell = cells.get((method, column))
            text = "–" if cell is None else f"{100 * cell.mean:.{digits}f} ± {100 * cell.ci95:.{digits}f}"
            if cell is not None and (method, column) in verdicts:
                text += f" ({verdicts[method, column]})"
            row.append(text)
            transductive |= cell is not None and cell.transductive
        lines.append(f"| {method}{TRANSDUCTIVE_MARK if transductive else ''} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _episodes_source(spec: EpisodeSpec) -> str:
    if spec.episodes_file is not None:
        return f"episodes file {spec.episodes_file[:12]}"
    shape = spec.variable
    return f"seed {spec.seed}" if shape is None else (
        f"seed {spec.seed}; Meta-Dataset sampling: support set of at most {shape.max_support} images, a class adding "
        f"at most {shape.max_support_per_class} to its size draw; class log-weights in [{shape.min_log_weight:.3g}, "
        f"{shape.max_log_weight:.3g}]")


def comparisons_markdown(results: EvaluationResult | Iterable[EvaluationResult], *, alpha: float = 0.05) -> str:
    """Every paired comparison, one section per episode set: ``A - B`` in points with its 95% interval, the paired
    t-test's p-value and its Holm adjustment over that episode set's comparisons (:func:`holm_adjust`), whether
    the difference is significant at ``alpha`` after adjustment, a mark where a transductive learner is set
    against an inductive one (the protocols differ, so the test says little about the methods), and the Wilcoxon
    signed-rank p-value (unadjusted; ``–`` for comparisons stored before it was computed)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    sections = []
    for result in _as_list(results):
        if not result.comparisons:
            continue
        spec, kinds = result.spec, {r.name: r.transductive for r in result.learners}
        adjusted = holm_adjust([c.result.p_value for c in result.comparisons])
        lines = [f"## {_dataset_label(result)} {spec.setting}, {spec.queries}, {spec.episodes} "
                 f"episodes ({_episodes_source(spec)})", "",
                 f"| A | B | A − B (points) | 95% CI | p | Holm p | significant at {alpha:g} | Wilcoxon p |",
                 "|---|---|---:|---:|---:|---:|---|---:|"]
        for comparison, holm in zip(result.comparisons, adjusted, strict=True):
            c, a, b = comparison.result, comparison.learner_a, comparison.learner_b
            mixed = " (transductive vs inductive)" if kinds.get(a) != kinds.get(b) else ""
            lines.append(f"| {a} | {b} | {100 * c.mean_difference:+.2f} | [{100 * c.ci95_low:+.2f}, "
                         f"{100 * c.ci95_high:+.2f}] | {c.p_value:.2g} | {holm:.2g} | "
                         f"{'yes' if holm < alpha else 'no'}{mixed} | "
                         f"{'–' if c.wilcoxon_p_value is None else format(c.wilcoxon_p_value, '.2g')} |")
        sections.append("\n".join(lines))
    return "# Paired comparisons on identical episodes\n\n" + "\n\n".join(sections) + "\n"


def write_markdown(path: str | os.PathLike[str], results: EvaluationResult | Iterable[EvaluationResult], *,
                   digits: int = 2) -> Path:
    """Write :func:`markdown_table`."""
    return atomic_write_text(path, markdown_table(results, digits=digits))
