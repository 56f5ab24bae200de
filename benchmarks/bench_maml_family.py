"""MAML (second order), iMAML and MAML++: meta-training speed and peak memory as the number of inner steps grows.

Each learner is built by its own config (``compose("train", overrides=["learner=<name>", ...])``: learner/maml.yaml,
imaml.yaml, mamlpp.yaml, every setting as written there but ``inner_steps`` = ``eval_inner_steps`` = 1, 5 or 10) on
the config's Conv4 (64 filters, 1x28x28), and timed on ``meta_train_step`` (meta-gradient of the whole task batch
and the Adam update) over one fixed batch of synthetic Omniglot-shaped 5-way 1-shot tasks with one query per class
(the shape of Finn et al.'s Omniglot training; speed and memory do not depend on the pixels).

Every measurement runs in a fresh process (``throughput.measure``: two untimed warm-up steps, then steps until
``--seconds`` have passed) with glibc's allocator thresholds fixed (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``: see README, "Speed"). Peak memory is the kernel's peak resident set size during the
steps above the resident size before them (Linux ``VmHWM``, its mark reset first), so it counts every allocation
torch makes (autograd graphs included), plus whatever the allocator keeps. Each cell is measured ``--repeats`` times
(rounds over all cells, so a change of machine load hits every cell alike); tables give the median and the range.
Ratios are against MAML at the same number of inner steps, measured in the same run.

    PYTHONPATH=. python benchmarks/bench_maml_family.py [--quick] [--threads 1] [--out-dir benchmarks/results]

Writes ``<out-dir>/maml_family.md`` and ``.json``. ``--quick`` (inner steps 1 and 5, one repeat, 2 tasks per
batch, 0.5 s per measurement) checks that the script runs; its figures are too noisy to cite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
LEARNER_CONFIGS = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "learner"
LEARNERS = ("maml", "imaml", "mamlpp")
BASELINE = "maml"
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "134217728"}
FULL = {"steps": (1, 5, 10), "repeats": 3, "meta_batch": 4, "seconds": 2.0}
QUICK = {"steps": (1, 5), "repeats": 1, "meta_batch": 2, "seconds": 0.5}


# --------------------------------------------------------------------------- one measurement (child process)
def overrides(learner: str, steps: int) -> list[str]:
    return [f"learner={learner}", f"learner.inner_steps={steps}", f"learner.eval_inner_steps={steps}", "episode=5w1s"]


def run_child(spec: dict) -> dict:
    import peers
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from throughput import measure

    from fewshot.learners import OuterOptimizer

    torch.set_num_threads(spec["threads"])
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides(spec["learner"], spec["inner_steps"]))
    torch.manual_seed(0)
    learner = instantiate(cfg.learner, backbone=instantiate(cfg.backbone))
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    batch = peers.synthetic_tasks(spec["meta_batch"], 5, 1, 1, torch.device("cpu"))
    result = measure(lambda: learner.meta_train_step(batch)["loss"], torch.device("cpu"), spec["seconds"],
                     spec["meta_batch"])
    settings = {k: v for k, v in OmegaConf.to_container(cfg.learner, resolve=True).items() if k != "_target_"}
    return result | {"target": cfg.learner._target_, "settings": settings}


def spawn(spec: dict) -> dict:
    """One measurement in a fresh process with the allocator thresholds fixed; a failure becomes {"error": ...}."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False, env=os.environ | ALLOCATOR)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return spec | {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return spec | json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- the grid and its summary (parent)
def summarise(rows: list[dict], learners: list[str], steps: tuple[int, ...]) -> list[dict]:
    """One line per (learner, inner steps): median and range of tasks/s and peak MiB over the repeats, and the
    ratios of the medians to MAML's at the same inner steps."""
    lines = []
    for learner in learners:
        for k in steps:
            ok = [r for r in rows if r["learner"] == learner and r["inner_steps"] == k and "error" not in r]
            errors = [r["error"] for r in rows if r["learner"] == learner and r["inner_steps"] == k and "error" in r]
            line: dict = {"learner": learner, "inner_steps": k, "repeats": len(ok), "errors": errors}
            if ok:
                rates, peaks = [r["per_s"] for r in ok], [r["peak_mib"] for r in ok]
                line |= {"tasks_per_s": statistics.median(rates), "tasks_per_s_range": [min(rates), max(rates)],
                         "peak_mib": statistics.median(peaks), "peak_mib_range": [min(peaks), max(peaks)],
                         "first_loss": ok[0]["value"], "settings": ok[0]["settings"]}
            lines.append(line)
    for line in lines:
        base = next((b for b in lines if b["learner"] == BASELINE and b["inner_steps"] == line["inner_steps"]), None)
        if base and "tasks_per_s" in base and "tasks_per_s" in line:
            line["speed_vs_maml"] = line["tasks_per_s"] / base["tasks_per_s"]
            line["memory_vs_maml"] = line["peak_mib"] / base["peak_mib"]
    return lines


