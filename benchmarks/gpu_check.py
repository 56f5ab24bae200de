"""The one prepared GPU check (issue 20): correctness of the CUDA paths, throughput against peers, time to accuracy.

    PYTHONPATH=. python benchmarks/gpu_check.py --device cuda --out "$OUT" --deadline 330
    PYTHONPATH=. python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/gpu_check   # the rehearsal, < 60 s

Sections, in this order (``--sections`` picks some; each is written to ``<out>/gpu_check.{json,md}`` as soon as it
ends, so a run cut short keeps what it finished; a section that raises is recorded and the next one runs):

- ``env``: torch, CUDA, the device, TF32 flags, which peers import; float32 (TF32 off), TF32 and bf16 matmul peaks.
- ``correctness`` (each check has a value, a threshold and ``passed``): the sampler gives the same episodes on the
  device as on the CPU (indices, then pixels, exactly); batched (vmap) and sequential MAML meta-gradients agree in
  float64 on the device to 1e-8 relative (second and first order); float32 meta-gradients on the device (TF32 off)
  agree with a float64 CPU reference to float32 rounding (the CPU's own float32 error is reported beside it); the
  batched fine-tune fits (frozen features; backbone fine-tuning under vmap) equal fitting one episode at a time.
- ``syncs`` (CUDA only): every host-device wait of one meta-training step (sampling included), by source line,
  under ``torch.cuda.set_sync_debug_mode("warn")``.
- ``finetune``: fine-tune evaluation of 600 Omniglot test episodes (5-way 1-shot, 15 queries, 100 SGD steps on a
  linear head over a frozen random Conv4) through the harness in one batch, against the harness one episode at a
  time and a plain per-episode loop (both on the first ``--single-episodes`` episodes); peak GPU memory.
- ``time_to_accuracy``: second-order MAML (Finn et al. 2017's Omniglot 5-way 1-shot recipe: Conv4, meta-batch 32,
  1 inner step of 0.4, Adam 1e-3, trained on the embedded Vinyals train+val characters) for ``--tta-seconds`` of
  wall-clock time, then 1000 fixed test episodes (3 inner steps); meta-batches done and the projected time of the
  paper's 60,000.
- ``maml``: meta-gradient throughput, second and first order, meta-batch 32 and 128, 1 and 5 inner steps, on
  Omniglot-shaped synthetic 5-way 1-shot tasks (one query per class): fewshot batched (vmap) and sequential
  against a plain ``torch.autograd.grad`` loop, higher and torchopt (each only if it imports: carry its wheel);
  tasks/s, peak GPU memory, achieved TFLOP/s (the plain loop's FLOPs) against the measured peaks. Cells left when
  ``--deadline`` seconds have passed are recorded as not run.

Builds everything from the Python API: nothing here imports hydra or omegaconf (the device image has neither).
Exit status 1 when a correctness check failed or a section raised.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import peers

from episodes import EpisodeBatch, EpisodeSampler
from episodes.augment import RandomCropFlip
from episodes.datasets import load_omniglot
from episodes.files import atomic_write_text
from fewshot.backbones import create_backbone
from fewshot.evaluation import evaluate
from fewshot.learners import MAML, FineTune, OuterOptimizer

SECTIONS = ("env", "correctness", "syncs", "finetune", "maml", "time_to_accuracy")
PEERS = ("plain-loop", "higher", "torchopt")
FULL = {"maml_grid": [(o, b, s) for b in (32, 128) for o in ("second", "first") for s in (1, 5)],
        "seconds": 1.0, "check_tasks": 8, "ft_episodes": 600, "single_episodes": 120, "ft_steps": 100,
        "tta_seconds": 150.0, "tta_meta_batch": 32, "test_episodes": 1000, "eval_batch": 100, "matmul_n": 8192}
SMOKE = {"maml_grid": [(o, 2, s) for o in ("second", "first") for s in (1, 2)],
         "seconds": 0.0, "check_tasks": 2, "ft_episodes": 12, "single_episodes": 4, "ft_steps": 5,
         "tta_seconds": 2.0, "tta_meta_batch": 4, "test_episodes": 20, "eval_batch": 10, "matmul_n": 256}
PAPER_META_BATCHES = 60_000
TEST_RESERVE_S = 30.0  # kept for the 1000 test episodes after the time-to-accuracy training
START = time.monotonic()


# --------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a - b‖ / ‖b‖ in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check(name: str, value: float, threshold: float, detail: str = "") -> dict:
    return {"check": name, "value": value, "threshold": threshold, "passed": bool(value <= threshold),
            "detail": detail}


@contextlib.contextmanager
def tf32(device: torch.device, enabled: bool) -> Iterator[None]:
    """TF32 on or off for matmuls and convolutions in the block (off: float32 is float32 on Ampere and later)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def timed(call: Callable[[], float], device: torch.device, seconds: float, *, warmup: int = 1) -> dict:
    """``warmup`` untimed calls (the first one's value is kept), then calls until ``seconds`` have passed (at least
    one); the median seconds per call, and the peak GPU memory of all of them."""
    peak_reset(device)
    value = None
    for _ in range(warmup):
        result = call()
        value = result if value is None else value
    sync(device)
    times: list[float] = []
    while not times or sum(times) < seconds:
        t0 = time.perf_counter()
        result = call()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"value": result if value is None else value, "s_per_call": statistics.median(times), "calls": len(times),
            "min_s": min(times), "max_s": max(times), "peak_mib": peak_mib(device)}


