"""The Omniglot leaderboard, regenerated from the committed run folders by one command.

Reads the rows of an accuracy table written by ``benchmarks/accuracy_table.py`` (``--table``, its JSON) and each
row's per-episode results from the run folder copied beside it. Rows scored on the shared episode set of a setting
(the test split, episode count, queries and seed most rows share) are pooled and compared pairwise (paired t-test,
Holm-adjusted over every pair of the setting); rows on other episodes are listed apart. Writes:

- ``OUT.md``: the leaderboard (inductive, then transductive rows, each sorted by 5-way 1-shot accuracy; ``●`` marks
  a cell not significantly below the best of its protocol; each cell's ledger verdict where the paper has a number),
  the training budget, wall time and command of every row, and for a row with runs of further training seeds
  (``accuracy_table.py --seed-run``) its variance over episodes, over seeds and over both
  (:func:`fewshot.evaluation.seed_and_episode_ci`); the table and the paired tests use the row's own run only;
- ``OUT_comparisons.md``: every paired comparison; ``OUT.png``: the plot (``fewshot.evaluation.leaderboard``);
- with ``--readme``, the table between the README's ``<!-- leaderboard:start -->`` and ``<!-- leaderboard:end -->``
  (and a line pointing to the training-seed variance, where a row has one).

    PYTHONPATH=. python benchmarks/leaderboard.py --readme README.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seed_variance import readme_pointer, seed_tables, seed_variance_lines  # benchmarks/seed_variance.py

from episodes.files import atomic_write_text
from fewshot.evaluation.leaderboard import plot_leaderboard, tied_with_best
from fewshot.evaluation.ledger import cell_verdict
from fewshot.evaluation.report import comparisons_markdown, read_json
from fewshot.evaluation.results import EvaluationResult
from fewshot.evaluation.runs import pool_same_episodes, tested_key

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "experiment"
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"


def ledger_of(command: str, experiments: Path) -> str | None:
    """The ledger id named by the experiment file of a row's command (``experiment=<name>``), if any."""
    name = next((word.partition("=")[2] for word in command.split() if word.startswith("experiment=")), None)
    if name is None or not (experiments / f"{name}.yaml").is_file():
        return None
    return (yaml.safe_load((experiments / f"{name}.yaml").read_text(encoding="utf-8")) or {}).get("ledger")


def load_rows(table: Path, experiments: Path) -> list[tuple[dict, str, list[EvaluationResult]]]:
    """(row, test-data key, its results renamed to the row's method, with its protocol and ledger id). The key is the
    recorded test classes without the content fingerprint; rows whose fingerprints differ are refused (results
    without one, from before fingerprints were recorded, count as scored on the copy of the others). A row with runs
    of further training seeds (``seed_runs``) gains ``seed_accuracies``: :func:`seed_tables` of its run, then those."""
    loaded, copies = [], {}
    for row in json.loads(table.read_text(encoding="utf-8"))["rows"]:
        results, provenance = read_json(table.with_suffix("") / row["run"] / row["results_file"])
        if row.get("seed_runs"):
            runs = [(run["run"], *read_json(table.with_suffix("") / run["run"] / run["results_file"]))
                    for run in row["seed_runs"]]
            for _, _, seed_provenance in runs:
                tested, fingerprint = tested_key(seed_provenance)
                copies.setdefault(tested, set()).add(fingerprint)
            row = dict(row, seed_accuracies=seed_tables([(row["run"], results, provenance), *runs]))
        ledger = ledger_of(row["command"], experiments)
        renamed = []
        for result in results:
            (learner,) = result.learners
            learner = dataclasses.replace(learner, name=row["method"], transductive=row["transductive"], ledger=ledger)
            renamed.append(dataclasses.replace(result, learners=(learner,), comparisons=()))
        tested, fingerprint = tested_key(provenance)  # fingerprints are recorded since session 5
        copies.setdefault(tested, set()).add(fingerprint)
        loaded.append((row, tested, renamed))
    for tested, prints in copies.items():
        if len(prints - {None}) > 1:
            raise ValueError(f"rows tested on {tested} were scored on {len(prints - {None})} different copies of the "
                             "data (content fingerprints differ): they are not comparable; python -m fewshot data "
                             "check says which copy a folder holds")
    return loaded


def shared_sets(pooled: list[EvaluationResult]) -> dict[tuple[int, int], EvaluationResult]:
    """Per setting, the pooled episode set holding the most rows."""
    best: dict[tuple[int, int], EvaluationResult] = {}
    for result in pooled:
        key = (result.spec.n_way, result.spec.n_shot)
        if key not in best or len(result.learners) > len(best[key].learners):
            best[key] = result
    return best


def cell_text(result: EvaluationResult, name: str, tied: dict[str, bool]) -> str:
    learner = result[name]
    text = f"{100 * learner.mean:.2f} ± {100 * learner.ci95:.2f}{' ●' if tied[name] else ''}"
    judged = cell_verdict(learner, result)
    return text if judged is None else f"{text} ({judged})"


