"""Did pretraining help? Each pretrained learner against its scratch counterpart, on identical episodes.

A :class:`TransferPair` names a pretrained learner and the learner that runs the same procedure from scratch;
:func:`transfer_tests` compares every pair on every episode set of a study (a paired t-test on the per-episode
accuracies, pretrained minus scratch), Holm-adjusts the p-values over the whole family of tests, and marks negative
transfer: the pretrained learner significantly worse (adjusted p < alpha). :func:`write_transfer_report` writes the
study's files: accuracy tables with a row flagging negative transfer, the tests, JSON, CSV and plots.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from episodes.files import atomic_write, atomic_write_text
from fewshot.evaluation.metrics import PairedComparison, holm_adjust, paired_comparison
from fewshot.evaluation.report import markdown_table, write_csv, write_json
from fewshot.evaluation.results import EvaluationResult

__all__ = ["TransferPair", "TransferTest", "plot_transfer", "transfer_markdown", "transfer_tests",
           "write_transfer_report"]

logger = logging.getLogger(__name__)

Verdict = Literal["negative transfer", "positive transfer", "no significant difference"]


@dataclass(frozen=True)
class TransferPair:
    """``pretrained`` and ``scratch``: learner names of one procedure (``arm``, e.g. ``"linear probe"``) run from
    the pretrained backbone and from the random initialisation."""

    arm: str
    pretrained: str
    scratch: str


@dataclass(frozen=True)
class TransferTest:
    """One pair on one episode set.

    Attributes:
        comparison: the paired t-test of pretrained minus scratch (``mean_difference`` < 0: pretraining hurt).
        holm_p: its p-value Holm-adjusted over every test of the family (:func:`transfer_tests`).
        alpha: the family-wise significance level.
    """

    pair: TransferPair
    test_dataset: str
    n_way: int
    n_shot: int
    comparison: PairedComparison
    holm_p: float
    alpha: float

    @property
    def verdict(self) -> Verdict:
        if self.holm_p >= self.alpha or self.comparison.mean_difference == 0:
            return "no significant difference"
        return "negative transfer" if self.comparison.mean_difference < 0 else "positive transfer"

    @property
    def negative(self) -> bool:
        """The pretrained learner is worse than its scratch counterpart, Holm-adjusted p < alpha."""
        return self.verdict == "negative transfer"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.pair), "test_dataset": self.test_dataset, "n_way": self.n_way, "n_shot": self.n_shot,
                **self.comparison.to_dict(), "holm_p_value": self.holm_p, "alpha": self.alpha,
                "verdict": self.verdict}


def transfer_tests(results: Iterable[EvaluationResult], pairs: Sequence[TransferPair], *,
                   alpha: float = 0.05) -> list[TransferTest]:
    """Every pair on every episode set of ``results``, as one family of tests.

    Args:
        results: episode sets, each holding both learners of every pair (per-episode accuracies on the same
            episodes).
        pairs: the pretrained/scratch pairs.
        alpha: family-wise level: p-values are Holm-adjusted (:func:`~fewshot.evaluation.metrics.holm_adjust`) over
            all ``len(results) * len(pairs)`` tests, and a test is significant when its adjusted p < ``alpha``.
    Returns:
        The tests, result by result, pair by pair.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), e.g. 0.05, got {alpha}")
    if not pairs:
        raise ValueError("no pairs to test; give TransferPair(arm, pretrained_name, scratch_name) for each arm")
    raw = []
    for result in results:
        names = {learner.name for learner in result.learners}
        for pair in pairs:
            missing = [n for n in (pair.pretrained, pair.scratch) if n not in names]
            if missing:
                raise ValueError(f"{result.test_dataset} {result.spec.setting} has no learner {missing} of pair "
                                 f"{pair.arm!r}; it has {sorted(names)}")
            comparison = paired_comparison(result[pair.pretrained].accuracies, result[pair.scratch].accuracies)
            raw.append((pair, result, comparison))
    if not raw:
        raise ValueError("no results to test; pass the study's EvaluationResults")
    adjusted = holm_adjust([comparison.p_value for _, _, comparison in raw])
    return [TransferTest(pair, result.test_dataset, result.spec.n_way, result.spec.n_shot, comparison, holm, alpha)
            for (pair, result, comparison), holm in zip(raw, adjusted, strict=True)]


def _flag_row(table: str, tests: Sequence[TransferTest], test_dataset: str, alpha: float) -> str:
    """``table`` (a :func:`markdown_table` of one test dataset) with a last row naming, per column, the arms whose
    pretrained learner is significantly worse than its scratch counterpart."""
    columns = [c.strip() for c in table.splitlines()[0].strip("|").split("|")][1:]
    cells = []
    for column in columns:
        flagged = [t.pair.arm for t in tests if t.test_dataset == test_dataset and t.negative
                   and f"{t.n_way}-way {t.n_shot}-shot" == column]
        cells.append(", ".join(flagged) if flagged else "none")
    label = f"**negative transfer** (pretrained < scratch, Holm p < {alpha:g})"
    return table + f"| {label} | " + " | ".join(cells) + " |\n"