def as_dtype(batch: EpisodeBatch, dtype: torch.dtype, device: torch.device) -> EpisodeBatch:
    batch = batch.to(device)
    return dataclasses.replace(batch, support_x=batch.support_x.to(dtype), query_x=batch.query_x.to(dtype))


def fewshot_maml(net: torch.nn.Sequential, *, batched: bool, inner_steps: int, first_order: bool,
                 inner_lr: float = 0.4) -> MAML:
    """fewshot's MAML over ``net``'s Conv4 and head (shared, not copied), with the inner loop batched or not."""
    learner = MAML(net[0], n_way=net[1].out_features, inner_lr=inner_lr, inner_steps=inner_steps,
                   first_order=first_order, batched=batched)
    learner.head = net[1]
    return learner


def meta_gradient(net: torch.nn.Sequential, batch: EpisodeBatch, **kwargs) -> tuple[float, torch.Tensor]:
    """(meta-loss, flat meta-gradient) of fewshot's MAML on a copy of ``net``."""
    learner = fewshot_maml(copy.deepcopy(net), **kwargs)
    learner.zero_grad(set_to_none=True)
    loss, _ = learner.meta_backward(batch)
    return float(loss), torch.cat([p.grad.flatten() for p in learner.parameters()])


def importable(name: str) -> str | None:
    """None if ``name`` imports, else why not."""
    try:
        importlib.import_module(name)
    except Exception as err:  # any failure to import means the peer is not measured; the reason is reported
        return f"not run: {name} does not import here ({type(err).__name__}: {err}); carry its wheel"
    return None


# --------------------------------------------------------------------------- sections
def section_env(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "device": str(device), "smoke": args.smoke,
           "load_average": os.getloadavg()[0], "commit": _commit(),
           "peers": {name: importable(name) or "imports" for name in PEERS[1:]}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"device_name": props.name, "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "tf32_matmul_default": torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn_default": torch.backends.cudnn.allow_tf32,
                "cudnn_benchmark": torch.backends.cudnn.benchmark}
    else:
        env["device_name"] = f"CPU ({platform.machine()})"
    n = size["matmul_n"]
    peaks = {}
    for name, dtype, tf32_on in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                 ("bf16", torch.bfloat16, False)):
        if device.type != "cuda" and name == "tf32":
            continue
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        with tf32(device, tf32_on):
            run = timed(lambda a=a, b=b: float((a @ b)[0, 0]), device, 0.5 if device.type == "cuda" else 0.1)
        peaks[f"{name}_tflops"] = 2 * n**3 / run["s_per_call"] / 1e12
    env["matmul_peaks"] = peaks | {"n": n}
    return env


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                             cwd=Path(__file__).resolve().parent)
    except OSError:
        return None
    return out.stdout.strip() or None


