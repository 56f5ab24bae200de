"""Throughput of fewshot against the tools people use today, side by side, as ratios measured in one run.

Sections (``--sections``, all by default):

- ``sampling``: Omniglot 5-way 1-shot 15-query episodes per second: ``EpisodeSampler.batch`` (32 ids per
  call) against a plain Python sampler and learn2learn's ``Taskset``.
- ``maml``: MAML meta-gradients (inner loop on every task, query loss, outer backward), meta-batch
  8/32/128 x 1 and 5 inner steps x second and first order, on Omniglot-shaped 5-way 1-shot tasks with
  one query per class (the shape of Finn et al.'s Omniglot training); fewshot against a plain
  ``torch.autograd.grad`` loop, higher, torchopt and learn2learn. Tasks per second and peak memory.
- ``protonet``: ProtoNet Adam steps on 60-way 1-shot 5-query episodes (Snell et al.'s Omniglot
  training): fewshot's ``meta_train_step`` against a plain loop.
- ``eval``: 600 fixed Omniglot test episodes (5-way 1-shot, 15 queries per class) per learner
  (ProtoNet, MAML with 3 inner steps, a linear head on frozen features): fewshot's harness against the
  per-episode loop a user writes (plus higher and learn2learn for MAML). Random Conv4 weights: speed does
  not depend on them; the mean accuracies show every implementation scored the same episodes the same way.

Every measurement runs in its own subprocess: two untimed warm-up calls (the first one's value is compared
across implementations), then calls until ``--seconds`` have passed (at least one). Peak memory is the peak resident
set size during the calls above the resident size before them on CPU (Linux: the peak mark is reset first), and
``torch.cuda.max_memory_allocated`` on CUDA. Achieved FLOP/s use the
plain loop's FLOPs per call (counted with ``torch.utils.flop_counter`` in a separate process: one step under
FlopCounterMode was seen to speed up later steps of the same process by 20% on CPU), against the float32 matmul
rate measured at the start of the run.

Allocator (``--allocator``): ``apps`` (the default) runs every process, each implementation's alike, with the glibc
settings the command-line apps apply to themselves (:func:`fewshot.allocator.tune_allocator`); ``glibc`` leaves
glibc's defaults, under which a fresh process's dynamic mmap threshold settles differently from run to run and every
implementation runs slower (compare ``throughput_cpu.md`` with ``throughput_cpu_glibc.md``).

    PYTHONPATH=. python benchmarks/throughput.py --threads 2 --learn2learn-src <built tree> [--device cuda]

Writes benchmarks/results/throughput_<device>.md, .json and .png (the plot needs matplotlib);
``throughput_<device>_glibc.*`` with ``--allocator glibc``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers

from episodes.files import atomic_write, atomic_write_text
from episodes.sampler import EpisodeSampler
from fewshot.allocator import tune_allocator

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("sampling", "maml", "protonet", "eval")
MAML_GRID = [(order, meta_batch, steps) for order in ("second", "first") for meta_batch in (8, 32, 128)
             for steps in (1, 5)]
EVAL = {"episodes": 600, "n_way": 5, "n_shot": 1, "n_query": 15, "inner_lr": 0.4, "inner_steps": 3,
        "finetune_steps": 100, "finetune_lr": 0.01}


# --------------------------------------------------------------------------- measuring (child processes)
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(call: Callable[[], float], device: torch.device, seconds: float, units: int,
            warmup: Callable[[], float] | None = None) -> dict:
    """Two untimed calls, then calls until ``seconds`` have passed.

    ``units``: tasks or episodes per call. ``warmup``: a cheaper call to warm up with instead of ``call``.
    Returns the value of the first ``call``, units per second, seconds per call and peak memory in MiB.
    """
    rss_before = reset_peak_rss()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
    value = (warmup or call)()
    (warmup or call)()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        result = call()
        if calls == 0 and warmup is not None:  # the warm-ups ran a shorter call: report the full one's value
            value = result
        calls += 1
        sync(device)
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else (peak_rss_kib() - rss_before) / 1024)
    return {"value": value, "per_s": units * calls / elapsed, "s_per_call": elapsed / calls, "calls": calls,
            "peak_mib": peak}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5) and return the current RSS in KiB,
    so the peak measured next is the calls' own; where that is unavailable, return the peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def count_flops(call: Callable[[], float]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def child_maml(spec: dict, device: torch.device) -> dict:
    net = peers.conv4_with_head(5, device)
    batch = peers.synthetic_tasks(spec["meta_batch"], 5, 1, 1, device)
    step = peers.maml_step(spec["impl"], net, inner_lr=0.4, inner_steps=spec["inner_steps"],
                           first_order=spec["order"] == "first", learn2learn_src=spec.get("learn2learn_src"))
    if spec.get("count_flops"):
        return {"flops_per_call": count_flops(lambda: step(batch))}
    small = peers.synthetic_tasks(min(8, spec["meta_batch"]), 5, 1, 1, device)  # warm up on at most 8 tasks
    return measure(lambda: step(batch), device, spec["seconds"], spec["meta_batch"], warmup=lambda: step(small))


def child_protonet(spec: dict, device: torch.device) -> dict:
    batch = peers.synthetic_tasks(1, 60, 1, 5, device)
    step = peers.protonet_step(spec["impl"], device)
    return measure(lambda: step(batch), device, spec["seconds"], 1)


def child_eval(spec: dict, device: torch.device) -> dict:
    """All 600 episodes per call (warm-up: the first 50); the value is the mean accuracy."""
    from episodes.datasets import load_omniglot
    from fewshot.evaluation import evaluate
    from fewshot.learners import MAML, FineTune, ProtoNet

    e = EVAL
    dataset = load_omniglot(split="test").to(device)
    net = peers.conv4_with_head(e["n_way"], device)
    kind, impl = spec["learner"], spec["impl"]
    if kind != "maml":
        net.eval()
    if impl == "fewshot":
        learner = {"protonet": lambda: ProtoNet(net[0]),
                   "maml": lambda: MAML(net[0], n_way=e["n_way"], inner_lr=e["inner_lr"],
                                        eval_inner_steps=e["inner_steps"]),
                   "finetune": lambda: FineTune(net[0], steps=e["finetune_steps"], lr=e["finetune_lr"])}[kind]()
        if kind == "maml":
            learner.head = net[1]

        def run(episodes: int) -> float:
            return evaluate({kind: learner}, dataset, n_way=e["n_way"], n_shot=e["n_shot"], n_query=e["n_query"],
                            episodes=episodes, seed=0, batch_size=50, device=device, progress=False,
                            permutations=0)[kind].mean
    else:
        sampler = EpisodeSampler(dataset, n_way=e["n_way"], n_shot=e["n_shot"], n_query=e["n_query"], seed=0,
                                 num_episodes=e["episodes"])
        score = peers.episode_scorer(kind, impl, net, inner_lr=e["inner_lr"], inner_steps=e["inner_steps"],
                                     finetune_steps=e["finetune_steps"], finetune_lr=e["finetune_lr"],
                                     learn2learn_src=spec.get("learn2learn_src"))

        def run(episodes: int) -> float:
            return sum(score(sampler.batch(torch.tensor([i], device=device))) for i in range(episodes)) / episodes
    return measure(lambda: run(e["episodes"]), device, spec["seconds"], e["episodes"], warmup=lambda: run(50))


def run_child(spec: dict) -> dict:
    allocator = tune_allocator() if spec["allocator"] == "apps" else {}
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    child = {"maml": child_maml, "protonet": child_protonet, "eval": child_eval}[spec["section"]]
    return child(spec, device) | {"allocator_set": allocator}


def spawn(spec: dict) -> dict:
    """Run one measurement in a fresh process; a failure becomes {"error": last line of stderr}."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return spec | {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return spec | json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- sections (parent process)
