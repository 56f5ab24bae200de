"""easyfsl as a peer (issue 19): its ProtoNet, SimpleShot and TIM against this library's, on the same episodes.

Both sides use the committed pretrained Conv4 (``results/pretrained/conv4_omniglot_trainval``) on the Omniglot
Vinyals test split, fed as the weights were trained, and score the episodes the leaderboard scores
(``EpisodeSampler`` seed 2017, 15 queries per class). This library runs its harness (``evaluate``: each image
embedded once, ``--batch-size`` episodes per call); easyfsl runs its own per-episode step
(``easyfsl.utils.evaluate_on_one_task``: ``process_support_set`` then ``forward``, under ``no_grad`` as its
``evaluate`` loop), one episode at a time, the episode drawn from the same sampler inside the timed loop.

Hyper-parameters are shared: TIM's come from ``fewshot/configs/learner/tim.yaml`` (temperature, the three loss
weights, Adam steps and rate) and are passed to easyfsl's TIM with its features L2-normalised; SimpleShot is CL2N
(the ``simpleshot_omniglot`` experiment) with the same base-class mean given to easyfsl as ``feature_centering``.
What cannot be made equal is written in ``DIFFERENCES`` and in the report.

    OMP_NUM_THREADS=1 PYTHONPATH=. .ci-venv-interop/bin/python benchmarks/easyfsl_peer.py --threads 1

Needs easyfsl (``pip install easyfsl==1.5.0``, which needs torchvision: the ``.ci/interop`` environment).
Writes benchmarks/results/easyfsl_peer.md and .json (numbers from a busy machine are not comparable).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from episodes import EpisodeSampler, FewShotDataset  # noqa: E402
from episodes.files import atomic_write_text  # noqa: E402
from fewshot.backbones import load_backbone, normalise_for  # noqa: E402
from fewshot.evaluation import collect_provenance, evaluate  # noqa: E402
from fewshot.evaluation.metrics import mean_ci95, paired_comparison  # noqa: E402
from fewshot.learners import ProtoNet  # noqa: E402
from fewshot.learners.base import Learner  # noqa: E402
from fewshot.learners.finetune.tim import TIM  # noqa: E402
from fewshot.learners.metric.simpleshot import SimpleShot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS = RESULTS / "pretrained" / "conv4_omniglot_trainval" / "backbone.safetensors"
TIM_CONFIG = ROOT / "fewshot" / "configs" / "learner" / "tim.yaml"
METHODS = ("protonet", "simpleshot", "tim")
SEED, N_QUERY = 2017, 15  # the leaderboard's evaluation episodes
LEADERBOARD_RUNS = {"simpleshot": "simpleshot", "tim": "tim"}  # committed runs with this backbone and episodes
DIFFERENCES = {
    "protonet": "none in the maths: both score minus the Euclidean distance to the class means of the raw features "
                "(fewshot squared, through a matrix product; easyfsl `cdist`), the same ranking.",
    "simpleshot": "the same CL2N features and class means, scored by minus the Euclidean distance to the mean "
                  "(fewshot, as the authors' code) or by the cosine to it (easyfsl). In 1-shot the mean is a unit "
                  "vector and the two rankings are the same; in 5-shot the means are shorter than 1 and differ in "
                  "length, and the rankings may differ.",
    "tim": "the same objective weights, temperature, steps, Adam rate, L2-normalised features and starting weights "
           "(the class means); the classifier differs: fewshot's is the authors' -T/2 ||x - w||^2 (the weights' norm "
           "is free), easyfsl's is T cos(x, w) (the weights are renormalised in every step), so the two optimise "
           "different functions from the same start (equal logits up to a constant at the start in 1-shot only); "
           "easyfsl's support cross-entropy uses log_softmax and its marginal entropy no 1e-12 inside the log.",
}


def load_inputs() -> tuple[nn.Module, FewShotDataset]:
    """The pretrained Conv4 (eval mode) and the Omniglot Vinyals test split normalised as its weights were trained."""
    from episodes.datasets import load_omniglot

    backbone = load_backbone(WEIGHTS).eval()
    return backbone, normalise_for(load_omniglot(split="test"), backbone.spec)


def base_class_mean(backbone: nn.Module, train: FewShotDataset) -> torch.Tensor:
    """(D,) float32 mean feature of ``train`` (the base classes), as SimpleShot's ``fit_base_classes`` computes it."""
    learner = SimpleShot(backbone, feature_transform="CL2N").eval()  # fit_base_classes restores this mode
    learner.fit_base_classes(normalise_for(train, backbone.spec))
    return learner.base_mean.clone()


