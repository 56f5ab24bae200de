"""The transfer-learning study on Omniglot, one command: feature extraction, linear probe, fine-tuning (last stage,
all) and meta-training (ProtoNet, MAML) from one pretrained Conv4, each against the same from scratch.

Pretraining and meta-training use the 30 background alphabets (Lake split); every learner is tested on the same
seeded episodes of the 20 evaluation alphabets (near domain) and of the same drawings inverted and blurred (domain
shift, see :mod:`episodes.domain_shift` for why), at 1, 5, 10 and 15 shots (Omniglot has 20 drawings per
character, so 15 shots leave 5 queries per class; 20 shots would leave none). Negative transfer (pretrained worse
than scratch) is flagged with paired t-tests on identical episodes, Holm-adjusted over the study. The study itself
is :func:`fewshot.training.transfer_study.transfer_study`; this script loads the data and writes the report.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/transfer_study.py    # writes benchmarks/results/transfer_study/

Every budget is a flag (``--help``), e.g. a smoke run: ``--episodes 20 --pretrain-epochs 1 --protonet-steps 5
--maml-steps 5 --out /tmp/transfer_smoke``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import typing
from pathlib import Path

import torch

from episodes.datasets import load_omniglot
from episodes.domain_shift import shift_domain
from fewshot.allocator import tune_allocator
from fewshot.backbones import create_backbone
from fewshot.evaluation import collect_provenance
from fewshot.evaluation.transfer import write_transfer_report
from fewshot.training.transfer_study import StudySettings, check_study_data, transfer_study

RESULTS = Path(__file__).resolve().parent / "results" / "transfer_study"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Formatter)
    hints = typing.get_type_hints(StudySettings)
    for field in dataclasses.fields(StudySettings):
        flag, help_text = "--" + field.name.replace("_", "-"), "see StudySettings"
        if typing.get_origin(hints[field.name]) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(hints[field.name]), default=field.default, help=help_text)
        elif field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        elif field.name == "shots":
            parser.add_argument(flag, type=int, nargs="+", default=list(field.default), help=help_text)
        else:
            parser.add_argument(flag, type=int if field.type == "int" else float, default=field.default,
                                help=help_text)
    parser.add_argument("--blur-sigma", type=float, default=1.0, help="Gaussian blur of the shifted domain (pixels)")
    parser.add_argument("--root", type=Path, default=None, help="Omniglot folder (default: the embedded copy)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (
            device.type == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"--device {name} is not available here; use cpu, or cuda[:index] on a machine with a GPU")
    return device


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = {f.name for f in dataclasses.fields(StudySettings)}
    try:
        settings = StudySettings(**{k: tuple(v) if k == "shots" else v for k, v in vars(args).items() if k in names})
        train = load_omniglot(split="background", protocol="lake", root=args.root)
        near = load_omniglot(split="evaluation", protocol="lake", root=args.root)
        shifted = shift_domain(near, invert=True, blur_sigma=args.blur_sigma)
        check_study_data(train, [near, shifted], settings)
        device = _device(args.device)
    except (ValueError, FileNotFoundError) as err:  # bad flags or data: one line, exit status 2, nothing written
        sys.stderr.write(f"transfer_study.py: {str(err).splitlines()[0]}\n")
        raise SystemExit(2) from None
    tune_allocator()  # glibc's thresholds as the fewshot apps set them for their process (fewshot/allocator.py)
    torch.manual_seed(settings.seed)
    backbone = create_backbone("conv4", in_channels=1)
    outcome = transfer_study(backbone, train, [near, shifted], settings=settings, device=device,
                             progress=args.progress)
    cpu, wall = outcome.cpu_seconds, outcome.wall_seconds
    phase_cpu = {phase: sum(v for k, v in cpu.items() if k.startswith(phase)) for phase in ("pretrain", "meta-train",
                                                                                            "test")}
    flags = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/transfer_study.py {flags}"
    history = outcome.pretrain_history[-1]
    notes = [
        f"command: `{command.strip()}`",
        f"train: {train.name} ({train.num_classes} characters, {len(train)} drawings); test: {near.name} (near domain) "
        f"and {shifted.name} (the same drawings blurred with sigma {args.blur_sigma:g} px and inverted)",
        f"backbone: Conv4, pretrained {settings.pretrain_epochs} epochs (final training accuracy "
        f"{100 * history['accuracy']:.1f}%); scratch = its random initialisation with batch-norm statistics of the "
        "training images",
        f"{settings.episodes} seeded episodes per setting (seed {settings.eval_seed}), {settings.n_way}-way, "
        f"{settings.n_query} queries per class, identical for every learner and both test domains",
        f"CPU time (user + system, one process, {torch.get_num_threads()} torch threads): pretraining "
        f"{phase_cpu['pretrain']:.0f} s, meta-training {phase_cpu['meta-train']:.0f} s, testing "
        f"{phase_cpu['test']:.0f} s, total {sum(cpu.values()):.0f} s; elapsed {sum(wall.values()):.0f} s, load average "
        f"{os.getloadavg()[0]:.1f} at the end; {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}",
    ]
    extra = {"settings": dataclasses.asdict(settings), "blur_sigma": args.blur_sigma,
             "pretrain_history": outcome.pretrain_history, "cpu_seconds": cpu, "wall_seconds": wall}
    provenance = collect_provenance(config={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    seed=settings.seed, device=args.device, test_set=near)
    for path in write_transfer_report(args.out, outcome.results, outcome.tests, provenance=provenance,
                                      title="Transfer learning on Omniglot: pretrained versus scratch (Conv4)",
                                      notes=notes, extra=extra):
        logging.info("wrote %s", path)


if __name__ == "__main__":
    main()
