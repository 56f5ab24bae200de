"""Collect measured accuracy rows from fewshot-train runs into one table beside the published numbers.

Each ``--run`` is ``METHOD=RUN_DIR``: a folder written by ``python -m fewshot train``. The row's
numbers come from the run's ``results.json``; for a run stopped before its configured number of
steps, from the newest re-test by ``python -m fewshot eval run=RUN_DIR checkpoint=last`` (under
``RUN_DIR/eval/``), and the row says at which step. The command of each row is rebuilt from the
run's ``.hydra/overrides.yaml``; the training wall time from the first and last lines of its log.

    PYTHONPATH=. python benchmarks/accuracy_table.py --hardware "2-core CPU" \\
        --run "ProtoNet, Conv4=runs/protonet" --run "MAML, Conv4, second order=runs/maml" \\
        --out benchmarks/results/omniglot_accuracy

Writes OUT.md and OUT.json; copies each run's small files (config, overrides, metrics.csv, log,
results) to OUT/<run folder>/ so the numbers stay checkable without the checkpoints.

A ``--seed-run METHOD=RUN_DIR`` (repeatable) attaches a run of the same command with another ``seed=`` to the row
of METHOD (a row of ``--keep`` or of ``--run``), for the leaderboard's training-seed variance; it is refused unless
its overrides equal the row run's but for ``seed=``, its seed is new to the row, it trained as many steps and it was
tested on the same episodes. The row's own numbers stay those of its first run:

    PYTHONPATH=. python benchmarks/accuracy_table.py --hardware "2-core CPU" \\
        --keep benchmarks/results/omniglot_accuracy.json --seed-run "ProtoNet, Conv4=runs/protonet_seed1" \\
        --out benchmarks/results/omniglot_accuracy
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leaderboard import ledger_of  # benchmarks/leaderboard.py
from seed_variance import seed_tables  # benchmarks/seed_variance.py

from episodes.files import atomic_write_text
from fewshot.evaluation.ledger import load_ledger
from fewshot.evaluation.report import read_json


def _short_citation(paper: str) -> str:
    """``'Snell, Swersky & Zemel 2017, "..."'`` -> ``'Snell et al. 2017'``."""
    first_author = re.split(r"[,&]", paper, maxsplit=1)[0].strip()
    year = re.search(r"\b(?:19|20)\d\d\b", paper)
    return f"{first_author} et al. {year.group(0)}" if year else first_author


def published(row: dict) -> tuple[str, dict[str, float]] | None:
    """(short citation, {setting: published %}) of the reproduction-ledger entry (fewshot/evaluation/ledger.yaml)
    that the experiment file of ``row``'s command names, or None (where each number was checked: the entry's
    ``checked``)."""
    key = ledger_of(row["command"], EXPERIMENTS)
    if key is None:
        return None
    entry = load_ledger()[key]
    return _short_citation(entry.paper), dict(entry.accuracy)


SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
EXPERIMENTS = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "experiment"
SMALL_FILES = ("config.yaml", ".hydra/overrides.yaml", "metrics.csv", "cli.log", "results.json", "results.md")


def _timestamps(log: Path) -> tuple[datetime, datetime] | None:
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]", log.read_text(), flags=re.MULTILINE)
    return (datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1])) if stamps else None


def collect(method: str, run: Path) -> dict:
    """One row: the accuracies (%), CIs, steps trained, command and wall time of ``run``."""
    config = OmegaConf.load(run / "config.yaml")
    overrides = [str(o) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml")]
    stage = config.trainer.get("episodic") or config.trainer  # the meta stage of pretrain-then-episodic
    planned = int(stage.steps) if "steps" in stage else None
    epochs = (config.trainer.get("pretrain") or config.trainer).get("epochs")
    source, step = run / "results.json", planned
    retests = sorted((run / "eval").glob("*/results.json"))
    if retests:  # a re-test (e.g. on more episodes, or of a run stopped early) supersedes the run's own test
        source = retests[-1]
    elif not source.is_file():
        raise FileNotFoundError(f"{run} has no results.json and no re-test under eval/: run "
                                f"`python -m fewshot eval run={run} checkpoint=last` first")
    if not (run / "results.json").is_file():  # stopped before the end of its training
        step = int(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["step"])
    results, provenance = read_json(source)
    cells = {}
    for result in results:
        (learner,) = result.learners
        cells[f"{result.spec.n_way}w{result.spec.n_shot}s"] = {
            "mean": 100 * learner.mean, "ci95": 100 * learner.ci95, "episodes": result.spec.episodes,
            "n_query": result.spec.n_query}
    span = _timestamps(run / "cli.log")
    experiment = next((o.partition("=")[2] for o in overrides if o.startswith("experiment=")), None)
    file_steps = (OmegaConf.load(EXPERIMENTS / f"{experiment}.yaml").get("trainer", {}).get("steps")
                  if experiment else None)
    command = "python -m fewshot train " + " ".join(
        f"'{o}'" if any(c in o for c in "[], ") else o for o in overrides if not o.startswith("hydra."))
    if step != planned:
        command += f" (stopped after step {step:,}), then python -m fewshot eval run=<its folder> checkpoint=last"
    elif source != run / "results.json":
        retest = [str(o) for o in OmegaConf.load(source.parent / ".hydra" / "overrides.yaml")
                  if not str(o).startswith(("run=", "hydra."))]
        command += ", then python -m fewshot eval run=<its folder> " + " ".join(retest)
    return {"method": method, "run": run.name, "name": config.name, "cells": cells, "steps_trained": step,
            "steps_planned": planned, "steps_in_experiment_file": file_steps, "command": command,
            "epochs": None if config.get("backbone_weights") else epochs,
            "backbone_weights": config.get("backbone_weights"),
            "transductive": any(r.transductive for result in results for r in result.learners),
            "results_file": str(source.relative_to(run)), "torch": provenance.get("torch_version"),
            "wall_minutes": (span[1] - span[0]).total_seconds() / 60 if span else None}


def _training_overrides(run: Path) -> list[str]:
    """The run's command-line overrides, sorted, without ``seed=`` and Hydra's own."""
    overrides = (str(o) for o in OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    return sorted(o for o in overrides if o.partition("=")[0].lstrip("+~") != "seed" and not o.startswith("hydra."))


def seed_run(row: dict, base: Path, run: Path) -> dict:
    """The record of ``run``, a run of ``row``'s command with another training seed (``base``: the row's run folder,
    ``row["seed"]``: its seed): its seed, results file, steps and cells (as :func:`collect` gives them).

    Raises:
        ValueError: ``run``'s overrides differ from ``base``'s in more than ``seed=``, its seed is one the row already
            has, it trained another number of steps, or it was not tested on the row's episodes.
    """
    ours, theirs = _training_overrides(run), _training_overrides(base)
    if ours != theirs:
        raise ValueError(f"{run} is not the command of {base} with another seed=: it has "
                         f"{sorted(set(ours) - set(theirs)) or 'nothing'} where that run has "
                         f"{sorted(set(theirs) - set(ours)) or 'nothing'}")
    seed = OmegaConf.load(run / "config.yaml").get("seed")
    seeds = [row["seed"], *(other["seed"] for other in row.get("seed_runs", []))]
    if seed in seeds:
        raise ValueError(f"{run} was trained with seed={seed}, which row {row['method']!r} already has (seeds "
                         f"{seeds}); attach runs of other seeds")
    collected = collect(row["method"], run)
    if collected["steps_trained"] != row["steps_trained"]:
        raise ValueError(f"{run} trained {collected['steps_trained']} steps, the row's run {row['steps_trained']}: "
                         "only runs trained as far compare")
    seed_tables([(base.name, *read_json(base / row["results_file"])),
                 (run.name, *read_json(run / collected["results_file"]))])  # ValueError unless on the same episodes
    return {"run": run.name, "seed": seed, **{key: collected[key] for key in (
        "results_file", "steps_trained", "cells", "wall_minutes", "torch")}}


def _copy_small_files(run: Path, results_file: str, out: Path) -> None:
    """Copy ``run``'s small files and its results file to ``out`` (unless they are already there)."""
    for name in (*SMALL_FILES, results_file):
        if (run / name).is_file() and (run / name).resolve() != (out / name).resolve():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / name, out / name)


