"""Evaluation harness throughput: ProtoNet (Conv4) on Omniglot 5-way 1-shot, 15 queries per class.

Scores the same seeded episodes twice: through ``predict`` on images (every episode embeds its
own 80 images) and with ``embed_once`` (each image the episodes use is embedded once, episodes
are gathered from the features). Reports wall times, the speed-up, and whether the per-episode
accuracies are identical. A random-init Conv4 is enough: speed does not depend on the weights.

    PYTHONPATH=. python benchmarks/bench_harness.py                # 1000 episodes, Vinyals test split
    PYTHONPATH=. python benchmarks/bench_harness.py --synthetic    # 1692 classes x 20 random images

Writes benchmarks/results/harness.md and harness.json (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from episodes import FewShotDataset
from episodes.files import atomic_write_text
from fewshot.backbones import create_backbone
from fewshot.evaluation import collect_provenance, evaluate
from fewshot.learners import ProtoNet

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_omniglot(classes: int = 1692, per_class: int = 20, size: int = 28) -> FewShotDataset:
    """Random binary images in the shape of the Omniglot Vinyals test split."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(classes * per_class, 1, size, size, generator=g) < 0.15).to(torch.uint8) * 255
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotDataset.from_tensors(images, labels, [f"class{i}" for i in range(classes)],
                                       name="synthetic-omniglot-test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=50, help="episodes per predict call")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of Omniglot")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for harness.md and harness.json")
    args = parser.parse_args()

    if args.synthetic:
        dataset = synthetic_omniglot()
    else:
        from episodes.datasets import load_omniglot
        dataset = load_omniglot(split="test")
    torch.manual_seed(0)
    learner = ProtoNet(create_backbone("conv4")).to(args.device)
    options = {"n_way": 5, "n_shot": 1, "n_query": 15, "episodes": args.episodes, "seed": 0,
               "batch_size": args.batch_size, "device": args.device, "progress": False}
    load_before = os.getloadavg()[0]
    timings, results = {}, {}
    for mode, embed_once in (("predict", False), ("embed_once", True)):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        results[mode] = evaluate({"protonet": learner}, dataset, embed_once=embed_once, **options)["protonet"]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings[mode] = time.perf_counter() - start
        print(f"{mode:>10}: {timings[mode]:8.2f} s  accuracy {100 * results[mode].mean:.2f} "
              f"+- {100 * results[mode].ci95:.2f}%")
    different = int((results["predict"].accuracies != results["embed_once"].accuracies).sum())
    speedup = timings["predict"] / timings["embed_once"]
    print(f"speed-up {speedup:.2f}x; episodes with different accuracy: {different} of {args.episodes}")

    record = {
        "benchmark": "harness: ProtoNet Conv4 (random init), 5-way 1-shot, 15 queries, predict vs embed_once",
        "dataset": dataset.name, "images": len(dataset), "classes": dataset.num_classes,
        "episodes": args.episodes, "batch_size": args.batch_size, "device": args.device,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
        "seconds": timings, "speedup": speedup, "episodes_with_different_accuracy": different,
        "identical": different == 0,
        "accuracy": {mode: {"mean": r.mean, "ci95": r.ci95} for mode, r in results.items()},
        "provenance": collect_provenance(config=vars(args) | {"out": str(args.out)}, seed=0, device=args.device),
    }
    atomic_write_text(args.out / "harness.json", json.dumps(record, indent=2) + "\n")
    markdown = (
        "# Evaluation harness: predict on images vs embed once\n\n"
        f"ProtoNet, Conv4 (random init), {dataset.name} ({dataset.num_classes} classes, {len(dataset)} images), "
        f"5-way 1-shot, 15 queries per class, {args.episodes} episodes (seed 0), {args.batch_size} episodes per "
        f"batch, device {args.device}, {torch.get_num_threads()} torch threads, load average "
        f"{load_before:.1f} before the run.\n\n"
        "| path | wall time (s) | accuracy (%) |\n|---|---|---|\n"
        + "".join(f"| {mode} | {timings[mode]:.2f} | {100 * r.mean:.2f} ± {100 * r.ci95:.2f} |\n"
                  for mode, r in results.items())
        + f"\nSpeed-up: **{speedup:.2f}x**. Per-episode accuracies identical: "
        f"**{'yes' if different == 0 else f'no ({different} episodes differ)'}**.\n\n"
        "Command: `PYTHONPATH=. python benchmarks/bench_harness.py"
        f"{' --synthetic' if args.synthetic else ''} --episodes {args.episodes}`\n"
    )
    atomic_write_text(args.out / "harness.md", markdown)


if __name__ == "__main__":
    main()