def matmul_peak(device: torch.device, seconds: float = 2.0) -> float:
    """Measured float32 matmul FLOP/s (square matrices) with this process's threads."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    sync(device)
    return 2 * n**3 * calls / (time.perf_counter() - start)


def section_sampling(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """In-process episodes per second on the Vinyals train split (no model, so no memory column)."""
    import bench_sampling

    from episodes.datasets import load_omniglot

    dataset = load_omniglot(split="train").to(device)
    sampler = EpisodeSampler(dataset, n_way=5, n_shot=1, n_query=15, seed=0, num_episodes=10**9)
    starts = iter(range(0, 10**9, 32))

    def fewshot() -> int:  # 32 new episode ids per call
        start = next(starts)
        return sampler.batch(torch.arange(start, start + 32, device=device)).n_tasks

    cases: dict[str, Callable[[], int]] = {"fewshot": fewshot}
    r = random.Random(0)
    cpu_data = dataset.to("cpu")
    cases["plain-loop"] = lambda: bench_sampling.python_loop_episode(cpu_data, 5, 1, 15, r).classes.shape[0] // 5
    if args.learn2learn_src is not None:
        cases["learn2learn"] = bench_sampling.learn2learn_taskset(args.learn2learn_src, cpu_data, 5, 16)
    rows = []
    for impl, call in cases.items():
        rate = bench_sampling.rate(call, args.seconds)
        rows.append({"section": "sampling", "impl": impl, "per_s": rate["wall"], "per_cpu_s": rate["cpu"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.learn2learn_src is None:
        rows.append({"section": "sampling", "impl": "learn2learn", "error": "not run: no --learn2learn-src"})
    return rows


def run_spec(spec: dict) -> dict:
    """:func:`spawn` ``spec``, or a "not run" row for learn2learn without ``--learn2learn-src``; printed as it comes."""
    if spec["impl"] == "learn2learn" and spec["learn2learn_src"] is None:
        row = spec | {"error": "not run: no --learn2learn-src"}
    else:
        row = spawn(spec)
    print(json.dumps(row), flush=True)
    return row


def rounds(cell: dict, impls: tuple[str, ...]) -> list[dict]:
    """``cell["repeats"]`` rounds of every implementation, back to back so that drift in the machine's speed
    hits them alike; each round starts one implementation later (round r runs ``impls[r:] + impls[:r]``)."""
    rows = []
    for r in range(cell["repeats"]):
        rotated = impls[r % len(impls):] + impls[:r % len(impls)]
        rows += [run_spec(cell | {"impl": impl, "round": r}) for impl in rotated]
    return rows


def section_maml(base: dict) -> list[dict]:
    rows = []
    for order, meta_batch, steps in MAML_GRID:
        cell = base | {"section": "maml", "order": order, "meta_batch": meta_batch, "inner_steps": steps}
        flops = spawn(cell | {"impl": "plain-loop", "count_flops": True}).get("flops_per_call")
        rows += rounds(cell | {"flops_per_call": flops}, peers.MAML_IMPLS)
    return rows


def section_protonet(base: dict) -> list[dict]:
    return rounds(base | {"section": "protonet"}, peers.PROTONET_IMPLS)


def section_eval(base: dict) -> list[dict]:
    return [row for learner, impls in peers.EVAL_IMPLS.items()
            for row in rounds(base | {"section": "eval", "learner": learner}, impls)]


# --------------------------------------------------------------------------- report
def _config(row: dict) -> str:
    if row["section"] == "maml":
        return f"{row['order']} order, meta-batch {row['meta_batch']}, {row['inner_steps']} inner step(s)"
    if row["section"] == "eval":
        return row["learner"]
    return {"sampling": "Omniglot 5-way 1-shot 15-query (fewshot: 32 episodes per call)",
            "protonet": "60-way 1-shot 5-query, Conv4"}[row["section"]]


def merge_rounds(runs: list[dict]) -> dict:
    """One implementation's rounds in one cell as one row: the median rate and seconds per call, the largest peak
    memory, the first round's value, and ``spread``, the rates' range over their median (0 for one round)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    rates = sorted(r["per_s"] for r in ok)
    median = statistics.median(rates)
    row = ok[0] | {"per_s": median, "rates": [r["per_s"] for r in ok], "spread": (rates[-1] - rates[0]) / median}
    if all("s_per_call" in r for r in ok):  # timed subprocess calls (not the in-process sampling rows)
        row["s_per_call"] = statistics.median(r["s_per_call"] for r in ok)
    if all("peak_mib" in r for r in ok):
        row["peak_mib"] = max(r["peak_mib"] for r in ok)
    return row