def section_correctness(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    checks = []
    # 1. The sampler: the same episodes on the device as on the CPU (indices first, then pixels, augmented).
    dataset = load_omniglot(split="test")
    kwargs = {"n_way": 5, "n_shot": 1, "n_query": 15, "seed": 13, "augment": RandomCropFlip(padding=2)}
    ids = torch.arange(64)
    cpu_sampler, dev_sampler = EpisodeSampler(dataset, **kwargs), EpisodeSampler(dataset.to(device), **kwargs)
    cpu_idx, dev_idx = cpu_sampler.indices(ids), dev_sampler.indices(ids.to(device))
    same_idx = all(torch.equal(a, b.cpu()) for a, b in zip(cpu_idx, dev_idx, strict=True))
    checks.append(check("sampler: episode indices and classes, device == CPU", float(not same_idx), 0.0))
    cpu_batch, dev_batch = cpu_sampler.batch(ids), dev_sampler.batch(ids.to(device)).to("cpu")
    pixels = torch.cat([(cpu_batch.support_x - dev_batch.support_x).flatten(),
                        (cpu_batch.query_x - dev_batch.query_x).flatten()]).abs()
    labels_equal = torch.equal(cpu_batch.support_y, dev_batch.support_y) and torch.equal(cpu_batch.query_y,
                                                                                         dev_batch.query_y)
    checks.append(check("sampler: images (augmented, float) bit for bit, device == CPU", float(pixels.max()), 0.0,
                        f"{int((pixels > 0).sum())} of {pixels.numel()} pixel values differ; labels equal: "
                        f"{labels_equal}"))

    # 2. Batched (vmap) vs sequential MAML meta-gradients, float64 on the device.
    net64 = peers.conv4_with_head(5, device).double()
    tasks = peers.synthetic_tasks(size["check_tasks"], 5, 1, 1, device)
    batch64 = as_dtype(tasks, torch.float64, device)
    for order in ("second", "first"):
        kw = {"inner_steps": 2, "first_order": order == "first"}
        loss_b, grad_b = meta_gradient(net64, batch64, batched=True, **kw)
        loss_s, grad_s = meta_gradient(net64, batch64, batched=False, **kw)
        checks.append(check(f"MAML {order} order, 2 inner steps: batched vs sequential meta-gradient, float64 on "
                            f"{device.type}", rel(grad_b, grad_s), 1e-8,
                            f"{size['check_tasks']} tasks; loss {loss_b:.12g} vs {loss_s:.12g}"))

    # 3. float32 on the device (TF32 off, the batched path where it is the default) vs a float64 CPU reference.
    net_cpu = peers.conv4_with_head(5, torch.device("cpu"))
    kw = {"inner_steps": 1, "first_order": False}
    _, reference = meta_gradient(net_cpu.double(), as_dtype(tasks, torch.float64, torch.device("cpu")),
                                 batched=False, **kw)
    _, cpu32 = meta_gradient(peers.conv4_with_head(5, torch.device("cpu")),
                             as_dtype(tasks, torch.float32, torch.device("cpu")), batched=False, **kw)
    with tf32(device, False):
        _, dev32 = meta_gradient(peers.conv4_with_head(5, device), as_dtype(tasks, torch.float32, device),
                                 batched=device.type == "cuda", **kw)
    _, dev32_default = meta_gradient(peers.conv4_with_head(5, device), as_dtype(tasks, torch.float32, device),
                                     batched=device.type == "cuda", **kw)
    checks.append(check(f"MAML second order: float32 meta-gradient on {device.type} (TF32 off) vs float64 CPU",
                        rel(dev32, reference), 1e-4,
                        f"float32 CPU vs float64 CPU: {rel(cpu32, reference):.2e}; with the default TF32 policy on "
                        f"{device.type}: {rel(dev32_default, reference):.2e} (not checked)"))

    # 4. Fine-tuning: the batched fits equal one episode at a time (float64 on the device).
    g = torch.Generator().manual_seed(3)
    e, s, q, d = size["check_tasks"] * 4, 5, 15, 64
    support = torch.randn(e, s, d, generator=g, dtype=torch.float64).to(device)
    query = torch.randn(e, q, d, generator=g, dtype=torch.float64).to(device)
    support_y = torch.arange(5, device=device).repeat(e, 1)
    frozen = FineTune(create_backbone("conv4", in_channels=1), steps=size["ft_steps"], lr=0.01).to(device)
    batched = frozen.predict_features(support, support_y, query, 5)
    single = torch.cat([frozen.predict_features(support[i:i + 1], support_y[i:i + 1], query[i:i + 1], 5)
                        for i in range(e)])
    checks.append(check(f"fine-tune, frozen features: {e} heads fitted in one batch vs one at a time, float64",
                        rel(batched, single), 1e-8))
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1).to(device).double().eval()
    episodes = as_dtype(tasks, torch.float64, device)
    fits = [FineTune(backbone, steps=3, lr=0.01, finetune_backbone="all", batched=b).predict(episodes)
            for b in (True, False)]
    checks.append(check("fine-tune, backbone adapted: batched (vmap) vs one episode at a time, float64",
                        rel(fits[0], fits[1]), 1e-8))
    return {"checks": checks, "all_passed": all(c["passed"] for c in checks)}


