"""Transductive learners: all episodes of a batch in one tensor computation vs one episode at a time.

Each method of fewshot/learners/finetune/ (TIM, BD-CSPN, LaplacianShot, PT-MAP, transductive fine-tuning) is
evaluated through the harness on the same 600 fixed Omniglot test episodes (5-way 1-shot, 15 queries per
class, evaluation seed 2017; the first 60 for transductive fine-tuning, about 3 s per episode here) with the
pretrained Conv4 of experiment/base/transductive_omniglot.yaml, once with ``batch_size`` episodes per call and
once with one episode per call. The harness embeds each test image once for the frozen-feature methods
(included in both timings); transductive fine-tuning fine-tunes the backbone on images, episode by episode on
CPU (``map_tasks`` loops; vmap on CUDA). The script reports the ratio of the two wall times and whether the
per-episode accuracies agree.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_transductive.py [--methods tim ptmap] [--device cuda]

Writes benchmarks/results/transductive_speed.md and .json (numbers from a busy machine are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text
from fewshot.backbones.spec import normalise_for
from fewshot.backbones.weights import load_pretrained
from fewshot.evaluation import evaluate
from fewshot.learners import ProtoNet

REPO = Path(__file__).resolve().parent.parent
METHODS = ("tim", "bdcspn", "laplacianshot", "ptmap", "transductiveft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--tft-episodes", type=int, default=60,
                        help="episodes for transductive fine-tuning (about 3 s per 5-way episode on one CPU thread)")
    parser.add_argument("--batch-size", type=int, default=50, help="episodes per call of the batched run")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        for method in args.methods:
            # The Omniglot experiment row, but L2N features for LaplacianShot (CL2N's base-class mean costs one
            # pass over the 4800 training classes and nothing per episode).
            extra = ["learner.feature_transform=L2N"] if method == "laplacianshot" else []
            cfg = compose("train", overrides=[f"experiment={method}_omniglot", *extra])
            torch.manual_seed(cfg.seed)
            backbone = hydra.utils.instantiate(cfg.backbone)
            load_pretrained(backbone, REPO / cfg.backbone_weights)
            test = normalise_for(hydra.utils.instantiate(cfg.dataset.loader, split=cfg.dataset.splits.test),
                                 backbone.spec)
            learner = hydra.utils.instantiate(cfg.learner, backbone=backbone).to(device)
            timings, accuracies = {}, {}
            episodes = args.tft_episodes if method == "transductiveft" else args.episodes
            for batch in (args.batch_size, 1):
                start = time.perf_counter()
                result = evaluate({method: learner}, test, n_way=5, n_shot=1, n_query=15, episodes=episodes,
                                  seed=cfg.evaluation.seed, batch_size=batch, device=device, progress=False,
                                  permutations=0)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                timings[batch], accuracies[batch] = time.perf_counter() - start, result.learners[0].accuracies
            batched, single = accuracies[args.batch_size], accuracies[1]
            rows.append({"method": method, "learner": cfg.learner._target_.rsplit(".", 1)[1], "episodes": episodes,
                         "batched_seconds": timings[args.batch_size], "single_seconds": timings[1],
                         "speedup": timings[1] / timings[args.batch_size],
                         "accuracy_batched": float(batched.mean()), "accuracy_single": float(single.mean()),
                         "episodes_with_equal_accuracy": int((batched == single).sum())})
            print(json.dumps(rows[-1]), flush=True)
        # Reference: nearest prototype on the same backbone and episodes, 50 per call: almost all of its time is the
        # harness's embedding of the test images, which every frozen-feature row above includes too.
        start = time.perf_counter()
        evaluate({"protonet": ProtoNet(backbone).to(device)}, test, n_way=5, n_shot=1, n_query=15,
                 episodes=args.episodes, seed=cfg.evaluation.seed, batch_size=args.batch_size, device=device,
                 progress=False, permutations=0)
        reference = time.perf_counter() - start
    result = {"command": " ".join(["python benchmarks/bench_transductive.py", *sys.argv[1:]]),
              "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "device": args.device, "episodes": args.episodes,
              "tft_episodes": args.tft_episodes,
              "task": "Omniglot (Vinyals test classes) 5-way 1-shot, 15 queries per class, evaluation seed 2017",
              "backbone": "Conv4, benchmarks/results/pretrained/conv4_omniglot_trainval/backbone.safetensors",
              "batch_size": args.batch_size, "rows": rows, "embedding_reference_seconds": reference}
    lines = ["# Transductive learners: batched episodes vs one at a time", "",
             f"Command: `PYTHONPATH=. OMP_NUM_THREADS=1 {result['command']}`; torch {result['torch']}, "
             f"{result['cpu_cores']} CPU cores, {result['torch_threads']} torch thread(s), device {args.device}. "
             f"Episodes of {result['task']} (the first ones of the fixed test set; {args.tft_episodes} for "
             "transductive fine-tuning), pretrained Conv4; each run through the harness (frozen-feature methods "
             "embed each test image once, in both runs).", "",
             f"| method | episodes | {args.batch_size} episodes per call (s) | 1 episode per call (s) | speed-up | "
             "accuracy % (batched / single) | episodes with equal accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['learner']} | {r['episodes']} | {r['batched_seconds']:.1f} | {r['single_seconds']:.1f} | "
              f"{r['speedup']:.1f}x | {100 * r['accuracy_batched']:.2f} / {100 * r['accuracy_single']:.2f} | "
              f"{r['episodes_with_equal_accuracy']}/{r['episodes']} |" for r in rows]
    lines += ["", f"Reference: ProtoNet (nearest prototype) on the same backbone and {args.episodes} episodes, "
              f"{args.batch_size} per call, takes {reference:.1f} s, almost all of it the harness embedding the "
              "test images once; the frozen-feature rows include that time in both runs, so BD-CSPN and "
              "LaplacianShot (a few small tensor operations per episode) show ratios near 1.",
              "", "Transductive fine-tuning adapts a copy of the backbone per episode: on CPU its inner loop runs "
              "episode by episode in both runs (vmap over episodes is used on CUDA only), so its ratio measures "
              "the harness, not batching. easyfsl (the peer with TIM, BD-CSPN and transductive fine-tuning) is "
              "not compared: it needs torchvision, which does not import beside this torch."]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "transductive_speed.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "transductive_speed.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
