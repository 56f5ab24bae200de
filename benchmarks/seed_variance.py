"""Variance over training seeds for the leaderboard (``benchmarks/leaderboard.py``): a row of the accuracy table
may carry runs of further training seeds (``accuracy_table.py --seed-run``), tested on the row's own episodes; this
module checks that they are and reports the spread over episodes, over seeds and over both
(:func:`fewshot.evaluation.bootstrap.seed_and_episode_ci`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fewshot.evaluation.bootstrap import seed_and_episode_ci
from fewshot.evaluation.results import EvaluationResult
from fewshot.evaluation.runs import tested_key

SEED_RESAMPLES, SEED_BOOTSTRAP_SEED = 10_000, 0  # the two-level bootstrap of the training-seed variance


def _test_data_differs(provenance: dict, base: dict) -> str | None:
    """How the test data recorded in ``provenance`` differ from ``base``'s, or None; the test classes and the
    content fingerprint are compared only where both record them (older results record neither)."""
    (tested, fingerprint), (base_tested, base_fingerprint) = tested_key(provenance), tested_key(base)
    if "null" not in (tested, base_tested) and tested != base_tested:
        return "other test classes"
    if None not in (fingerprint, base_fingerprint) and fingerprint != base_fingerprint:
        return "another copy of the test data (content fingerprints differ)"
    return None


def seed_tables(runs: list[tuple[str, list[EvaluationResult], dict]]) -> dict[tuple[int, int], np.ndarray]:
    """Per setting (n_way, n_shot), the (seeds, episodes) per-episode accuracies of one method's runs with different
    training seeds, one row per run in the order given.

    Args:
        runs: (run name, results, provenance) of each run, as ``read_json`` reads its results file; at least one.
    Raises:
        ValueError naming the first run not tested on the first run's episodes: other settings, another test split,
        episode count, query count or episode seed, other recorded test classes or another copy of the data.
    """
    (first, base, base_provenance), *_ = runs
    specs = {(r.spec.n_way, r.spec.n_shot): (r.spec, r.test_dataset) for r in base}
    rows: dict[tuple[int, int], list[np.ndarray]] = {key: [] for key in specs}
    for name, results, provenance in runs:
        found = {(r.spec.n_way, r.spec.n_shot): r for r in results}
        other = [f"{w}w{k}s" for (w, k), r in found.items() if (r.spec, r.test_dataset) != specs.get((w, k))]
        why = (_test_data_differs(provenance, base_provenance)
               or (f"settings {sorted(found)} instead of {sorted(specs)}" if set(found) != set(specs) else None)
               or (f"other episodes in {', '.join(other)} (test split, episode count, queries or episode seed)"
                   if other else None))
        if why is not None:
            raise ValueError(f"run {name} was not tested on the episodes of run {first}: {why}; re-test it with "
                             f"`python -m fewshot eval run=<its folder>` and the evaluation settings of {first}")
        for key, result in found.items():
            (learner,) = result.learners
            rows[key].append(learner.accuracies.numpy())
    return {key: np.stack(values) for key, values in rows.items()}


def _interval(low: float, high: float) -> str:
    return f"{100 * low:.2f} – {100 * high:.2f}"


def seed_variance_lines(rows: list[dict]) -> list[str]:
    """The "Training-seed variance" section: per setting, each row with runs of further seeds (empty if none)."""
    multi = [row for row in rows if "seed_accuracies" in row]
    if not multi:
        return []
    lines = ["## Training-seed variance", "",
             "Methods trained with several seeds: the same command with another `seed=`, every run tested on the same "
             "episodes. The table above, its ● marks and the paired comparisons use each row's own run only (the "
             "first seed listed below). Per setting: the mean over every seed and episode, in %; the 95% interval "
             "over episodes (Student t over the seed-averaged per-episode accuracies), over seeds (Student t over "
             "the per-seed means) and over both (a two-level bootstrap resampling seeds and then episodes, "
             f"{SEED_RESAMPLES:,} samples, generator seed {SEED_BOOTSTRAP_SEED}; "
             "`fewshot.evaluation.seed_and_episode_ci`); and each seed's own mean.", "",
             "| setting | method | seeds | mean | episodes 95% | seeds 95% | seeds and episodes 95% | each seed |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for w, k in sorted({key for row in multi for key in row["seed_accuracies"]}):
        for row in multi:
            if (w, k) not in row["seed_accuracies"]:
                continue
            table = row["seed_accuracies"][(w, k)]
            ci = seed_and_episode_ci(table, resamples=SEED_RESAMPLES, seed=SEED_BOOTSTRAP_SEED)
            seeds = [row["seed"], *(run["seed"] for run in row["seed_runs"])]
            each = ", ".join(f"{100 * mean:.2f} (seed {seed})" for seed, mean in zip(seeds, table.mean(axis=1),
                                                                                     strict=True))
            lines.append(f"| {w}w{k}s | {row['method']} | {len(seeds)} | {100 * ci.mean:.2f} | "
                         f"{_interval(ci.episode_ci95_low, ci.episode_ci95_high)} | "
                         f"{_interval(ci.seed_ci95_low, ci.seed_ci95_high)} | "
                         f"{_interval(ci.bootstrap_ci95_low, ci.bootstrap_ci95_high)} | {each} |")
    lines += ["", *(f"- {row['method']}: " + ", ".join(
        f"seed {run['seed']} (`{run['run']}`)" for run in [row, *row["seed_runs"]]) for row in multi)]
    return lines


def readme_pointer(rows: list[dict], readme: Path, out: Path) -> str:
    """The line under the README's table that names the rows trained with several seeds (empty if none)."""
    multi = [f"{row['method']} ({1 + len(row['seed_runs'])} seeds)" for row in rows if "seed_accuracies" in row]
    if not multi:
        return ""
    link = Path(os.path.relpath(out.with_suffix(".md"), readme.resolve().parent)).as_posix()
    return (f"\nTrained with several seeds: {'; '.join(multi)}. Each row above is one run; the variance over "
            f"training seeds is under [Training-seed variance]({link}#training-seed-variance).\n")
