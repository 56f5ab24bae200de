"""Fine-tune evaluation throughput: heads of all episodes fitted in one batched optimisation vs one at a time.

600 episodes (5-way 5-shot, 15 queries per class) over a frozen Conv4 (random weights: only speed and
equality matter here) on synthetic 1x28x28 class templates plus noise. Every image is embedded once; then
:class:`fewshot.learners.FrozenFineTune` (linear head, 100 SGD steps) fits the heads of ``--batch-size``
episodes per call, against one episode per call. The script checks both give the same logits.

    PYTHONPATH=. python benchmarks/bench_finetune.py [--device cuda] [--batch-size 600]

Writes benchmarks/results/finetune_eval.md and .json (numbers from a busy machine are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text
from fewshot.backbones import create_backbone
from fewshot.learners import FineTune


def synthetic_pool(num_classes: int, per_class: int, device: torch.device) -> torch.Tensor:
    """(num_classes, per_class, 1, 28, 28) images: a random template per class plus noise."""
    g = torch.Generator().manual_seed(0)
    templates = torch.rand(num_classes, 1, 1, 28, 28, generator=g)
    return (templates + 0.3 * torch.randn(num_classes, per_class, 1, 28, 28, generator=g)).to(device)


def episode_indices(episodes: int, num_classes: int, per_class: int, n_way: int, n_shot: int, n_query: int,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded episodes as (E, n_way, n_shot) and (E, n_way, n_query) flat indices into the pool."""
    g = torch.Generator().manual_seed(1)
    classes = torch.stack([torch.randperm(num_classes, generator=g)[:n_way] for _ in range(episodes)])
    picks = torch.stack([torch.stack([torch.randperm(per_class, generator=g)[: n_shot + n_query]
                                      for _ in range(n_way)]) for _ in range(episodes)])
    flat = classes.unsqueeze(-1) * per_class + picks
    return flat[..., :n_shot], flat[..., n_shot:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--n-shot", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=600, help="episodes per batched head fit")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    num_classes, per_class = 100, 20

    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1).to(device).eval()
    learner = FineTune(backbone, head="linear", steps=args.steps, lr=args.lr).to(device)
    pool = synthetic_pool(num_classes, per_class, device)
    start = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([learner.embed(chunk) for chunk in pool.flatten(0, 1).split(500)])
    sync(device)
    embed_s = time.perf_counter() - start
    s_idx, q_idx = (i.to(device) for i in episode_indices(args.episodes, num_classes, per_class, args.n_way,
                                                          args.n_shot, args.n_query))
    support, query = feats[s_idx.flatten(1)], feats[q_idx.flatten(1)]
    support_y = torch.arange(args.n_way, device=device).repeat_interleave(args.n_shot).repeat(args.episodes, 1)
    query_y = torch.arange(args.n_way, device=device).repeat_interleave(args.n_query).repeat(args.episodes, 1)

    def fit(batch: int) -> tuple[torch.Tensor, float]:
        sync(device)
        t0 = time.perf_counter()
        out = torch.cat([learner.predict_features(support[i:i + batch], support_y[i:i + batch],
                                                  query[i:i + batch], args.n_way)
                         for i in range(0, args.episodes, batch)])
        sync(device)
        return out, time.perf_counter() - t0

    fit(min(args.batch_size, args.episodes))  # warm-up
    batched, batched_s = fit(args.batch_size)
    single, single_s = fit(1)
    diff = float((batched - single).abs().max())
    agree = float((batched.argmax(-1) == single.argmax(-1)).float().mean())
    acc = [float((x.argmax(-1) == query_y).float().mean()) for x in (batched, single)]
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "torch": torch.__version__,
        "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
        "episodes": args.episodes, "task": f"{args.n_way}-way {args.n_shot}-shot, {args.n_query} queries/class",
        "backbone": f"Conv4 (frozen, random weights), feature_dim {backbone.feature_dim}", "head": "linear",
        "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "embed_seconds": embed_s,
        "batched_episodes_per_s": args.episodes / batched_s, "single_episodes_per_s": args.episodes / single_s,
        "speedup": single_s / batched_s, "max_abs_logit_diff": diff, "prediction_agreement": agree,
        "accuracy_batched": acc[0], "accuracy_single": acc[1],
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Fine-tune evaluation: batched head fitting vs one episode at a time", "",
             *(f"- {k}: `{v:.4g}`" if isinstance(v, float) else f"- {k}: `{v}`" for k, v in result.items())]
    for name, text in (("finetune_eval.json", json.dumps(result, indent=2) + "\n"),
                       ("finetune_eval.md", "\n".join(lines) + "\n")):
        atomic_write_text(out / name, text)


if __name__ == "__main__":
    main()
