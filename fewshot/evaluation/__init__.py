"""Evaluation: every learner on the same seeded episodes, accuracy statistics, and reports."""

from fewshot.evaluation.bootstrap import SeedEpisodeCI, bootstrap_ci, seed_and_episode_ci
from fewshot.evaluation.episode_plot import episode_figure, plot_episode
from fewshot.evaluation.harness import OneProcess, Shards, check_settings, evaluate, evaluate_settings
from fewshot.evaluation.metrics import PairedComparison, holm_adjust, mean_ci95, paired_comparison, wilcoxon_p_value
from fewshot.evaluation.plots import plot_accuracy_vs_shots, plot_learning_curve
from fewshot.evaluation.report import (
    collect_provenance,
    csv_rows,
    markdown_table,
    read_json,
    write_csv,
    write_json,
    write_markdown,
)
from fewshot.evaluation.results import Comparison, EpisodeSpec, EvaluationResult, LearnerResult
from fewshot.evaluation.runs import (
    Runs,
    check_same_test_data,
    check_test_set,
    different_copies,
    gather_results,
    load_runs,
    run_label,
    write_results,
)
from fewshot.evaluation.variable import check_variable, evaluate_variable

__all__ = [
    "Comparison",
    "EpisodeSpec",
    "EvaluationResult",
    "LearnerResult",
    "OneProcess",
    "PairedComparison",
    "Runs",
    "SeedEpisodeCI",
    "Shards",
    "bootstrap_ci",
    "check_same_test_data",
    "check_settings",
    "check_test_set",
    "check_variable",
    "collect_provenance",
    "csv_rows",
    "different_copies",
    "episode_figure",
    "evaluate",
    "evaluate_settings",
    "evaluate_variable",
    "gather_results",
    "holm_adjust",
    "load_runs",
    "markdown_table",
    "mean_ci95",
    "paired_comparison",
    "plot_accuracy_vs_shots",
    "plot_episode",
    "plot_learning_curve",
    "read_json",
    "run_label",
    "seed_and_episode_ci",
    "wilcoxon_p_value",
    "write_csv",
    "write_json",
    "write_markdown",
    "write_results",
]