def verdict(ratio: float, spread: float) -> str:
    """"faster" or "slower" where fewshot's ratio to a peer is off 1 by more than ``spread`` (the larger of the two
    implementations' run-to-run ranges), else "parity"."""
    if ratio > 1 + spread:
        return "faster"
    return "slower" if ratio < 1 - spread else "parity"


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (section, configuration): each implementation's median rate over its rounds, and fewshot's
    ratio to the best peer and to the plain loop (above 1: fewshot is faster) with a verdict against the
    rounds' spread. Checks the warm-up values agree."""
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for row in rows:
        grouped.setdefault((row["section"], _config(row)), {}).setdefault(row["impl"], []).append(row)
    lines = []
    for (section, config), by_impl in grouped.items():
        line = {"section": section, "config": config, "impls": {k: merge_rounds(v) for k, v in by_impl.items()}}
        ok = {k: r for k, r in line["impls"].items() if "error" not in r}
        ours = ok.get("fewshot")
        others = {k: r["per_s"] for k, r in ok.items() if k != "fewshot"}
        if ours is not None and others:
            best = max(others, key=others.get)
            line["best_peer"] = best
            for key, peer in (("vs_best_peer", best), ("vs_plain_loop", "plain-loop")):
                if peer in others:
                    line[key] = ours["per_s"] / others[peer]
                    line[key + "_verdict"] = verdict(line[key], max(ours["spread"], ok[peer]["spread"]))
        values = [r["value"] for r in ok.values() if r.get("value") is not None]
        if len(values) > 1 and section != "sampling":
            scale = max(abs(v) for v in values) or 1.0
            line["value_spread"] = (max(values) - min(values)) / scale
        lines.append(line)
    return lines