def _row_lines(row: dict) -> list[str]:
    """The measured line of ``row`` and, for a method with a published number, the published line."""
    out = []
    cells = [f"{row['cells'][s]['mean']:.2f} ± {row['cells'][s]['ci95']:.2f}" if s in row["cells"] else "-"
             for s in SETTINGS]
    start = "the shared pretrained Conv4 file" if row["backbone_weights"] else None
    trained = (f"{row['steps_trained']:,} steps" if row["steps_planned"] else
               f"supervised pretraining, {row['epochs']} epochs" if row["epochs"] else "no training")
    if start:
        trained = f"{trained} from {start}" if row["steps_planned"] else f"{start}, no further training"
    if row["steps_planned"] and row["steps_in_experiment_file"]:
        trained += f" of the experiment file's {row['steps_in_experiment_file']:,}"
    wall = f"{row['wall_minutes']:.0f}" if row["wall_minutes"] is not None else "-"
    out.append(f"| {row['method']} (measured) | " + " | ".join(cells) + f" | {trained} | {wall} |")
    cited = published(row)
    if cited is not None:
        source, paper = cited
        gaps = [("-" if s not in paper  # the paper reports no number in this setting
                 else f"{paper[s]} ({round(row['cells'][s]['mean'] - paper[s], 2) + 0.0:+.2f})" if s in row["cells"]
                 else str(paper[s]))
                for s in SETTINGS]
        out.append(f"| {row['method']} ({source}) | " + " | ".join(gaps) + " | | |")
    return out