def table_lines(rows: list[dict], sets: dict[tuple[int, int], EvaluationResult]) -> list[str]:
    ties = {key: tied_with_best(result) for key, result in sets.items()}
    headers = [f"{w}w{k}s" for w, k in SETTINGS]
    lines = ["| method | " + " | ".join(headers) + " | trained | wall (min) |", "|---|" + "---:|" * (len(headers) + 2)]
    def scored(method: str, key: tuple[int, int]) -> bool:
        return key in sets and any(x.name == method for x in sets[key].learners)

    def rank(row: dict) -> tuple[int, float]:
        """By the first setting the row was tested in (5w1s first; 20-way-only models after the others)."""
        i = next(i for i, key in enumerate(SETTINGS) if scored(row["method"], key))
        return i, -sets[SETTINGS[i]][row["method"]].mean

    for transductive in (False, True):
        members = [r for r in rows if r["transductive"] == transductive
                   and any(scored(r["method"], key) for key in SETTINGS)]
        members.sort(key=rank)
        if transductive and members:
            lines.append("| **transductive** (they use the unlabelled query set: ranked apart) |"
                         + " |" * (len(headers) + 2))
        for row in members:
            cells = [cell_text(sets[key], row["method"], ties[key]) if scored(row["method"], key) else "–"
                     for key in SETTINGS]
            wall = f"{row['wall_minutes']:.0f}" if row.get("wall_minutes") is not None else "–"
            lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['trained']} | {wall} |")
    return lines


def trained_text(row: dict) -> str:
    if row.get("steps_planned"):
        text = f"{row['steps_trained']:,} steps"
        if row.get("backbone_weights"):
            text += " from the shared pretrained Conv4"
        return text
    if row.get("backbone_weights"):
        return "the shared pretrained Conv4, no further training"
    return f"supervised pretraining, {row['epochs']} epochs" if row.get("epochs") else "no training"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=RESULTS / "omniglot_accuracy.json",
                        help="the JSON of benchmarks/accuracy_table.py; its run folders lie beside it")
    parser.add_argument("--out", type=Path, default=RESULTS / "leaderboard", help="OUT.md, OUT_comparisons.md, OUT.png")
    parser.add_argument("--experiments", type=Path, default=EXPERIMENTS, help="experiment files (ledger ids)")
    parser.add_argument("--readme", type=Path, help="a README with the leaderboard markers to update")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    loaded = load_rows(args.table, args.experiments)
    # Runs written before results recorded their test classes match the recorded runs of the same test split.
    recorded = {r.test_dataset: key for _, key, results in loaded for r in results if key != "null"}
    unrecorded = sorted({row["method"] for row, key, results in loaded
                         if key == "null" and results[0].test_dataset in recorded})
    loaded = [(row, recorded.get(results[0].test_dataset, key) if key == "null" else key, results)
              for row, key, results in loaded]
    rows = [dict(row, trained=trained_text(row)) for row, _, _ in loaded]
    pooled = pool_same_episodes([(key, result) for _, key, results in loaded for result in results])
    sets = shared_sets(pooled)
    missing = [f"{w}w{k}s" for w, k in SETTINGS if (w, k) not in sets]
    if missing:
        parser.error(f"no results in {missing}; the leaderboard needs every setting of {SETTINGS}")
    apart = sorted({f"{x.name} ({r.test_dataset}, {r.spec.setting}, {r.spec.episodes} episodes)"
                    for r in pooled if r not in sets.values() for x in r.learners})
    spec, first = sets[SETTINGS[0]].spec, sets[SETTINGS[0]]
    table = "\n".join(table_lines(rows, sets)) + "\n"
    variance = seed_variance_lines(rows)
    counts = sorted({len(result.learners) for result in sets.values()})
    methods = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    text = "\n".join([
        "# Omniglot leaderboard: every method on identical episodes", "",
        f"Test classes: `{first.test_dataset}`; per setting the same {spec.episodes} episodes (seed {spec.seed}, "
        f"{spec.n_query} queries per class) for every row ({methods} methods per setting). Accuracy in % with the "
        "95% interval over episodes. ● marks a cell not significantly below the best of its protocol (paired "
        "t-test on the per-episode accuracies, Holm-adjusted over every pair of the setting, alpha 0.05); every "
        "comparison is in the `_comparisons.md` file beside this one. Where the "
        "method's paper has a number (the reproduction ledger, fewshot/evaluation/ledger.yaml), the cell says "
        "whether it is reproduced (inside the interval) or by how much the run is above or below it.", "",
        *([f"Runs from before results recorded their test classes ({'; '.join(unrecorded)}) are paired with the "
           "recorded runs of the same test split, episode count, queries and seed (the embedded Omniglot is "
           "checksummed and unchanged).", ""] if unrecorded else []),
        "Regenerate: `PYTHONPATH=. python benchmarks/leaderboard.py --readme README.md`.", "",
        table.rstrip("\n"), "",
        "## Commands", "", *(f"- {row['method']}: `{row['command']}`" for row in rows),
        *(["", "## Not on the shared episodes (listed in benchmarks/results/omniglot_accuracy.md)", "",
           *(f"- {item}" for item in apart)] if apart else []),
        *(["", *variance] if variance else []), ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".md"), text)
    atomic_write_text(args.out.parent / f"{args.out.name}_comparisons.md",
                      comparisons_markdown([sets[key] for key in SETTINGS]))
    if not args.no_plot:
        plot_leaderboard(args.out.with_suffix(".png"), [sets[key] for key in SETTINGS])
    if args.readme is not None:
        readme = args.readme.read_text(encoding="utf-8")
        if START not in readme or END not in readme:
            parser.error(f"{args.readme} has no {START} ... {END} markers")
        head, _, rest = readme.partition(START)
        _, _, tail = rest.partition(END)
        pointer = readme_pointer(rows, args.readme, args.out.resolve())
        atomic_write_text(args.readme, f"{head}{START}\n{table}{pointer}{END}{tail}")
    print(text)


if __name__ == "__main__":
    main()