UNITS = {"sampling": "episodes/s", "maml": "tasks/s", "protonet": "steps/s", "eval": "episodes/s"}
TITLES = {"sampling": "Episode sampling", "maml": "MAML meta-training (meta-gradients)",
          "protonet": "ProtoNet training steps", "eval": "Evaluation of 600 test episodes per learner"}


def _cell(row: dict | None, section: str) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "not run" if row["error"].startswith("not run") else "failed"
    digits = 2 if row["per_s"] < 10 else 1 if row["per_s"] < 100 else 0
    text = f"{row['per_s']:,.{digits}f}"
    if len(row.get("rates", ())) > 1:
        text += f" ±{50 * row['spread']:.0f}%"
    if section != "sampling":
        text += f" ({row['peak_mib']:,.0f} MiB)"
    return text


def markdown(meta: dict, lines: list[dict], rows: list[dict]) -> str:
    out = [f"# Throughput on {meta['device_name']}: fewshot against the tools people use", "",
           f"Command: `{meta['command']}`  ",
           f"torch {meta['torch']}, Python {meta['python']}, {meta['cpu_cores']} CPU cores, {meta['threads']} torch "
           f"thread(s) per process; float32 matmul peak measured at the start: "
           f"{meta['matmul_peak_flops'] / 1e9:,.1f} GFLOP/s. 1-minute load average at start "
           f"{meta['load_average_at_start']:.1f}, at end {meta['load_average_at_end']:.1f}.  ",
           f"Each cell: the median rate over {meta['repeats']} round(s), ± half the range of the rounds as a "
           f"percentage of the median (peak memory: {meta['memory_kind']}). Each round measures every "
           "implementation of a cell back to back, each in a fresh process. Ratios are fewshot's median over the "
           "peer's (above 1: fewshot is faster), called parity where they are within the larger of the two "
           "rounds' ranges.  ", allocator_line(meta, rows), ""]
    for section in SECTIONS:
        sec = [line for line in lines if line["section"] == section]
        if not sec:
            continue
        impls = list(dict.fromkeys(k for line in sec for k in line["impls"]))
        out += [f"## {TITLES[section]} ({UNITS[section]})", "",
                "| configuration | " + " | ".join(impls) + " | fewshot ÷ best peer | fewshot ÷ plain loop |",
                "|---|" + "---:|" * (len(impls) + 2)]
        for line in sec:
            ratios = [f"{line[k]:.2f}x {line[k + '_verdict']}" if k in line else "-"
                      for k in ("vs_best_peer", "vs_plain_loop")]
            if "best_peer" in line:
                ratios[0] += f" ({line['best_peer']})"
            out.append(f"| {line['config']} | " + " | ".join(_cell(line["impls"].get(k), section) for k in impls)
                       + " | " + " | ".join(ratios) + " |")
        out.append("")
        if section == "maml":
            out += _flops_table(sec, meta)
        if section == "eval":
            accuracies = "; ".join(f"{line['config']}: " + ", ".join(
                f"{k} {100 * r['value']:.2f}%" for k, r in line["impls"].items() if "error" not in r) for line in sec)
            out += ["Mean accuracy over the 600 episodes (random weights; equal values mean the same episodes were "
                    f"scored the same way): {accuracies}.", ""]
        spreads = [line for line in sec if line.get("value_spread", 0) > 1e-4]
        if section in ("maml", "protonet"):
            out += ["Warm-up values (first meta-loss) agree across implementations to "
                    f"{max((line.get('value_spread', 0) for line in sec), default=0):.1e} relative"
                    + (f"; differing: {', '.join(line['config'] for line in spreads)}" if spreads else "") + ".", ""]
    errors = [r for r in rows if "error" in r and not r["error"].startswith("not run")]
    skipped = sorted({r["impl"] + ": " + r["error"] for r in rows if "error" in r and r["error"].startswith("not run")})
    if errors or skipped:
        out += ["## Not measured", ""]
        out += [f"- {r['section']} {_config(r)} {r['impl']}: failed: `{r['error']}`" for r in errors]
        out += [f"- {s}" for s in skipped]
        out.append("")
    out += ["## learn2learn", "", meta["learn2learn"], ""]
    return "\n".join(out)