def _range(value: float, bounds: list[float], digits: int) -> str:
    return f"{value:.{digits}f} ({bounds[0]:.{digits}f}-{bounds[1]:.{digits}f})"


def markdown(meta: dict, lines: list[dict], skipped: dict[str, str]) -> str:
    out = ["# MAML, iMAML and MAML++: meta-training speed and peak memory against the number of inner steps", "",
           f"Command: `{meta['command']}`  ",
           f"torch {meta['torch']}, Python {meta['python']}, {meta['cpu_cores']} CPU cores, {meta['threads']} torch "
           f"thread(s) per process, {' '.join(f'{k}={v}' for k, v in ALLOCATOR.items())}. 1-minute load average at "
           f"start {meta['load_average_at_start']:.1f}, at end {meta['load_average_at_end']:.1f}.  ",
           f"Each cell: `meta_train_step` on {meta['meta_batch']} synthetic 5-way 1-shot tasks (1x28x28, one query "
           f"per class), Conv4; {meta['repeats']} measurement(s) per cell, each in a fresh process (2 warm-up steps, "
           f"then steps for {meta['seconds']:g} s): median (min-max). Peak memory: {meta['memory_kind']}. Ratios: "
           f"median over MAML's median at the same inner steps, this run."
           + (" **--quick: a smoke run, too noisy to cite.**" if meta["quick"] else ""), "",
           "| learner | inner steps | tasks/s | peak MiB | speed ÷ MAML | memory ÷ MAML |",
           "|---|---:|---:|---:|---:|---:|"]
    for line in lines:
        if "tasks_per_s" not in line:
            out.append(f"| {line['learner']} | {line['inner_steps']} | failed | - | - | - |")
            continue
        ratios = [f"{line[k]:.2f}x" if k in line else "-" for k in ("speed_vs_maml", "memory_vs_maml")]
        speed = _range(line["tasks_per_s"], line["tasks_per_s_range"], 2)
        memory = _range(line["peak_mib"], line["peak_mib_range"], 0)
        out.append(f"| {line['learner']} | {line['inner_steps']} | {speed} | {memory} | {ratios[0]} | {ratios[1]} |")
    out += ["", "Settings (each learner's YAML, inner steps as in the table):", ""]
    seen = {}
    for line in lines:
        if "settings" in line and line["learner"] not in seen:
            seen[line["learner"]] = {k: v for k, v in line["settings"].items()
                                     if k not in ("inner_steps", "eval_inner_steps", "n_way")}
    out += [f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in settings.items()) for name, settings in seen.items()]
    failures = [f"- {line['learner']}, {line['inner_steps']} inner step(s): `{e}`" for line in lines
                for e in line["errors"]]
    if failures or skipped:
        out += ["", "## Not measured", "", *failures, *(f"- {name}: {why}" for name, why in skipped.items())]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="inner steps 1 and 5, one repeat, 2 tasks, 0.5 s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measuring process")
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    grid = QUICK if args.quick else FULL
    skipped = {name: f"not run: {LEARNER_CONFIGS / (name + '.yaml')} does not exist yet"
               for name in args.learners if not (LEARNER_CONFIGS / f"{name}.yaml").is_file()}
    for why in skipped.values():
        print(why, flush=True)
    learners = [name for name in args.learners if name not in skipped]
    meta = {"command": "PYTHONPATH=. python benchmarks/bench_maml_family.py " + " ".join(sys.argv[1:]),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
            "threads": args.threads, "allocator": ALLOCATOR, "load_average_at_start": os.getloadavg()[0],
            "memory_kind": "peak RSS during the steps above the RSS before them", "quick": args.quick, **grid}
    rows = []
    for repeat in range(grid["repeats"]):
        for learner in learners:
            for k in grid["steps"]:
                spec = {"learner": learner, "inner_steps": k, "repeat": repeat, "threads": args.threads,
                        "meta_batch": grid["meta_batch"], "seconds": grid["seconds"]}
                rows.append(spawn(spec))
                print(json.dumps({key: rows[-1].get(key) for key in (
                    "learner", "inner_steps", "repeat", "per_s", "peak_mib", "error")}), flush=True)
    meta["load_average_at_end"] = os.getloadavg()[0]
    lines = summarise(rows, learners, grid["steps"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "maml_family.json", json.dumps(
        {"meta": meta, "summary": lines, "skipped": skipped, "rows": rows}, indent=2) + "\n")
    atomic_write_text(args.out_dir / "maml_family.md", markdown(meta, lines, skipped))
    print(f"wrote {args.out_dir / 'maml_family.md'} and .json")


if __name__ == "__main__":
    main()