def _omniglot_step(device: torch.device, meta_batch: int) -> tuple[MAML, Callable[[int], dict]]:
    """Finn et al.'s Omniglot 5-way 1-shot MAML (fresh, seeded) and ``step(i)``: sample meta-batch ``i`` of the
    train+val classes on the device and take one meta-training step, as the episodic trainer does."""
    train = load_omniglot(split="trainval").to(device)
    sampler = EpisodeSampler(train, n_way=5, n_shot=1, n_query=1, seed=0)
    torch.manual_seed(0)
    learner = MAML(create_backbone("conv4", in_channels=1), n_way=5, inner_lr=0.4, inner_steps=1,
                   eval_inner_steps=3).to(device)
    learner.configure_optimizer(OuterOptimizer(name="adam", lr=1e-3, schedule="constant"))

    def step(i: int) -> dict:
        batch = sampler.batch(torch.arange(i * meta_batch, (i + 1) * meta_batch)).to(device, non_blocking=True)
        return learner.meta_train_step(batch)
    return learner, step


def section_syncs(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    if device.type != "cuda":
        return {"skipped": "CUDA only"}
    _, step = _omniglot_step(device, size["tta_meta_batch"])
    step(0)
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    where = Counter(f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in caught
                    if "synchroniz" in str(w.message))
    return {"waits_per_step": sum(where.values()), "by_line": dict(where.most_common())}


def section_finetune(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    dataset = load_omniglot(split="test").to(device)
    net = peers.conv4_with_head(5, device).eval()
    learner = FineTune(net[0], steps=size["ft_steps"], lr=0.01).to(device)
    shape = {"n_way": 5, "n_shot": 1, "n_query": 15}
    total, single = size["ft_episodes"], min(args.single_episodes or size["single_episodes"], size["ft_episodes"])

    def harness(episodes: int, batch_size: int) -> torch.Tensor:
        return evaluate({"ft": learner}, dataset, **shape, episodes=episodes, seed=0, batch_size=batch_size,
                        device=device, progress=False, permutations=0)["ft"].accuracies

    rows, accuracies = {}, {}
    for name, episodes, batch_size in (("harness, all episodes in one batch", total, total),
                                       ("harness, one episode per batch", single, 1)):
        holder = {}
        run = timed(lambda e=episodes, b=batch_size, h=holder: h.setdefault("acc", harness(e, b)).mean().item(),
                    device, 0.0, warmup=1 if episodes == total else 0)
        rows[name] = run | {"episodes": episodes, "episodes_per_s": episodes / run["s_per_call"]}
        accuracies[name] = holder["acc"]
    sampler = EpisodeSampler(dataset, **shape, seed=0, num_episodes=total)
    score = peers.episode_scorer("finetune", "plain-loop", net, inner_lr=0.0, inner_steps=0,
                                 finetune_steps=size["ft_steps"], finetune_lr=0.01)
    run = timed(lambda: sum(score(sampler.batch(torch.tensor([i], device=device))) for i in range(single)) / single,
                device, 0.0, warmup=0)
    rows["plain per-episode loop"] = run | {"episodes": single, "episodes_per_s": single / run["s_per_call"]}
    names = list(rows)
    same = torch.equal(accuracies[names[0]][:single], accuracies[names[1]])
    return {"task": "Omniglot test, 5-way 1-shot, 15 queries per class; frozen random Conv4, linear head, "
                    f"{size['ft_steps']} SGD steps", "rows": rows,
            "speedup_vs_one_per_batch": rows[names[0]]["episodes_per_s"] / rows[names[1]]["episodes_per_s"],
            "speedup_vs_plain_loop": rows[names[0]]["episodes_per_s"] / rows[names[2]]["episodes_per_s"],
            "same_per_episode_accuracies": same}


def tta_budget(args: argparse.Namespace, size: dict) -> float:
    """The time-to-accuracy training budget: ``--tta-seconds``, cut to what ``--deadline`` leaves (at least 30 s
    on the full size)."""
    budget = args.tta_seconds or size["tta_seconds"]
    if args.deadline:
        left = args.deadline - (time.monotonic() - START) - TEST_RESERVE_S
        budget = min(budget, max(left, min(budget, 30.0)))
    return budget


def section_time_to_accuracy(args: argparse.Namespace, size: dict, device: torch.device) -> dict:
    budget, meta_batch = tta_budget(args, size), size["tta_meta_batch"]
    learner, step = _omniglot_step(device, meta_batch)
    losses, done = [], 0
    sync(device)
    start = time.perf_counter()
    while done == 0 or time.perf_counter() - start < budget:
        losses.append(step(done)["loss"])
        done += 1
    sync(device)
    train_s = time.perf_counter() - start
    test = load_omniglot(split="test")
    t0 = time.perf_counter()
    result = evaluate({"maml": learner}, test, n_way=5, n_shot=1, n_query=15, episodes=size["test_episodes"],
                      seed=2017, batch_size=size["eval_batch"], device=device, progress=False, permutations=0)["maml"]
    return {"recipe": "Finn et al. 2017 Omniglot 5-way 1-shot, second order: Conv4, meta-batch "
                      f"{meta_batch}, 1 inner step (lr 0.4) in training and 3 at test, Adam 1e-3, train+val classes",
            "budget_s": budget, "meta_batches": done, "train_s": train_s, "s_per_meta_batch": train_s / done,
            "projected_60000_min": train_s / done * PAPER_META_BATCHES / 60,
            "loss_first_10": statistics.fmean(losses[:10]), "loss_last_10": statistics.fmean(losses[-10:]),
            "test_episodes": size["test_episodes"], "test_accuracy": result.mean, "test_ci95": result.ci95,
            "test_s": time.perf_counter() - t0, "paper_accuracy": 0.987}


def section_maml(args: argparse.Namespace, size: dict, device: torch.device, peaks: dict) -> dict:
    impls = ["fewshot-batched", "fewshot-sequential", *PEERS]
    skipped = {name: why for name in PEERS[1:] if (why := importable(name))}
    reserve = tta_budget(args, size) + TEST_RESERVE_S if "time_to_accuracy" in args.sections.split(",") else 0.0
    rows = []
    for order, meta_batch, steps in size["maml_grid"]:
        cell = {"order": order, "meta_batch": meta_batch, "inner_steps": steps}
        first_order = order == "first"
        flops = _flops_per_task(device, steps, first_order) * meta_batch
        batch = peers.synthetic_tasks(meta_batch, 5, 1, 1, device)
        for impl in impls:
            row = cell | {"impl": impl, "flops_per_call": flops}
            if impl in skipped:
                rows.append(row | {"error": skipped[impl]})
                continue
            if args.deadline and time.monotonic() - START > args.deadline - reserve:
                rows.append(row | {"error": "not run: --deadline reached (time kept for time_to_accuracy)"})
                continue
            net = peers.conv4_with_head(5, device)
            if impl.startswith("fewshot"):
                learner = fewshot_maml(net, batched=impl == "fewshot-batched", inner_steps=steps,
                                       first_order=first_order)

                def call(learner: MAML = learner, batch: EpisodeBatch = batch) -> float:
                    learner.zero_grad(set_to_none=True)
                    return learner.meta_backward(batch)[0].item()
            else:
                step = peers.maml_step(impl, net, inner_lr=0.4, inner_steps=steps, first_order=first_order)

                def call(step: Callable = step, batch: EpisodeBatch = batch) -> float:
                    return step(batch)
            try:
                run = timed(call, device, size["seconds"] if args.seconds is None else args.seconds)
            except Exception as err:  # a peer that fails (or runs out of memory) costs its cell, not the section
                rows.append(row | {"error": f"failed: {type(err).__name__}: {str(err).strip().splitlines()[-1]}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            rows.append(row | run | {"tasks_per_s": meta_batch / run["s_per_call"],
                                     "tflops": flops / run["s_per_call"] / 1e12})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "summary": _maml_summary(rows, peaks), "skipped": skipped}


def _flops_per_task(device: torch.device, steps: int, first_order: bool) -> float:
    """FLOPs of one task's meta-gradient with the plain loop (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    step = peers.maml_step("plain-loop", peers.conv4_with_head(5, device), inner_lr=0.4, inner_steps=steps,
                           first_order=first_order)
    batch = peers.synthetic_tasks(1, 5, 1, 1, device)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def _maml_summary(rows: list[dict], peaks: dict) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for row in rows:
        key = (row["order"], row["meta_batch"], row["inner_steps"])
        cells.setdefault(key, {})[row["impl"]] = row
    out = []
    for (order, meta_batch, steps), impls in cells.items():
        ok = {k: r["tasks_per_s"] for k, r in impls.items() if "error" not in r}
        line = {"order": order, "meta_batch": meta_batch, "inner_steps": steps, "tasks_per_s": ok}
        others = {k: v for k, v in ok.items() if not k.startswith("fewshot")}
        if others and "fewshot-batched" in ok:
            best = max(others, key=others.get)
            line |= {"best_peer": best, "batched_vs_best_peer": ok["fewshot-batched"] / others[best]}
        if "fewshot-batched" in impls and "error" not in impls["fewshot-batched"] and peaks.get("fp32_tflops"):
            line["batched_pct_of_fp32_peak"] = 100 * impls["fewshot-batched"]["tflops"] / peaks["fp32_tflops"]
        values = [r["value"] for r in impls.values() if "error" not in r]
        if len(values) > 1:
            line["value_spread"] = (max(values) - min(values)) / max(abs(v) for v in values)
        out.append(line)
    return out


# --------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    env = report.get("env", {})
    out = [f"# GPU check on {env.get('device_name', report['device'])}", "",
           f"Command: `{report['command']}`  ", f"Finished sections: {', '.join(report['finished']) or 'none'}; "
           f"wall time {report['elapsed_s']:.0f} s.", ""]
    if env:
        peaks = env.get("matmul_peaks", {})
        out += [f"torch {env['torch']} (CUDA {env.get('cuda')}), Python {env['python']}; matmul peaks (n="
                f"{peaks.get('n')}): " + ", ".join(f"{k[:-7]} {v:,.1f} TFLOP/s" for k, v in peaks.items()
                                                   if k.endswith("_tflops"))
                + "; peers: " + ", ".join(f"{k} {v if v == 'imports' else 'missing'}" for k, v in
                                          env["peers"].items()), ""]
    if "correctness" in report:
        c = report["correctness"]
        out += [f"## Correctness: {'all passed' if c['all_passed'] else 'FAILED'}", "",
                "| check | value | threshold | passed | detail |", "|---|---:|---:|---|---|"]
        out += [f"| {x['check']} | {x['value']:.3g} | {x['threshold']:.0e} | {'yes' if x['passed'] else 'NO'} | "
                f"{x['detail']} |" for x in c["checks"]]
        out.append("")
    if "syncs" in report and "by_line" in report["syncs"]:
        s = report["syncs"]
        out += [f"## Host-device waits in one meta-training step: {s['waits_per_step']}", ""]
        out += [f"- `{where}`: {n}" for where, n in s["by_line"].items()] + [""]
    if "finetune" in report:
        f = report["finetune"]
        out += [f"## Fine-tune evaluation ({f['task']})", "", "| how | episodes | episodes/s | peak MiB |",
                "|---|---:|---:|---:|"]
        out += [f"| {k} | {r['episodes']} | {r['episodes_per_s']:,.1f} | {_mib(r['peak_mib'])} |"
                for k, r in f["rows"].items()]
        out += ["", f"One batch is {f['speedup_vs_one_per_batch']:.1f}x the harness one episode at a time and "
                f"{f['speedup_vs_plain_loop']:.1f}x the plain loop; same per-episode accuracies: "
                f"{f['same_per_episode_accuracies']}.", ""]
    if "time_to_accuracy" in report:
        t = report["time_to_accuracy"]
        out += ["## Time to accuracy", "", f"{t['recipe']}: {t['meta_batches']} meta-batches in {t['train_s']:.0f} s "
                f"({1000 * t['s_per_meta_batch']:.1f} ms each; the paper's 60,000 would take "
                f"{t['projected_60000_min']:.1f} min); loss {t['loss_first_10']:.3f} -> {t['loss_last_10']:.3f}; "
                f"test accuracy over {t['test_episodes']} episodes {100 * t['test_accuracy']:.2f} ± "
                f"{100 * t['test_ci95']:.2f}% (paper after 60,000: {100 * t['paper_accuracy']:.1f}%).", ""]
    if "maml" in report:
        m = report["maml"]
        impls = list(dict.fromkeys(r["impl"] for r in m["rows"]))
        out += ["## MAML meta-gradients (tasks/s; peak MiB)", "",
                "| order, meta-batch, inner steps | " + " | ".join(impls) + " | batched ÷ best peer | % fp32 peak |",
                "|---|" + "---:|" * (len(impls) + 2)]
        by_cell: dict[tuple, dict] = {}
        for r in m["rows"]:
            by_cell.setdefault((r["order"], r["meta_batch"], r["inner_steps"]), {})[r["impl"]] = r
        for line in m["summary"]:
            cell = by_cell[(line["order"], line["meta_batch"], line["inner_steps"])]
            cols = [("not run" if "error" in r and r["error"].startswith("not run") else "failed") if "error" in r
                    else f"{r['tasks_per_s']:,.1f} ({_mib(r['peak_mib'])})" for r in (cell[k] for k in impls)]
            ratio = (f"{line['batched_vs_best_peer']:.2f}x ({line['best_peer']})"
                     if "batched_vs_best_peer" in line else "-")
            pct = f"{line['batched_pct_of_fp32_peak']:.2f}" if "batched_pct_of_fp32_peak" in line else "-"
            out.append(f"| {line['order']}, {line['meta_batch']}, {line['inner_steps']} | " + " | ".join(cols)
                       + f" | {ratio} | {pct} |")
        spread = max((line.get("value_spread", 0.0) for line in m["summary"]), default=0.0)
        out += ["", f"First meta-losses agree across implementations to {spread:.1e} relative."]
        out += [f"- {k}: {v}" for k, v in m["skipped"].items()]
        failures = dict.fromkeys(f"{r['impl']}: {r['error']}" for r in m["rows"]
                                 if r.get("error", "").startswith("failed"))
        out += [f"- {x}" for x in failures] + [""]
    if report["errors"]:
        out += ["## Sections that raised", ""]
        out += [f"- {k}: `{v.strip().splitlines()[-1]}`" for k, v in report["errors"].items()] + [""]
    return "\n".join(out)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="every section at a tiny size (a rehearsal on CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of "
                        + ", ".join(SECTIONS))
    parser.add_argument("--tta-seconds", type=float, default=None, help="time-to-accuracy training budget")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per MAML measurement")
    parser.add_argument("--single-episodes", type=int, default=None,
                        help="episodes scored one at a time in the fine-tune section")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds since start after which remaining MAML cells are skipped")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = SMOKE if args.smoke else FULL
    report: dict = {"command": "PYTHONPATH=. python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
                    "device": args.device, "size": {k: v for k, v in size.items() if k != "maml_grid"},
                    "finished": [], "errors": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    runners = {"env": section_env, "correctness": section_correctness, "syncs": section_syncs,
               "finetune": section_finetune, "time_to_accuracy": section_time_to_accuracy,
               "maml": lambda a, s, d: section_maml(a, s, d, report.get("env", {}).get("matmul_peaks", {}))}
    for name in SECTIONS:
        if name not in sections:
            continue
        print(f"== {name} ({time.monotonic() - START:.0f} s)", flush=True)
        try:
            report[name] = runners[name](args, size, device)
            report["finished"].append(name)
        except Exception:  # record and go on: one device call must bring back everything that worked
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], file=sys.stderr, flush=True)
        report["elapsed_s"] = time.monotonic() - START
        atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report), flush=True)
    failed = report["errors"] or not report.get("correctness", {}).get("all_passed", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
