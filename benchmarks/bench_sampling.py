"""Episodes per second from the decoded cache on CPU: EpisodeSampler against a plain Python sampler.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_sampling.py            # writes benchmarks/results/sampling.{md,json}
    PYTHONPATH=. python benchmarks/bench_sampling.py --seconds 0.5 --no-write   # a quick look

Cases, for Omniglot 5-way 1-shot 15-query, Omniglot 20-way 5-shot 15-query (the Vinyals train
split, 4112 classes x 20 images of 1x28x28; a random stand-in of that shape if the loader is
unavailable) and a synthetic Mini-ImageNet (64 classes x 3x84x84) 5-way 5-shot 15-query:

- ``batch(B)``: ``EpisodeSampler.batch`` on B consecutive episode ids (B = 1, 32, 256);
- ``indices(256)``: only the episode rows, no pixels (the sampling cost itself);
- ``getitem``: ``sampler[i]`` one episode at a time;
- ``DataLoader(w)``: ``DataLoader(sampler, batch_size=32, num_workers=w, collate_fn=EpisodeBatch.stack)``;
- ``python loop``: what a typical user writes: ``random.sample`` of classes and images, then
  ``torch.stack`` of the images of each episode and ``to_float``.

Every case produces float episodes (``dataset.to_float``) so they do the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import LEARN2LEARN_BUILD, import_learn2learn

from episodes import Episode, EpisodeBatch, FewShotDataset
from episodes.files import atomic_write_text
from episodes.sampler import EpisodeSampler

RESULTS = Path(__file__).resolve().parent / "results"

def omniglot_train() -> tuple[FewShotDataset, str]:
    try:
        from episodes.datasets import load_omniglot
        return load_omniglot(split="train"), "load_omniglot(split='train') (Vinyals train, embedded copy)"
    except (ImportError, FileNotFoundError, ValueError) as err:
        print(f"load_omniglot unavailable ({err}); using a random stand-in of the same shape", file=sys.stderr)
        return synthetic(4112, 20, (1, 28, 28), "omniglot-like"), "synthetic 4112 classes x 20 x 1x28x28"


def synthetic(num_classes: int, per_class: int, shape: tuple[int, ...], name: str) -> FewShotDataset:
    images = torch.randint(0, 256, (num_classes * per_class, *shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(num_classes)], name=name,
                                       mean=(0.485, 0.456, 0.406)[: shape[0]], std=(0.229, 0.224, 0.225)[: shape[0]])


def python_loop_episode(dataset: FewShotDataset, n_way: int, n_shot: int, n_query: int, r: random.Random) -> Episode:
    """The per-episode sampler most users write (random.sample + torch.stack)."""
    offsets = dataset.offsets.tolist()
    classes = r.sample(range(dataset.num_classes), n_way)
    support, query = [], []
    for c in classes:
        rows = r.sample(range(offsets[c], offsets[c + 1]), n_shot + n_query)
        support += [dataset.images[i] for i in rows[:n_shot]]
        query += [dataset.images[i] for i in rows[n_shot:]]
    ways = torch.arange(n_way)
    return Episode(support_x=dataset.to_float(torch.stack(support)), support_y=ways.repeat_interleave(n_shot),
                   query_x=dataset.to_float(torch.stack(query)), query_y=ways.repeat_interleave(n_query),
                   classes=torch.tensor(classes), episode_id=0)


def learn2learn_taskset(source: Path, dataset: FewShotDataset, n_way: int, shots: int) -> Callable[[], int]:
    """A step that samples one learn2learn episode (see peers.LEARN2LEARN_BUILD for how ``source`` is built)."""
    l2l_data = import_learn2learn(source).data
    from learn2learn.data.transforms import ConsecutiveLabels, KShots, LoadData, NWays, RemapLabels

    offsets = dataset.offsets.tolist()
    meta = l2l_data.MetaDataset(torch.utils.data.TensorDataset(dataset.images, dataset.labels),
                                labels_to_indices={c: list(range(offsets[c], offsets[c + 1]))
                                                   for c in range(dataset.num_classes)})
    transforms = [NWays(meta, n_way), KShots(meta, shots), LoadData(meta), RemapLabels(meta), ConsecutiveLabels(meta)]
    taskset = l2l_data.Taskset(meta, task_transforms=transforms, num_tasks=-1)

    def step() -> int:
        images, _ = taskset.sample()
        dataset.to_float(images)
        return 1

    return step


def rate(step: Callable[[], int], seconds: float) -> dict[str, float]:
    """Episodes per wall-clock second, and per CPU second of this process (all its threads; DataLoader
    workers not included), of ``step`` (which returns how many episodes it made), after one warm-up call.
    The CPU rate is the steadier figure when other jobs share the machine."""
    step()
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        done += step()
    return {"wall": done / (time.perf_counter() - start), "cpu": done / max(time.process_time() - cpu, 1e-9)}


def bench_shape(dataset: FewShotDataset, n_way: int, n_shot: int, n_query: int, seconds: float,
                learn2learn: Path | None) -> dict[str, dict[str, float]]:
    sampler = EpisodeSampler(dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=0, num_episodes=10**9)
    results: dict[str, dict[str, float]] = {}
    next_id = 0

    def ids(size: int) -> torch.Tensor:
        nonlocal next_id
        next_id += size
        return torch.arange(next_id - size, next_id)

    for size in (1, 32, 256):
        results[f"batch({size})"] = rate(lambda s=size: sampler.batch(ids(s)).n_tasks, seconds)
    results["indices(256)"] = rate(lambda: len(sampler.indices(ids(256))[2]), seconds)
    single = iter(range(10**9))
    results["getitem"] = rate(lambda: sampler[next(single)].classes.shape[0] // n_way, seconds)
    for workers in (0, 2):
        finite = EpisodeSampler(dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=0, num_episodes=10**6)
        loader = iter(torch.utils.data.DataLoader(finite, batch_size=32, num_workers=workers,
                                                  collate_fn=EpisodeBatch.stack, persistent_workers=workers > 0))
        results[f"DataLoader({workers} workers, batch 32)"] = rate(lambda it=loader: next(it).n_tasks, seconds)
        del loader
    r = random.Random(0)
    results["python loop (random.sample + torch.stack)"] = rate(
        lambda: python_loop_episode(dataset, n_way, n_shot, n_query, r).classes.shape[0] // n_way, seconds)
    if learn2learn is not None:
        results["learn2learn 0.2.0 Taskset"] = rate(learn2learn_taskset(learn2learn, dataset, n_way, n_shot + n_query),
                                                    seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    parser.add_argument("--mini-per-class", type=int, default=600, help="images per synthetic Mini-ImageNet class")
    parser.add_argument("--learn2learn-src", type=Path, default=None,
                        help="a learn2learn 0.2.0 source tree with its extensions built in place (see sampling.md)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    omniglot, omniglot_source = omniglot_train()
    mini = synthetic(64, args.mini_per_class, (3, 84, 84), "mini-imagenet-like")
    shapes = [("Omniglot 5-way 1-shot 15-query", omniglot, 5, 1, 15),
              ("Omniglot 20-way 5-shot 15-query", omniglot, 20, 5, 15),
              ("Mini-ImageNet (synthetic) 5-way 5-shot 15-query", mini, 5, 5, 15)]
    report = {
        "command": "PYTHONPATH=. python benchmarks/bench_sampling.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor(),
        "load_average_at_start": os.getloadavg()[0], "omniglot_source": omniglot_source,
        "mini_imagenet_source": f"synthetic 64 classes x {args.mini_per_class} x 3x84x84 uint8",
        "seconds_per_case": args.seconds, "learn2learn": LEARN2LEARN_BUILD, "episodes_per_second": {},
    }
    for title, dataset, n_way, n_shot, n_query in shapes:
        print(f"{title}:", flush=True)
        results = bench_shape(dataset, n_way, n_shot, n_query, args.seconds, args.learn2learn_src)
        report["episodes_per_second"][title] = results
        for case, value in results.items():
            print(f"  {case:45s} {value['wall']:10,.0f} episodes/s {value['cpu']:10,.0f} per CPU-s", flush=True)
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "sampling.json", json.dumps(report, indent=2) + "\n")
    cases = list(next(iter(report["episodes_per_second"].values())))
    lines = ["# Episode sampling throughput (CPU, episodes per second)", "",
             f"Command: `{report['command']}`  ",
             f"torch {report['torch']}, Python {report['python']}, {report['cpu_cores']} CPU cores "
             f"({report['torch_threads']} torch threads), {report['machine']}.  ",
             f"Omniglot: {omniglot_source}. Mini-ImageNet: {report['mini_imagenet_source']}.  ",
             f"{args.seconds:g} s per case after one warm-up call; every case yields float episodes. "
             f"1-minute load average at start: {report['load_average_at_start']:.1f} "
             "(above the core count means other jobs shared the machine).", "",
             "Each cell: episodes per wall-clock second / per CPU second of the benchmark process (the CPU "
             "figure excludes DataLoader worker processes, so it is not comparable for `DataLoader(2 workers)`).", "",
             "| case | " + " | ".join(report["episodes_per_second"]) + " |",
             "|---|" + "---:|" * len(shapes)]
    for case in cases:
        cells = [report["episodes_per_second"][t][case] for t, *_ in shapes]
        lines.append(f"| {case} | " + " | ".join(f"{c['wall']:,.0f} / {c['cpu']:,.0f}" for c in cells) + " |")
    lines += ["", "## learn2learn", "", LEARN2LEARN_BUILD]
    atomic_write_text(RESULTS / "sampling.md", "\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'sampling.md'} and sampling.json")


if __name__ == "__main__":
    main()