def allocator_line(meta: dict, rows: list[dict]) -> str:
    """What glibc allocator settings the processes ran with (and whether every child applied the same)."""
    if meta["allocator"] == "glibc":
        return "Allocator: glibc's defaults in every process (`--allocator glibc`)."
    children = {json.dumps(r["allocator_set"], sort_keys=True) for r in rows if "allocator_set" in r}
    same = children <= {json.dumps(meta["allocator_set"], sort_keys=True)}
    applied = ", ".join(f"{name} {value}" for name, value in meta["allocator_set"].items())
    return ("Allocator: every process, each implementation's alike, with the command-line apps' glibc settings "
            f"(`fewshot.allocator.tune_allocator`), applied: {applied or 'nothing (set by the user or not glibc)'}"
            + ("" if same else f"; children differed: {sorted(children)}") + ".")


def _flops_table(sec: list[dict], meta: dict) -> list[str]:
    out = ["Achieved throughput, counting the plain loop's FLOPs per meta-gradient (the same model and tasks) "
           "against the matmul peak above:", "",
           "| configuration | GFLOP per meta-gradient | fewshot GFLOP/s | % of peak | best peer GFLOP/s |",
           "|---|---:|---:|---:|---:|"]
    for line in sec:
        ours = line["impls"].get("fewshot", {})
        flops = ours.get("flops_per_call")
        if not flops or "error" in ours:
            continue
        achieved = flops / ours["s_per_call"]
        best = line["impls"].get(line.get("best_peer", ""), {})
        best_rate = f"{flops / best['s_per_call'] / 1e9:,.1f}" if "s_per_call" in best else "-"
        out.append(f"| {line['config']} | {flops / 1e9:,.2f} | {achieved / 1e9:,.1f} | "
                   f"{100 * achieved / meta['matmul_peak_flops']:.1f} | {best_rate} |")
    return [*out, ""]