def transfer_markdown(results: Sequence[EvaluationResult], tests: Sequence[TransferTest]) -> str:
    """Per test dataset, the accuracy table (:func:`markdown_table`) with a row flagging negative transfer, then one
    table of every test: pretrained minus scratch in points, its 95% interval, p and Holm p, and the verdict."""
    if not tests:
        raise ValueError("no transfer tests to report; run transfer_tests first")
    alpha = tests[0].alpha
    sections = []
    for dataset in dict.fromkeys(r.test_dataset for r in results):
        table = markdown_table([r for r in results if r.test_dataset == dataset])
        sections.append(f"## Tested on {dataset}\n\n{_flag_row(table, tests, dataset, alpha)}")
    lines = [f"## Pretrained minus scratch (paired t-test on identical episodes, Holm-adjusted over {len(tests)} "
             "tests)", "",
             "| test data | arm | setting | pretrained − scratch (points) | 95% CI | p | Holm p | verdict |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for t in tests:
        c = t.comparison
        verdict = f"**{t.verdict}**" if t.negative else t.verdict
        lines.append(f"| {t.test_dataset} | {t.pair.arm} | {t.n_way}-way {t.n_shot}-shot | "
                     f"{100 * c.mean_difference:+.2f} | [{100 * c.ci95_low:+.2f}, {100 * c.ci95_high:+.2f}] | "
                     f"{c.p_value:.2g} | {t.holm_p:.2g} | {verdict} |")
    return "\n".join([*sections, *lines]) + "\n"


def plot_transfer(path: str | os.PathLike[str], results: Sequence[EvaluationResult], pairs: Sequence[TransferPair], *,
                  title: str | None = None) -> Path | None:
    """Accuracy (percent, 95% error bars) against shots: one colour per arm, the pretrained learner solid, its scratch
    counterpart dashed, the legend beside the axes.

    Returns:
        The PNG path, or None when matplotlib is missing (a warning is logged).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plot (pip install 'fewshot[plot]')")
        return None
    figure = Figure(figsize=(8.0, 4.0), layout="constrained")
    axes = figure.subplots()
    shots = sorted({r.spec.n_shot for r in results})
    for index, pair in enumerate(pairs):
        for name, style, marker in ((pair.pretrained, "-", "o"), (pair.scratch, "--", "s")):
            points = sorted((r.spec.n_shot, 100 * r[name].mean, 100 * r[name].ci95) for r in results
                            if any(learner.name == name for learner in r.learners))
            axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], capsize=3,
                          color=f"C{index}", linestyle=style, marker=marker, label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(k) for k in shots])
    axes.set_xlabel("shots per class")
    axes.set_ylabel("query accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        axes.set_title(title)
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=150))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def write_transfer_report(out_dir: str | os.PathLike[str], results: Sequence[EvaluationResult],
                          tests: Sequence[TransferTest], *, provenance: Mapping[str, Any], title: str,
                          notes: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Write a transfer study into ``out_dir``: ``results.json`` (every per-episode accuracy and paired
    comparison, with ``provenance``; :func:`~fewshot.evaluation.report.read_json` reads it), ``results.csv``,
    ``transfer.json`` (the tests and ``extra``, e.g. the study's settings and timings), ``results.md`` (``title``,
    ``notes`` as a list, :func:`transfer_markdown`) and ``accuracy_vs_shots_<test data>.png`` per test dataset
    (:func:`plot_transfer` of the tested pairs; skipped with a warning without matplotlib).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = transfer_markdown(results, tests)
    written = [write_json(out / "results.json", results, provenance=provenance),
               write_csv(out / "results.csv", results)]
    document = {"family_size": len(tests), "alpha": tests[0].alpha, "tests": [t.to_dict() for t in tests],
                **(dict(extra) if extra else {})}
    written.append(atomic_write_text(out / "transfer.json", json.dumps(document, indent=2) + "\n"))
    header = f"# {title}\n\n" + "".join(f"- {note}\n" for note in notes)
    written.append(atomic_write_text(out / "results.md", f"{header}\n{text}"))
    for dataset in dict.fromkeys(r.test_dataset for r in results):
        pairs = list(dict.fromkeys(t.pair for t in tests))
        plot = plot_transfer(out / f"accuracy_vs_shots_{_slug(dataset)}.png",
                             [r for r in results if r.test_dataset == dataset], pairs, title=dataset)
        if plot is not None:
            written.append(plot)
    return written
