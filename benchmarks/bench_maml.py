"""MAML meta-training throughput: this library (batched, sequential) against a plain loop, higher and torchopt.

Every implementation gets the same Conv4 (batch norm, per-batch statistics), the same head, the same
Omniglot-shaped tasks (5-way 1-shot, 15 queries per class, 1x28x28; synthetic class templates plus noise)
and the same inner step size; the script checks they compute the same meta-loss on the first step.
A measured step is one meta-gradient: inner loop on every task, query loss, outer backward.

Each (implementation, order) runs in its own subprocess, so the peak-memory figure is clean: the rise
of ``ru_maxrss`` over the meta-steps (warm-up included) above the process's peak after setup on CPU,
``torch.cuda.max_memory_allocated`` on CUDA.

    PYTHONPATH=. python benchmarks/bench_maml.py --meta-batch 32 --inner-steps 1 [--device cuda]

Writes benchmarks/results/maml_throughput.md and .json (numbers from a busy machine are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes import EpisodeBatch
from fewshot.learners import MAML

IMPLS = ("fewshot-batched", "fewshot-sequential", "plain-loop", "higher", "torchopt", "learn2learn")
LEARN2LEARN_NOTE = ("not run: `pip install learn2learn` (0.2.0) fails to build on Python 3.11 (its shipped Cython "
                    "C file includes longintrepr.h, gone in 3.11); it also needs torchvision, which does not import "
                    "with the CPU torch here (DESIGN.md)")


def build_net(n_way: int, device: torch.device) -> nn.Sequential:
    """Conv4 (from fewshot.backbones) + linear head, fixed seed, in train mode (per-batch BN statistics)."""
    from fewshot.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1)
    return nn.Sequential(backbone, nn.Linear(backbone.feature_dim, n_way)).to(device).train()


def make_tasks(meta_batch: int, n_way: int, n_shot: int, n_query: int, device: torch.device) -> EpisodeBatch:
    g = torch.Generator().manual_seed(1)
    templates = torch.rand(n_way * meta_batch, 1, 28, 28, generator=g).view(meta_batch, n_way, 1, 1, 28, 28)

    def images(k: int) -> torch.Tensor:
        x = templates.expand(-1, -1, k, -1, -1, -1) + 0.3 * torch.randn(meta_batch, n_way, k, 1, 28, 28, generator=g)
        return x.flatten(1, 2)

    def labels(k: int) -> torch.Tensor:
        return torch.arange(n_way).repeat_interleave(k).repeat(meta_batch, 1)

    return EpisodeBatch(images(n_shot), labels(n_shot), images(n_query), labels(n_query),
                        torch.arange(n_way).repeat(meta_batch, 1), torch.arange(meta_batch)).to(device)


def fewshot_step(net: nn.Sequential, args: argparse.Namespace, first_order: bool, batched: bool):
    learner = MAML(net[0], n_way=args.n_way, inner_lr=args.inner_lr, inner_steps=args.inner_steps,
                   first_order=first_order, batched=batched)
    learner.head.load_state_dict(net[1].state_dict())

    def step(batch: EpisodeBatch) -> float:
        learner.zero_grad(set_to_none=True)
        loss, _ = learner.meta_backward(batch)  # what meta_train_step runs: per-task backward when sequential
        return loss.item()
    return step


def plain_step(net: nn.Sequential, args: argparse.Namespace, first_order: bool):
    """Per task: autograd.grad (create_graph unless first order), hand-written SGD, backward of the query loss."""
    names = [n for n, _ in net.named_parameters()]

    def step(batch: EpisodeBatch) -> float:
        net.zero_grad(set_to_none=True)
        total = 0.0
        for t in range(batch.n_tasks):
            params = dict(net.named_parameters())
            for _ in range(args.inner_steps):
                loss = F.cross_entropy(torch.func.functional_call(net, params, (batch.support_x[t],)),
                                       batch.support_y[t])
                grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=not first_order)
                params = {n: params[n] - args.inner_lr * g for n, g in zip(names, grads, strict=True)}
            query = F.cross_entropy(torch.func.functional_call(net, params, (batch.query_x[t],)), batch.query_y[t])
            (query / batch.n_tasks).backward()
            total += query.item() / batch.n_tasks
        return total
    return step


def higher_step(net: nn.Sequential, args: argparse.Namespace, first_order: bool):
    """higher.innerloop_ctx per task; first order detaches the inner gradients with grad_callback."""
    import higher

    inner_opt = torch.optim.SGD(net.parameters(), lr=args.inner_lr)
    callback = (lambda grads: [g.detach() for g in grads]) if first_order else None

    def step(batch: EpisodeBatch) -> float:
        net.zero_grad(set_to_none=True)
        total = 0.0
        for t in range(batch.n_tasks):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(args.inner_steps):
                    diffopt.step(F.cross_entropy(fnet(batch.support_x[t]), batch.support_y[t]), grad_callback=callback)
                query = F.cross_entropy(fnet(batch.query_x[t]), batch.query_y[t])
                (query / batch.n_tasks).backward()
                total += query.item() / batch.n_tasks
        return total
    return step


def torchopt_step(net: nn.Sequential, args: argparse.Namespace, first_order: bool):
    """torchopt's functional API: torchopt.sgd update + apply_updates(inplace=False) per task."""
    import torchopt

    names = [n for n, _ in net.named_parameters()]
    opt = torchopt.sgd(lr=args.inner_lr)

    def step(batch: EpisodeBatch) -> float:
        net.zero_grad(set_to_none=True)
        total = 0.0
        for t in range(batch.n_tasks):
            params = tuple(net.parameters())
            state = opt.init(params)
            for _ in range(args.inner_steps):
                logits = torch.func.functional_call(net, dict(zip(names, params, strict=True)), (batch.support_x[t],))
                grads = torch.autograd.grad(F.cross_entropy(logits, batch.support_y[t]), params,
                                            create_graph=not first_order)
                updates, state = opt.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            logits = torch.func.functional_call(net, dict(zip(names, params, strict=True)), (batch.query_x[t],))
            query = F.cross_entropy(logits, batch.query_y[t])
            (query / batch.n_tasks).backward()
            total += query.item() / batch.n_tasks
        return total
    return step


