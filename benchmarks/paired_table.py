"""Paired comparisons between runs scored on identical episodes, with Holm's correction, as one markdown file.

Each ``--run`` is ``NAME=RESULTS``: a ``results.json`` written by ``python -m fewshot train`` or ``eval`` (or a run
folder holding one). Results of the same episode set (dataset, setting, query count, episodes, seed and recorded
test classes) are pooled and every pair is compared episode by episode (``fewshot.evaluation.runs``); the learner
in each file is renamed NAME.

    R=benchmarks/results/omniglot_accuracy
    PYTHONPATH=. python benchmarks/paired_table.py --run "Baseline=$R/baseline_pretrained_file" \\
        --run "TIM-GD=$R/tim" --out benchmarks/results/transductive_vs_baseline.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text
from fewshot.evaluation.report import comparisons_markdown, read_json
from fewshot.evaluation.runs import pool_same_episodes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RESULTS")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args(argv)
    loaded = []
    for item in args.run:
        name, _, where = item.partition("=")
        path = Path(where)
        path = path / "results.json" if path.is_dir() else path
        if not name or not path.is_file():
            parser.error(f"--run {item!r}: expected NAME=<results.json or a run folder holding one>")
        results, provenance = read_json(path)
        tested = json.dumps(provenance.get("test_data"), sort_keys=True)
        for result in results:
            if len(result.learners) != 1:
                parser.error(f"{path} holds {len(result.learners)} learners; give a run of one learner")
            learner = dataclasses.replace(result.learners[0], name=name)
            loaded.append((tested, dataclasses.replace(result, learners=(learner,), comparisons=())))
    runs = ", ".join(f"`{item}`" for item in args.run)
    header = (f"Runs: {runs}.\n\nCommand: `PYTHONPATH=. python benchmarks/paired_table.py` with these `--run` "
              "arguments.\n\n")
    text = comparisons_markdown(pool_same_episodes(loaded))
    title, _, body = text.partition("\n\n")
    atomic_write_text(args.out, f"{title}\n\n{header}{body}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
