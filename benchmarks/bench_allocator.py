"""The apps' glibc allocator setting, measured on short real training runs: setting on vs off, in pairs.

``app``: each run is a whole ``python -m fewshot train`` process in a fresh run folder, for each case of
``--cases``: ``protonet``, the README main job shortened (``experiment=omniglot_quick``: ProtoNet on 60-way
Omniglot episodes, 150 of its 800 steps, 200 test episodes in each of its 4 settings) and ``maml`` (30 meta-training
steps of second-order MAML on Omniglot 5-way 1-shot with meta-batch 32, a 20-episode test); with the apps' setting
(:mod:`fewshot.allocator`: glibc's mmap off, trim threshold 1 GiB) and with ``FEWSHOT_NO_MALLOPT=1`` (glibc's
defaults), alternating on/off so that a drift of the machine's speed falls on both; one untimed warm-up pair first.
Wall seconds from a monotonic clock around each process, CPU seconds (user + system), peak resident memory and
minor page faults from the kernel's accounting of the finished child (``os.wait4``); the ratio on/off is taken pair
by pair, and the median, minimum and maximum are reported.

``loop``: the same meta-gradient (second order, meta-batch 32, 1 inner step, Omniglot-shaped synthetic tasks) alone
in a fresh process, 2 untimed then 10 timed steps, with :func:`fewshot.allocator.tune_allocator` called first or
not; once as a bare loop (the setting of ``throughput.py``) and once after loading the Omniglot classes as the app
does (the loading's large freed blocks raise glibc's dynamic thresholds before training starts).

    PYTHONPATH=. python benchmarks/bench_allocator.py [--cases protonet,maml] [--pairs 4] [--loop-pairs 3]

Writes benchmarks/results/allocator.md and .json (the load average says how busy the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text
from fewshot.allocator import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


#: case -> the overrides of its ``python -m fewshot train`` run
CASES = {
    "protonet": ["experiment=omniglot_quick", "trainer.steps=150", "evaluation.episodes=200"],
    "maml": ["experiment=maml_omniglot_5w1s", "trainer.steps=30", "trainer.val_every=0", "evaluation.settings=[[5,1]]",
             "evaluation.episodes=20"],
}
#: glibc's own settings, removed from the children's environment (the apps leave the allocator alone under any)
GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def train_command(case: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fewshot", "train", *CASES[case], "progress=false", f"hydra.run.dir={run_dir}"]


def run_once(setting: bool, case: str) -> dict:
    """One whole training process in a fresh folder (removed afterwards): wall and CPU seconds, peak RSS."""
    env = {k: v for k, v in os.environ.items() if k not in (*GLIBC_VARIABLES, "FEWSHOT_NO_MALLOPT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if not setting:
        env["FEWSHOT_NO_MALLOPT"] = "1"
    folder = Path(tempfile.mkdtemp(prefix="bench_allocator_"))
    try:
        start = time.monotonic()
        proc = subprocess.Popen(train_command(case, folder / "run"), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"training run failed (exit {proc.returncode}): {stderr.strip()[-2000:]}")
        ok = (folder / "run" / "results.json").is_file()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not ok:
        raise RuntimeError("training run wrote no results.json")
    return {"case": case, "setting": "on" if setting else "off", "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024, "minor_faults": usage.ru_minflt}


def child_loop(setting: bool, load: bool) -> dict:
    """In this (fresh) process: median seconds per meta-gradient step of the loop described above."""
    if setting:
        from fewshot.allocator import tune_allocator

        tune_allocator()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers

    if load:
        from episodes.datasets import load_omniglot

        data = load_omniglot(split="trainval"), load_omniglot(split="test")
        del data
    device = torch.device("cpu")
    step = peers.maml_step("fewshot", peers.conv4_with_head(5, device), inner_lr=0.4, inner_steps=1,
                           first_order=False)
    batch = peers.synthetic_tasks(32, 5, 1, 1, device)
    times = []
    for i in range(12):
        start = time.perf_counter()
        step(batch)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return {"s_per_step": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def run_loop(setting: bool, load: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_VARIABLES}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([setting, load])], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"setting": "on" if setting else "off",
                                                              "after_loading": load}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(result: dict) -> str:
    s, meta = result["summary"], result["meta"]
    rows = [("wall seconds", "wall_s", "{:.1f}"), ("CPU seconds (user + system)", "cpu_s", "{:.1f}"),
            ("system seconds", "sys_s", "{:.2f}"), ("minor page faults", "minor_faults", "{:,.0f}"),
            ("peak RSS, MiB", "peak_rss_mib", "{:,.0f}")]
    out = ["# glibc allocator setting of the apps: on vs off", "",
           f"Command: `{meta['command']}`  ",
           f"Setting on: the apps' own (`fewshot/allocator.py`: {meta['setting']}); off: `FEWSHOT_NO_MALLOPT=1` "
           "in front (glibc's defaults).  ",
           f"torch {meta['torch']}, Python {meta['python']}, {meta['glibc']}, {meta['cpu_cores']} CPU cores, "
           f"OMP_NUM_THREADS={meta['omp_num_threads']}; {meta['pairs']} pairs per case after one warm-up pair, "
           f"alternating on and off. 1-minute load average {meta['load_average_at_start']:.1f} at start and "
           f"{meta['load_average_at_end']:.1f} at end: {meta['load_note']}"]
    for case, run in meta["runs"].items():
        out += ["", f"## `{case}`: `{run}`", "",
                "| figure (median, min-max) | setting on | setting off | on ÷ off, pair by pair |",
                "|---|---:|---:|---:|"]
        for label, key, fmt in rows:
            on, off, ratio = s[case][key]["on"], s[case][key]["off"], s[case][key]["ratio"]
            out.append(f"| {label} | {fmt.format(on['median'])} ({fmt.format(on['min'])}-{fmt.format(on['max'])}) | "
                       f"{fmt.format(off['median'])} ({fmt.format(off['min'])}-{fmt.format(off['max'])}) | "
                       f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f}) |")
        out += ["", result["verdict"][case]]
    out += ["", "## The meta-gradient loop alone", "",
            "The meta-gradient loop alone (second order, meta-batch 32, 1 inner step; fresh process per run, median "
            "of 10 steps after 2; seconds per step, median and min-max over runs):", "",
            "| loop | setting on | setting off | on ÷ off, pair by pair |", "|---|---:|---:|---:|"]
    for name, label in (("bare", "bare loop (as throughput.py)"), ("after_loading", "after loading Omniglot, as "
                                                                                     "the app does")):
        r = result["loop_summary"][name]
        out.append(" | ".join([f"| {label}", *(f"{r[k]['median']:.3f} ({r[k]['min']:.3f}-{r[k]['max']:.3f})"
                                                for k in ("on", "off", "ratio"))]) + " |")
    out += ["", "Why the cases differ: glibc's default mmap threshold is dynamic (each freed mapped block raises "
            "it, to at most 32 MiB, and the trim threshold with it to twice that). MAML's intermediates are small, "
            "and loading the dataset frees large blocks before training starts, which moves the defaults towards "
            "the setting; a bare loop keeps mapping, trimming and page-faulting its intermediates on every step. "
            "ProtoNet's 60-way episodes make blocks above the 32 MiB cap, which glibc maps afresh on every "
            "allocation unless mmap is off. Compare the minor page faults and system seconds with the CPU seconds.",
            ""]
    return "\n".join(out)


def verdict(summary: dict) -> str:
    wall, cpu = summary["wall_s"]["ratio"], summary["cpu_s"]["ratio"]
    lines = []
    for name, r in (("wall", wall), ("CPU", cpu)):
        if r["max"] < 1:
            lines.append(f"{name} time: faster with the setting in every pair (median {1 / r['median']:.2f}x).")
        elif r["min"] > 1:
            lines.append(f"{name} time: slower with the setting in every pair (median {1 / r['median']:.2f}x).")
        else:
            lines.append(f"{name} time: pairs on both sides of parity (median on/off {r['median']:.3f}, range "
                         f"{r['min']:.3f}-{r['max']:.3f}): no difference larger than the run-to-run spread.")
    return " ".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated app runs, of {', '.join(CASES)}")
    parser.add_argument("--pairs", type=int, default=4, help="timed on/off pairs of each app case")
    parser.add_argument("--loop-pairs", type=int, default=3, help="on/off pairs of each loop variant")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_loop(*json.loads(args.child))), flush=True)
        return
    if not (platform.system() == "Linux" and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")):
        parser.error("the setting is glibc's: run this on Linux with glibc")
    if args.pairs < 1 or args.loop_pairs < 1:
        parser.error("--pairs and --loop-pairs must be at least 1")
    cases = [c for c in args.cases.split(",") if c]
    if not cases or set(cases) - set(CASES):
        parser.error(f"--cases must name some of {', '.join(CASES)}, got {args.cases!r}")
    load_start = os.getloadavg()[0]
    runs = []
    for case in cases:
        for pair in range(args.pairs + 1):
            for setting in (True, False):
                row = run_once(setting, case) | {"pair": pair, "warmup": pair == 0}
                print(json.dumps(row), flush=True)
                runs.append(row)
    loops = []
    for load in (False, True):
        for pair in range(args.loop_pairs):
            for setting in (True, False):
                loops.append(run_loop(setting, load) | {"pair": pair})
                print(json.dumps(loops[-1]), flush=True)
    load_end = os.getloadavg()[0]
    summary = {}
    for case in cases:
        counted = [r for r in runs if not r["warmup"] and r["case"] == case]
        on = [r for r in counted if r["setting"] == "on"]
        off = [r for r in counted if r["setting"] == "off"]
        summary[case] = {key: {"on": spread([r[key] for r in on]), "off": spread([r[key] for r in off]),
                               "ratio": spread([a[key] / b[key] for a, b in zip(on, off, strict=True)])}
                         for key in ("wall_s", "cpu_s", "sys_s", "minor_faults", "peak_rss_mib")}
    loop_summary = {}
    for load in (False, True):
        rows = [r for r in loops if r["after_loading"] == load]
        a, b = ([r["s_per_step"] for r in rows if r["setting"] == x] for x in ("on", "off"))
        loop_summary["after_loading" if load else "bare"] = {
            "on": spread(a), "off": spread(b), "ratio": spread([x / y for x, y in zip(a, b, strict=True)])}
    cores = os.cpu_count() or 1
    busy = max(load_start, load_end) > 0.5 * cores
    meta = {"command": "PYTHONPATH=. python benchmarks/bench_allocator.py " + " ".join(sys.argv[1:]),
            "runs": {case: "python -m fewshot " + " ".join(train_command(case, Path("<fresh folder>"))[3:])
                     for case in cases},
            "setting": ", ".join(f"{name} {value}" for name, (_, value) in SETTINGS.items()),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": cores,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"), "pairs": args.pairs,
            "loop_pairs": args.loop_pairs, "glibc": os.confstr("CS_GNU_LIBC_VERSION"),
            "load_average_at_start": load_start, "load_average_at_end": load_end,
            "load_note": ("the machine was busy with other work (load above half its cores), so absolute times are "
                          "inflated and noisy; the pair-by-pair ratio is the figure to read." if busy else
                          "the machine was quiet.")}
    result = {"meta": meta, "summary": summary, "loop_summary": loop_summary,
              "verdict": {case: verdict(summary[case]) for case in cases},
              "runs": runs, "loops": loops}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "allocator.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out_dir / "allocator.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