def markdown(rows: list[dict], hardware: str, notes: list[str]) -> str:
    out = ["# Omniglot accuracy: measured rows beside the published ones", "",
           f"Hardware: {hardware}. Accuracy in % over the fixed test episodes (evaluation seed 2017, 15 queries per "
           "class), with the 95% confidence interval; every row is tested on the same episodes of its split.", "",
           "| method | " + " | ".join(SETTINGS) + " | trained | wall (min) |", "|---|" + "---:|" * (len(SETTINGS) + 2)]
    ordered = [r for r in rows if not r["transductive"]] + [r for r in rows if r["transductive"]]
    for row in ordered:
        if row["transductive"] and row is next(r for r in ordered if r["transductive"]):
            out.append("| **transductive** (these use the unlabelled query set: not comparable with the rows above) |"
                       + " |" * (len(SETTINGS) + 2))
        out += _row_lines(row)
    out += ["", "Published rows show the paper's number and, in brackets, measured minus published.", "",
            "## Commands", ""]
    out += [f"- {row['method']}: `{row['command']}` (numbers from `{row['run']}/{row['results_file']}`)"
            + "".join(f"; also trained with seed={run['seed']} (`{run['run']}/{run['results_file']}`)"
                      for run in row.get("seed_runs", []))
            for row in ordered]
    if notes:
        out += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="METHOD=RUN_DIR")
    parser.add_argument("--seed-run", action="append", default=[], metavar="METHOD=RUN_DIR",
                        help="a run of the command of METHOD's row with another seed= (repeatable): kept beside the "
                        "row for the leaderboard's training-seed variance")
    parser.add_argument("--hardware", required=True, help="what the runs ran on, for the table's header")
    parser.add_argument("--out", type=Path, required=True, help="OUT.md, OUT.json and OUT/<run>/ are written")
    parser.add_argument("--note", action="append", default=[], help="a remark printed under the table (repeatable)")
    parser.add_argument("--keep", type=Path, help="an OUT.json written before: its rows (and notes) come first, "
                        "for runs whose checkpoints are no longer at hand")
    args = parser.parse_args(argv)
    if not args.run and not args.seed_run:
        parser.error("give at least one --run METHOD=RUN_DIR or --seed-run METHOD=RUN_DIR")
    kept = json.loads(args.keep.read_text()) if args.keep else {"rows": [], "notes": []}
    for row in kept["rows"]:  # rows of runs from before results recorded these: read from the run's config
        config = OmegaConf.load(args.out / row["run"] / "config.yaml")
        row.setdefault("transductive", config.learner.get("bn_mode") == "transductive")  # MAML's batch norm
        row.setdefault("backbone_weights", config.get("backbone_weights"))
    rows = []
    for spec in args.run:
        method, sep, folder = spec.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--run {spec!r}: expected METHOD=RUN_DIR with an existing folder")
        rows.append(collect(method, Path(folder)))
    folders = [(row, Path(spec.partition("=")[2])) for row, spec in zip(rows, args.run, strict=True)]
    bases = {row["run"]: args.out / row["run"] for row in kept["rows"]} | {row["run"]: run for row, run in folders}
    rows, notes = kept["rows"] + rows, kept["notes"] + args.note
    taken = {row["run"] for row in rows} | {run["run"] for row in rows for run in row.get("seed_runs", [])}
    for spec in args.seed_run:
        method, sep, folder = spec.partition("=")
        named = [row for row in rows if row["method"] == method]
        if not sep or not Path(folder).is_dir() or len(named) != 1:
            parser.error(f"--seed-run {spec!r}: expected METHOD=RUN_DIR with an existing folder and the method of "
                         f"one row (rows: {'; '.join(row['method'] for row in rows)})")
        if Path(folder).name in taken:
            parser.error(f"--seed-run {spec!r}: the table already has a run folder named {Path(folder).name!r}; "
                         "rename the folder")
        (row,) = named
        row.setdefault("seed", OmegaConf.load(bases[row["run"]] / "config.yaml").get("seed"))
        try:
            record = seed_run(row, bases[row["run"]], Path(folder))
        except ValueError as err:
            parser.error(f"--seed-run {spec!r}: {err}")
        row.setdefault("seed_runs", []).append(record)
        taken.add(record["run"])
        folders.append((record, Path(folder)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for record, run in folders:
        _copy_small_files(run, record["results_file"], args.out / run.name)
    text = markdown(rows, args.hardware, notes)
    atomic_write_text(args.out.with_suffix(".json"),
                      json.dumps({"hardware": args.hardware, "rows": rows, "notes": notes}, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