def tim_settings() -> dict[str, float | int]:
    """This library's TIM hyper-parameters, from its learner config."""
    config = yaml.safe_load(TIM_CONFIG.read_text())
    return {k: v for k, v in config.items() if k != "_target_"}


def build_pair(method: str, backbone: nn.Module, centre: torch.Tensor, *, tim_steps: int | None = None,
               ) -> tuple[Learner, nn.Module]:
    """This library's learner and easyfsl's model of ``method`` with the same hyper-parameters, both in eval mode.

    Args:
        method: one of ``METHODS``.
        backbone: shared by the fewshot learner; easyfsl gets a copy (its TIM freezes its backbone in place).
        centre: (D,) base-class mean for SimpleShot's CL2N.
        tim_steps: overrides the config's Adam steps of both TIMs (None: the config's).
    """
    from easyfsl import methods

    theirs = copy.deepcopy(backbone)
    if method == "protonet":
        return ProtoNet(backbone).eval(), methods.PrototypicalNetworks(theirs).eval()
    if method == "simpleshot":
        ours = SimpleShot(backbone, feature_transform="CL2N")
        ours.base_mean.copy_(centre)
        ours.base_count.fill_(1)
        return ours.eval(), methods.SimpleShot(theirs, feature_centering=centre, feature_normalization=2).eval()
    if method == "tim":
        kw = tim_settings() | ({} if tim_steps is None else {"steps": tim_steps})
        easy = methods.TIM(theirs, feature_normalization=2, fine_tuning_steps=kw["steps"], fine_tuning_lr=kw["lr"],
                           cross_entropy_weight=kw["ce_weight"], marginal_entropy_weight=kw["marginal_weight"],
                           conditional_entropy_weight=kw["conditional_weight"], temperature=kw["temperature"])
        return TIM(backbone, **kw).eval(), easy.eval()
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def fewshot_correct(learner: Learner, test: FewShotDataset, *, n_way: int, n_shot: int, episodes: int,
                    batch_size: int) -> tuple[torch.Tensor, float]:
    """(episodes,) int64 correct queries per episode through this library's harness, and its wall seconds."""
    start = time.perf_counter()
    result = evaluate({"fewshot": learner}, test, n_way=n_way, n_shot=n_shot, n_query=N_QUERY, episodes=episodes,
                      seed=SEED, batch_size=batch_size, progress=False, permutations=0)["fewshot"]
    seconds = time.perf_counter() - start
    return (result.accuracies * n_way * N_QUERY).round().to(torch.int64), seconds


def easyfsl_correct(model: nn.Module, test: FewShotDataset, *, n_way: int, n_shot: int, episodes: int,
                    ) -> tuple[torch.Tensor, float]:
    """(episodes,) int64 correct queries per episode with easyfsl's per-episode step, and the loop's wall seconds."""
    from easyfsl.utils import evaluate_on_one_task

    sampler = EpisodeSampler(test, n_way=n_way, n_shot=n_shot, n_query=N_QUERY, seed=SEED, num_episodes=episodes)
    correct = torch.zeros(episodes, dtype=torch.int64)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(episodes):
            e = sampler.batch([i])
            correct[i] = evaluate_on_one_task(model, e.support_x[0], e.support_y[0], e.query_x[0], e.query_y[0])[0]
    return correct, time.perf_counter() - start


