"""Does supervised pretraining help meta-learners on Omniglot? Scratch versus pretrained starts.

ProtoNet and MAML (Conv4, Omniglot Vinyals split) are meta-trained for the same number of steps on the
same seeded episodes, once from a random initialisation and once from a backbone pretrained with
``pretrain_backbone`` on all training classes (what ``fewshot-pretrain`` writes); every model is
tested on the same fixed test episodes, and each pair is compared with a paired test.

    PYTHONPATH=. python benchmarks/bench_pretrain_transfer.py            # writes benchmarks/results/
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from episodes import EpisodeSampler
from episodes.datasets import load_omniglot
from episodes.files import atomic_write_text
from fewshot.backbones import create_backbone
from fewshot.evaluation import evaluate, markdown_table
from fewshot.learners import MAML, OuterOptimizer, ProtoNet
from fewshot.learners.base import MetaLearner
from fewshot.training.meta_train import TrainSettings, meta_train
from fewshot.training.pretrain import pretrain_backbone

RESULTS = Path(__file__).resolve().parent / "results"


def meta_trained(learner: MetaLearner, sampler: EpisodeSampler, *, steps: int, meta_batch: int,
                 lr: float) -> tuple[MetaLearner, float]:
    learner.configure_optimizer(OuterOptimizer(lr=lr, schedule="cosine", total_steps=steps))
    start = time.perf_counter()
    meta_train(learner, sampler, settings=TrainSettings(steps=steps, meta_batch=meta_batch), progress=False)
    return learner, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--protonet-steps", type=int, default=300, help="60-way 1-shot 5-query episodes")
    parser.add_argument("--maml-steps", type=int, default=150, help="meta-batches of 5-way 1-shot tasks")
    parser.add_argument("--maml-meta-batch", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=600, help="fixed test episodes per setting")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    train, test = load_omniglot(split="train"), load_omniglot(split="test")
    torch.manual_seed(0)
    scratch = create_backbone("conv4", in_channels=1)
    start = time.perf_counter()
    pretrained = pretrain_backbone(copy.deepcopy(scratch), train, epochs=args.pretrain_epochs, batch_size=128,
                                   lr=0.05, seed=0, progress=False)
    pretrain_seconds = time.perf_counter() - start
    history = pretrained.history

    runs: dict[str, tuple[MetaLearner, float]] = {}
    proto_sampler = EpisodeSampler(train, n_way=60, n_shot=1, n_query=5, seed=0)
    maml_sampler = EpisodeSampler(train, n_way=5, n_shot=1, n_query=15, seed=0)
    for start_name, backbone in [("scratch", scratch), ("pretrained", pretrained.backbone)]:
        runs[f"ProtoNet ({start_name})"] = meta_trained(
            ProtoNet(copy.deepcopy(backbone)), proto_sampler, steps=args.protonet_steps, meta_batch=1, lr=1e-3)
        runs[f"MAML ({start_name})"] = meta_trained(
            MAML(copy.deepcopy(backbone), n_way=5, inner_lr=0.4, inner_steps=1, eval_inner_steps=3),
            maml_sampler, steps=args.maml_steps, meta_batch=args.maml_meta_batch, lr=1e-3)
    learners = {name: learner for name, (learner, _) in runs.items()}
    results = [evaluate(learners, test, n_way=5, n_shot=shots, n_query=15, episodes=args.episodes, seed=2017,
                        progress=False, train_dataset=train.name) for shots in (1, 5)]

    lines = [
        "# Pretrained versus scratch starts for meta-learners (Omniglot, Conv4)", "",
        f"Command: `PYTHONPATH=. python benchmarks/bench_pretrain_transfer.py` (pretrain epochs "
        f"{args.pretrain_epochs}, ProtoNet {args.protonet_steps} steps of 60-way 1-shot 5-query episodes, MAML "
        f"{args.maml_steps} steps of meta-batch {args.maml_meta_batch} 5-way 1-shot 15-query tasks, second order, "
        f"inner lr 0.4, 1 step in training / 3 at test; Adam 1e-3 cosine). Hardware: {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}.", "",
        f"Pretraining: supervised on all {train.num_classes} training classes ({len(train)} images), "
        f"{args.pretrain_epochs} epochs, {pretrain_seconds:.0f} s; final training accuracy "
        f"{100 * history[-1]['accuracy']:.1f}%.", "",
        f"Test: {args.episodes} fixed episodes of the {test.num_classes} test classes, 15 queries per class, "
        "identical for every model (95% CI).", "",
        markdown_table(results), "",
        "Meta-training time (s): " + ", ".join(f"{name} {seconds:.0f}" for name, (_, seconds) in runs.items()), "",
        "Paired comparisons (pretrained minus scratch, same episodes):", "",
    ]
    for result in results:
        for comparison in result.comparisons:
            pair = {comparison.learner_a, comparison.learner_b}
            if pair in ({"ProtoNet (pretrained)", "ProtoNet (scratch)"}, {"MAML (pretrained)", "MAML (scratch)"}):
                r = comparison.result
                sign = 1 if "pretrained" in comparison.learner_a else -1
                low, high = sorted((sign * r.ci95_low, sign * r.ci95_high))
                lines.append(f"- {result.spec.setting}, {comparison.learner_a.split()[0]}: "
                             f"{100 * sign * r.mean_difference:+.2f} points (95% CI {100 * low:+.2f} to "
                             f"{100 * high:+.2f}), paired t-test p = {r.p_value:.2g}")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        atomic_write_text(RESULTS / "pretrain_transfer.md", text)
        atomic_write_text(RESULTS / "pretrain_transfer.json", json.dumps(
            {"args": vars(args), "pretrain_seconds": pretrain_seconds, "pretrain_history": history,
             "meta_train_seconds": {name: seconds for name, (_, seconds) in runs.items()},
             "results": [r.to_dict() for r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