def plot(lines: list[dict], path: Path, title: str) -> bool:
    """Bars of fewshot's ratio to the best peer and to the plain loop, one panel per section."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sections = [s for s in SECTIONS if any(line["section"] == s and "vs_best_peer" in line for line in lines)]
    heights = [sum(line["section"] == s for line in lines) for s in sections]
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, 1.2 + 0.45 * sum(heights) + 0.6 * len(sections)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    ratios = [line[k] for line in lines for k in ("vs_best_peer", "vs_plain_loop") if k in line]
    low, high = min(0.5, *ratios) / 1.3, max(2.0, *ratios) * 1.3
    ticks = [2.0**k for k in range(-6, 12) if low <= 2.0**k <= high]
    for ax, section in zip(axes[:, 0], sections, strict=True):
        sec = [line for line in lines if line["section"] == section and "vs_best_peer" in line]
        for offset, key, label in ((0.2, "vs_best_peer", "÷ best peer"), (-0.2, "vs_plain_loop", "÷ plain loop")):
            values = [line.get(key, 1.0) for line in sec]  # bars grow from 1 (parity) to the ratio
            ax.barh([i + offset for i in range(len(sec))], [v - 1.0 for v in values], left=1.0, height=0.4,
                    label=label)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_yticks(range(len(sec)), [line["config"] for line in sec], fontsize=8)
        ax.set_title(f"{TITLES[section]}: fewshot speed ratio (right of 1x: fewshot faster)", fontsize=9)
        ax.invert_yaxis()
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement (at least 1 call)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of " + ", ".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every measurement, for the spread")
    parser.add_argument("--learn2learn-src", type=Path, default=None,
                        help="a learn2learn 0.2.0 source tree built in place (see peers.LEARN2LEARN_BUILD)")
    parser.add_argument("--allocator", default="apps", choices=("apps", "glibc"),
                        help="apps: every process with the apps' glibc settings (fewshot.allocator); glibc: defaults")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    allocator = tune_allocator() if args.allocator == "apps" else {}  # before anything is allocated
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = {"allocator": args.allocator, "allocator_set": allocator,
            "command": "PYTHONPATH=. python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
            "threads": args.threads, "device": args.device, "repeats": args.repeats,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()})",
            "memory_kind": "torch.cuda.max_memory_allocated" if args.device == "cuda" else
            "peak RSS during the calls above the RSS before them",
            "load_average_at_start": os.getloadavg()[0], "matmul_peak_flops": matmul_peak(device),
            "eval": EVAL, "learn2learn": peers.LEARN2LEARN_BUILD}
    base = {"allocator": args.allocator, "device": args.device, "threads": args.threads,
            "seconds": args.seconds, "repeats": args.repeats,
            "learn2learn_src": str(args.learn2learn_src) if args.learn2learn_src else None}
    rows: list[dict] = []
    for section in sections:
        if section == "sampling":
            rows += section_sampling(args, device)
        else:
            rows += {"maml": section_maml, "protonet": section_protonet, "eval": section_eval}[section](base)
    meta["load_average_at_end"] = os.getloadavg()[0]
    lines = summarise(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"throughput_{args.device}{'_glibc' if args.allocator == 'glibc' else ''}"
    atomic_write_text(stem.with_suffix(".json"),
                      json.dumps({"meta": meta, "summary": lines, "rows": rows}, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown(meta, lines, rows) + (
        f"\n![fewshot speed ratios]({stem.name}.png)\n" if plot(lines, stem.with_suffix(".png"),
                                                                 meta["device_name"]) else ""))
    print(f"wrote {stem}.md, .json and .png")


if __name__ == "__main__":
    main()
