"""Embedding speed against the chunk size: milliseconds per image of a backbone in eval mode (no gradients), for the
``embed_chunk`` argument of the evaluation harness (default: :func:`fewshot.evaluation.frame.default_embed_chunk`).

Cases: Conv4 on 1x28x28 (Omniglot: 4096 images, chunks up to 1024) and ResNet-12 on 3x84x84 (Mini-ImageNet: 256
images, chunks up to 256, as it is about 100 times slower per image), random weights and images (speed does not
depend on them), 1 and 2 torch threads. Each (case, threads, chunk) embeds the same images after one warm-up chunk;
the rounds alternate over the chunk sizes so that drift in the machine's speed hits them alike; the table gives the
median over rounds and each chunk's speed-up over the case's largest chunk (what the harness did before
``default_embed_chunk``: chunks of 1024, so one pass for 256 images).

    PYTHONPATH=. python benchmarks/bench_embed_chunk.py [--rounds 3]

Writes benchmarks/results/embed_chunk.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.files import atomic_write_text
from fewshot.backbones import create_backbone

RESULTS = Path(__file__).resolve().parent / "results"
CHUNKS = (32, 64, 128, 256, 512, 1024)
#: case -> (create_backbone keywords, image shape, images embedded per measurement, chunk sizes)
CASES = {"Conv4, 1x28x28": (dict(name="conv4", in_channels=1, hidden=64, input_size=28), (1, 28, 28), 4096, CHUNKS),
         "ResNet-12, 3x84x84": (dict(name="resnet12", in_channels=3, input_size=84), (3, 84, 84), 256, CHUNKS[:4])}


def ms_per_image(net: torch.nn.Module, images: torch.Tensor, chunk: int) -> float:
    """Milliseconds per image to embed ``images`` (N, C, H, W) in chunks of ``chunk``, after one warm-up chunk."""
    with torch.inference_mode():
        net(images[:chunk])
        start = time.perf_counter()
        for i in range(0, len(images), chunk):
            net(images[i:i + chunk])
    return (time.perf_counter() - start) / len(images) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for case, (kwargs, shape, count, chunks) in CASES.items():
        torch.manual_seed(0)
        net = create_backbone(**kwargs).eval()
        images = torch.randn(count, *shape)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times: dict[int, list[float]] = {c: [] for c in chunks}
            for _ in range(args.rounds):
                for chunk in chunks:
                    times[chunk].append(ms_per_image(net, images, chunk))
            for chunk in chunks:
                rows.append({"case": case, "threads": threads, "chunk": chunk, "images": count,
                             "ms_per_image": statistics.median(times[chunk]), "rounds": times[chunk]})
                print(json.dumps(rows[-1]), flush=True)
    meta = {"command": "PYTHONPATH=. python benchmarks/bench_embed_chunk.py " + " ".join(sys.argv[1:]),
            "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
            "load_average_at_start": load, "load_average_at_end": os.getloadavg()[0]}
    out = ["# Embedding speed against the chunk size (CPU)", "", f"Command: `{meta['command']}`  ",
           f"torch {meta['torch']}, {meta['cpu_cores']} CPU cores; 1-minute load average {load:.1f} at start, "
           f"{meta['load_average_at_end']:.1f} at end. Milliseconds per image (median of {args.rounds} rounds), and "
           "in brackets the speed-up over the largest chunk (the harness used chunks of 1024 before "
           "`default_embed_chunk`; "
           "ResNet-12 is measured on 256 images, which that default embedded in one pass); `–`: not measured.", "",
           "| backbone, input | threads | " + " | ".join(str(c) for c in CHUNKS) + " |",
           "|---|---:|" + "---:|" * len(CHUNKS)]
    for case, (_, _, _, chunks) in CASES.items():
        for threads in (1, 2):
            mine = {r["chunk"]: r["ms_per_image"] for r in rows if r["case"] == case and r["threads"] == threads}
            out.append(f"| {case} | {threads} | " + " | ".join(
                f"{mine[c]:.3f} ({mine[chunks[-1]] / mine[c]:.2f}x)" if c in mine else "–" for c in CHUNKS) + " |")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "embed_chunk.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(args.out_dir / "embed_chunk.md", "\n".join(out) + "\n")
    print("wrote", args.out_dir / "embed_chunk.md")


if __name__ == "__main__":
    main()