def run_child(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    net = build_net(args.n_way, device)
    batch = make_tasks(args.meta_batch, args.n_way, args.n_shot, args.n_query, device)
    first_order = args.order == "first"
    builders = {"fewshot-batched": lambda: fewshot_step(net, args, first_order, True),
                "fewshot-sequential": lambda: fewshot_step(net, args, first_order, False),
                "plain-loop": lambda: plain_step(net, args, first_order),
                "higher": lambda: higher_step(net, args, first_order),
                "torchopt": lambda: torchopt_step(net, args, first_order)}
    step = builders[args.child]()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak so far: imports, net, tasks
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first_loss = step(batch)  # warm-up; the loss of the untouched net, compared across implementations
    for _ in range(args.warmup - 1):
        step(batch)
    start = time.perf_counter()
    for _ in range(args.repeats):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024)
    return {"impl": args.child, "order": args.order, "first_loss": first_loss,
            "tasks_per_s": args.meta_batch * args.repeats / seconds, "seconds_per_step": seconds / args.repeats,
            "peak_mib": peak, "peak_kind": "cuda max_memory_allocated" if device.type == "cuda" else "max RSS rise"}


def spawn(args: argparse.Namespace, impl: str, order: str) -> dict:
    skip = ("child", "order", "impls", "orders", "out_dir")
    cmd = [sys.executable, __file__, "--child", impl, "--order", order] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "order": order, "error": reason}
    return json.loads(lines[-1][len("RESULT "):])


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(args: argparse.Namespace, rows: list[dict]) -> None:
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "torch": torch.__version__,
            "python": sys.version.split()[0], "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": args.device, "meta_batch": args.meta_batch, "inner_steps": args.inner_steps,
            "task": f"{args.n_way}-way {args.n_shot}-shot, {args.n_query} queries/class, 1x28x28, Conv4+BN",
            "inner_lr": args.inner_lr, "repeats": args.repeats}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "maml_throughput.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# MAML meta-training throughput", "", *(f"- {k}: `{v}`" for k, v in meta.items()), "",
             "| implementation | order | tasks/s | s/step | peak MiB | first loss | note |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['order']} | - | - | - | - | {r['error']} |")
        else:
            lines.append(f"| {r['impl']} | {r['order']} | {r['tasks_per_s']:.1f} | {r['seconds_per_step']:.3f} | "
                         f"{r['peak_mib']:.0f} | {r['first_loss']:.6f} | {r.get('note', '')} |")
    write_atomic(out / "maml_throughput.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batch", type=int, default=32, choices=(8, 32, 128))
    parser.add_argument("--inner-steps", type=int, default=1, choices=(1, 5))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--n-shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-steps per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-steps first (at least 1)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ", ".join(IMPLS))
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--order", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step's loss is the cross-check)")
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return
    rows = []
    for order in args.orders.split(","):
        reference = None
        for impl in args.impls.split(","):
            if impl not in IMPLS:
                parser.error(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
            row = {"impl": impl, "order": order, "error": LEARN2LEARN_NOTE} if impl == "learn2learn" else \
                spawn(args, impl, order)
            if "error" not in row:
                reference = row["first_loss"] if reference is None else reference
                gap = abs(row["first_loss"] - reference) / abs(reference)
                row["loss_rel_gap"] = gap
                row["note"] = "same first loss" if gap < 1e-4 else f"FIRST LOSS DIFFERS by {gap:.1e} (relative)"
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(args, rows)


if __name__ == "__main__":
    main()