def compare(ours: torch.Tensor, theirs: torch.Tensor, queries: int) -> dict[str, object]:
    """Accuracy of each side (mean, 95% CI), the paired t-test of fewshot - easyfsl and per-episode agreement."""
    a, b = ours.double() / queries, theirs.double() / queries
    paired = paired_comparison(a, b, wilcoxon=False)
    return {"fewshot": mean_ci95(a), "easyfsl": mean_ci95(b), "difference": paired.mean_difference,
            "difference_ci95": (paired.ci95_low, paired.ci95_high), "p_value": paired.p_value,
            "episodes_differing": int((ours != theirs).sum()),
            "largest_episode_difference": float((a - b).abs().max())}


def leaderboard_agreement(method: str, n_way: int, n_shot: int, ours: torch.Tensor) -> int | None:
    """How many of this library's episodes equal the committed leaderboard run's (None: no such run)."""
    run = LEADERBOARD_RUNS.get(method)
    if run is None:
        return None
    results = json.loads((RESULTS / "omniglot_accuracy" / run / "results.json").read_text())["results"]
    row = next(r for r in results if (r["spec"]["n_way"], r["spec"]["n_shot"]) == (n_way, n_shot))
    committed = torch.tensor(row["learners"][0]["accuracies"][: len(ours)]) * n_way * N_QUERY
    return int((committed.round().to(torch.int64) == ours).sum())


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"5w1s,5w5s"`` -> [(5, 1), (5, 5)]."""
    try:
        return [(int(w), int(s)) for w, s in (part.strip().rstrip("s").split("w") for part in text.split(","))]
    except ValueError:
        raise SystemExit(f"--settings {text!r}: expected e.g. 5w1s,5w5s") from None


def markdown(record: dict) -> str:
    rows = []
    for r in record["rows"]:
        c = r["comparison"]
        board = "" if r["leaderboard_equal"] is None else f"{r['leaderboard_equal']}/{r['episodes']}"
        rows.append(
            f"| {r['method']} | {r['n_way']}w{r['n_shot']}s | {r['episodes']} "
            f"| {100 * c['fewshot'][0]:.2f} ± {100 * c['fewshot'][1]:.2f} "
            f"| {100 * c['easyfsl'][0]:.2f} ± {100 * c['easyfsl'][1]:.2f} "
            f"| {round(100 * c['difference'], 2) + 0.0:+.2f} (p={c['p_value']:.2g}) | {c['episodes_differing']} "
            f"| {100 * c['largest_episode_difference']:.1f} | {board} "
            f"| {r['fewshot_episodes_per_s']:.1f} | {r['easyfsl_episodes_per_s']:.2f} | **{r['speed_ratio']:.1f}x** |")
    notes = "".join(f"- **{m}**: {DIFFERENCES[m]}\n" for m in record["methods"])
    return (
        "# easyfsl as a peer: ProtoNet, SimpleShot, TIM on the same episodes\n\n"
        f"easyfsl {record['versions']['easyfsl']} against fewshot {record['versions']['fewshot']} (torch "
        f"{record['versions']['torch']}), the committed pretrained Conv4, Omniglot Vinyals test split, "
        f"episodes of `EpisodeSampler` seed {SEED} with {N_QUERY} queries per class (the leaderboard's), "
        f"{record['threads']} torch thread(s) (OMP_NUM_THREADS={record['omp_num_threads']}), load average "
        f"{record['load_average_start']:.2f} at the start and {record['load_average_end']:.2f} at the end "
        f"({os.cpu_count()} CPUs, shared). fewshot: the harness, {record['batch_size']} episodes per call, each "
        "image embedded once; easyfsl: `evaluate_on_one_task` one episode at a time (what its `evaluate` loops), "
        "the episode drawn from the same sampler inside the timed loop. Both timings include sampling and "
        "embedding (SimpleShot's base-class mean, computed once on the 4800 training classes and given to both, "
        "does not count). ProtoNet here is nearest class mean on this pretrained backbone (no meta-training), "
        "so its row compares implementations, not the leaderboard's meta-trained ProtoNet.\n\n"
        "| method | setting | episodes | fewshot acc. (%) | easyfsl acc. (%) | difference, paired t | episodes "
        "differing | largest episode diff. (pts) | fewshot = leaderboard run | fewshot episodes/s "
        "| easyfsl episodes/s | speed ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\n"
        "Speed ratio: easyfsl's seconds per episode over fewshot's. `fewshot = leaderboard run`: episodes whose "
        "fewshot accuracy equals the committed run's (`omniglot_accuracy/<method>/results.json`, torch 2.13), "
        f"which checks that the episodes are the leaderboard's. {record['tim_note']}\n\n"
        "What differs between the implementations:\n\n" + notes
        + f"\nCommand: `{record['command']}`\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--tim-episodes", type=int, default=1000, help="fewer episodes for TIM (easyfsl is slow)")
    parser.add_argument("--tim-steps", type=int, default=None, help="Adam steps of both TIMs (default: the config's)")
    parser.add_argument("--settings", default="5w1s,5w5s", help="comma-separated NwKs settings")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=50, help="episodes per call of the fewshot harness")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (set OMP_NUM_THREADS to match)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for easyfsl_peer.md and .json")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    backbone, test = load_inputs()
    centre = torch.zeros(backbone.feature_dim)
    if "simpleshot" in methods:
        from episodes.datasets import load_omniglot
        centre = base_class_mean(backbone, load_omniglot(split="trainval"))
    rows = []
    for method in methods:
        ours, theirs = build_pair(method, backbone, centre, tim_steps=args.tim_steps)
        episodes = args.tim_episodes if method == "tim" else args.episodes
        for n_way, n_shot in parse_settings(args.settings):
            shape = {"n_way": n_way, "n_shot": n_shot, "episodes": episodes}
            a, t_a = fewshot_correct(ours, test, batch_size=args.batch_size, **shape)
            b, t_b = easyfsl_correct(theirs, test, **shape)
            as_committed = method != "tim" or args.tim_steps is None  # the committed TIM ran the config's steps
            rows.append(shape | {
                "method": method, "comparison": compare(a, b, n_way * N_QUERY),
                "leaderboard_equal": leaderboard_agreement(method, n_way, n_shot, a) if as_committed else None,
                "fewshot_seconds": t_a, "easyfsl_seconds": t_b, "fewshot_episodes_per_s": episodes / t_a,
                "easyfsl_episodes_per_s": episodes / t_b, "speed_ratio": t_b / t_a,
                "fewshot_correct": a.tolist(), "easyfsl_correct": b.tolist()})
            print(f"{method:>10} {n_way}w{n_shot}s: {rows[-1]['comparison']}  fewshot {t_a:.1f} s, easyfsl {t_b:.1f} s",
                  flush=True)
    tim_steps = tim_settings()["steps"] if args.tim_steps is None else args.tim_steps
    record = {
        "benchmark": "easyfsl peer: ProtoNet, SimpleShot (CL2N), TIM on the pretrained Conv4, Omniglot test episodes",
        "command": "OMP_NUM_THREADS={} PYTHONPATH=. .ci-venv-interop/bin/python benchmarks/easyfsl_peer.py {}".format(
            os.environ.get("OMP_NUM_THREADS", "<unset>"), " ".join(sys.argv[1:])).strip(),
        "versions": {"easyfsl": version("easyfsl"), "fewshot": version("fewshot"), "torch": torch.__version__},
        "methods": methods, "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "batch_size": args.batch_size, "seed": SEED, "n_query": N_QUERY, "tim_settings": tim_settings() | {
            "steps": tim_steps},
        "tim_note": (f"TIM: {args.tim_episodes} episodes per setting, {tim_steps} Adam steps."
                     if "tim" in methods else ""),
        "differences": {m: DIFFERENCES[m] for m in methods},
        "load_average_start": load_start, "load_average_end": os.getloadavg()[0], "rows": rows,
        "provenance": collect_provenance(config={k: str(v) for k, v in vars(args).items()}, seed=SEED, device="cpu"),
    }
    text = re.sub(r"\[[\d,\s]+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]",
                  json.dumps(record, indent=1))  # one line per list of per-episode counts
    atomic_write_text(args.out / "easyfsl_peer.json", text + "\n")
    atomic_write_text(args.out / "easyfsl_peer.md", markdown(record))


if __name__ == "__main__":
    main()
