"""Command-line apps (Hydra): ``fewshot-train``, ``fewshot-eval``, ``fewshot-pretrain`` and ``fewshot-report``.

The commands of the app layer (with :mod:`fewshot.hydra_app`: entry points, error guard, run folders; and
:mod:`fewshot.app_config`: config nodes to the library's objects), and only wiring: instantiate the ``_target_`` s
(dataset loader, backbone, learner, trainer), turn the rest into typed values and call the library. Every run
writes to its own directory (``runs/<name>/<time>/`` by default): the composed config (``config.yaml`` resolved,
``.hydra/``), the log, ``metrics.csv``, ``checkpoints/`` and the test results (``results.{json,csv,md}``, plots).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from episodes import FewShotDataset
from episodes.episode_file import EpisodesFile
from episodes.files import atomic_write_text
from fewshot.app_config import (
    VARIABLE_ACCURACY_TAG,
    accuracy_tag,
    build_learner,
    device_of,
    episodes_file_of,
    load_split,
    open_tensorboard,
    tensorboard_wanted,
    variable_shape_of,
)
from fewshot.backbones import save_backbone
from fewshot.evaluation import (
    EvaluationResult,
    check_same_test_data,
    check_settings,
    check_test_set,
    check_variable,
    collect_provenance,
    different_copies,
    evaluate_settings,
    evaluate_variable,
    gather_results,
    markdown_table,
    plot_learning_curve,
    write_results,
)
from fewshot.evaluation.cross_domain import cross_domain_report
from fewshot.evaluation.ledger import ledger_entry
from fewshot.evaluation.runs import gather_by_training_data, load_runs
from fewshot.hydra_app import app_main, in_processes, output_dir, record
from fewshot.learners import Learner
from fewshot.training import EpisodeShape, Run, SupervisedPretrainer, Trainer, TrainingData, check_resume
from fewshot.training.checkpoint import load_checkpoint, load_state_exactly
from fewshot.training.distributed import DistributedContext, RankShards
from fewshot.training.meta_train import write_rows_csv
from fewshot.training.tensorboard import TensorBoardLog

log = logging.getLogger("fewshot")


def _check_tests(learner: Learner, cfg: DictConfig, test_set: FewShotDataset) -> None:
    """Refuse a test that would fail, before a training or a re-test writes anything: every (n_way, n_shot)
    setting of ``cfg.evaluation`` and its variable episodes (a learner that cannot score them is named)."""
    e = cfg.evaluation
    shape = variable_shape_of(cfg)
    if e.settings or shape is None:
        check_settings({cfg.name: learner}, test_set, settings=[(int(w), int(k)) for w, k in e.settings],
                       n_query=e.n_query, episodes=e.episodes, batch_size=e.batch_size)
    if shape is not None:
        check_variable({cfg.name: learner}, test_set, shape=shape, episodes=e.episodes)


def _evaluate(learner: Learner, cfg: DictConfig, test_set: FewShotDataset, device: torch.device,
              train_name: str | None, ctx: DistributedContext | None = None,
              episodes_file: EpisodesFile | None = None) -> list[EvaluationResult]:
    """Score ``learner`` on every (n_way, n_shot) setting of ``cfg.evaluation`` over fixed episodes, seeded or
    read from ``episodes_file``, then on its variable episodes if any (shared by the processes of ``ctx`` in a
    distributed run: the same numbers)."""
    e = cfg.evaluation
    shards = RankShards(ctx) if ctx is not None else None
    results = evaluate_settings({cfg.name: learner}, test_set, settings=[(int(w), int(k)) for w, k in e.settings],
                                n_query=e.n_query, episodes=e.episodes, seed=e.seed, batch_size=e.batch_size,
                                device=device, progress=cfg.progress and ctx is None, train_dataset=train_name,
                                shards=shards, episodes_file=episodes_file) if e.settings else []
    shape = variable_shape_of(cfg)
    if shape is not None:
        results.append(evaluate_variable({cfg.name: learner}, test_set, shape=shape, episodes=e.episodes, seed=e.seed,
                                         device=device, progress=cfg.progress and ctx is None,
                                         train_dataset=train_name, shards=shards))
    return results


def _report(out_dir: Path, results: list[EvaluationResult], cfg: DictConfig, device: torch.device,
            test_set: FewShotDataset, history: list[dict[str, float]] | None = None,
            tensorboard: TensorBoardLog | None = None) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("ledger") is not None:  # the experiment's published numbers: every table marks its cells against them
        results = [dataclasses.replace(r, learners=tuple(dataclasses.replace(x, ledger=cfg.ledger) for x in r.learners))
                   for r in results]
    write_results(out_dir, results, collect_provenance(config=config, seed=cfg.seed, device=str(device),
                                                       test_set=test_set))
    if history:
        plot_learning_curve(out_dir / "learning_curve.png", history)
    if tensorboard is not None:
        tensorboard.write_scalars("test", {accuracy_tag(r.spec.n_way, r.spec.n_shot) if r.spec.variable is None
                                           else VARIABLE_ACCURACY_TAG: x.mean for r in results for x in r.learners})
        tensorboard.write_images("plots", sorted(out_dir.glob("*.png")))
    log.info("results (%% accuracy, 95%% CI over %d episodes) in %s:\n%s", cfg.evaluation.episodes, out_dir,
             markdown_table(results))


def train(cfg: DictConfig) -> None:
    """Train the learner with the trainer of ``cfg.trainer``, then test it; see ``configs/train.yaml``.
    With ``trainer.distributed=true`` under torchrun or srun, every process runs this; rank 0 writes the files."""
    if cfg.get("ledger") is not None:
        ledger_entry(cfg.ledger)  # an unknown id is refused before anything runs
    tensorboard_wanted(cfg)  # logging.tensorboard=true without the package is refused before anything runs
    trainer: Trainer = hydra.utils.instantiate(cfg.trainer, _convert_="all")
    in_processes(trainer.distributed, functools.partial(_train, cfg, trainer))


def _train(cfg: DictConfig, trainer: Trainer, ctx: DistributedContext | None) -> None:
    writer = ctx is None or ctx.is_main
    with output_dir() if writer else nullcontext(Path(HydraConfig.get().runtime.output_dir)) as run_dir:
        config = OmegaConf.to_container(cfg, resolve=True)
        check_resume(run_dir, config)  # refuse before anything in the run directory is written
        run = Run(run_dir, config, cfg.seed, ctx.device if ctx is not None else device_of(cfg.device), cfg.progress,
                  ctx, backbone_pretrained=cfg.backbone_weights is not None)
        _train_in(cfg, trainer, run)


def _train_in(cfg: DictConfig, trainer: Trainer, run: Run) -> None:
    train_set, val_set, test_set = (load_split(cfg.dataset, role) for role in ("train", "val", "test"))
    if train_set is None or test_set is None:
        raise ValueError("dataset.splits.train and dataset.splits.test must name class splits")
    learner, (train_set, val_set, test_set) = build_learner(cfg, run.device, train_set, val_set, test_set)
    ep = cfg.episode
    data = TrainingData(train=train_set, train_episode=EpisodeShape(ep.train_n_way, ep.train_n_shot, ep.train_n_query),
                        val=val_set, val_episode=EpisodeShape(ep.n_way, ep.n_shot, ep.n_query),
                        val_seed=cfg.evaluation.seed + 1, eval_batch_size=cfg.evaluation.batch_size)
    _check_tests(learner, cfg, test_set)  # a test that would fail is refused before the training, not after it
    episodes_file = episodes_file_of(cfg, test_set)
    learner.check_ways(data.train_episode.n_way)
    if run.writer:  # every check passed (the data, the weights, the tests): the run folder is written from here on
        record(cfg, run.run_dir)
        OmegaConf.save(cfg, run.run_dir / "config.yaml", resolve=True)  # what fewshot-eval reads back
    tensorboard = open_tensorboard(cfg, run)
    with tensorboard or nullcontext():
        history = trainer.fit(learner, data, dataclasses.replace(run, tensorboard=tensorboard))
        results = _evaluate(learner, cfg, test_set, run.device, train_set.name, run.ctx, episodes_file)
        if run.writer:
            _report(run.run_dir, results, cfg, run.device, test_set, history, tensorboard)


def _run_config(run: Path) -> DictConfig:
    """The resolved config a ``fewshot-train`` run saved (``config.yaml``; ``.hydra/config.yaml`` for older runs)."""
    for saved in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if saved.is_file():
            try:
                return OmegaConf.load(saved)
            except yaml.YAMLError as err:
                raise ValueError(f"{saved} is not readable YAML ({str(err).splitlines()[0]}); it was edited or "
                                 "damaged: restore it, or retrain the run") from err
    raise FileNotFoundError(f"{run} is not a fewshot-train run directory (no config.yaml); pass run=<the directory "
                            "a training run printed>")


def evaluate_run(cfg: DictConfig) -> None:
    """Re-test a ``fewshot-train`` run from its checkpoint, on its own test classes or (cross-domain) on
    ``cfg.test_dataset``; see ``configs/eval.yaml``."""
    with output_dir() as out_dir:
        _evaluate_run(cfg, out_dir)


def _evaluate_run(cfg: DictConfig, out_dir: Path) -> None:
    run = Path(hydra.utils.to_absolute_path(cfg.run))
    train_cfg = _run_config(run)
    for key, value in cfg.evaluation.items():
        if value is not None:
            train_cfg.evaluation[key] = value
    train_cfg.progress = cfg.progress
    device = device_of(cfg.device)
    ckpt = run / "checkpoints" / f"{cfg.checkpoint}.ckpt"
    if not ckpt.is_file():
        ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run} has no checkpoints/last.ckpt: the training run did not finish; rerun it")
    test_set = load_split(cfg.get("test_dataset") or train_cfg.dataset, "test")
    if test_set is None:
        raise ValueError("test_dataset.splits.test is null: name the class split to test on")
    train_set = load_split(train_cfg.dataset, "train")
    learner, (test_set,) = build_learner(train_cfg, device, test_set)
    load_state_exactly(learner, load_checkpoint(ckpt)["learner"], source=ckpt,
                       hint=f"the learner is built from {run}/config.yaml: pass the run directory that wrote it")
    check_test_set(test_set, channels=int(train_cfg.dataset.channels),
                   image_size=int(train_cfg.dataset.loader.image_size), train_set=train_set)
    if not cfg.get("test_dataset") and (run / "results.json").is_file():
        check_same_test_data(run / "results.json", test_set)
    _check_tests(learner, train_cfg, test_set)
    episodes_file = episodes_file_of(train_cfg, test_set)
    record(cfg, out_dir)
    _report(out_dir, _evaluate(learner, train_cfg, test_set, device, train_set.name, episodes_file=episodes_file),
            train_cfg, device, test_set)


def pretrain(cfg: DictConfig) -> None:
    """Supervised pretraining of a backbone on all base classes; see ``configs/pretrain.yaml``."""
    tensorboard_wanted(cfg)  # logging.tensorboard=true without the package is refused before anything runs
    trainer = hydra.utils.instantiate(cfg.trainer, _convert_="all")
    if not isinstance(trainer, SupervisedPretrainer):
        raise TypeError(f"fewshot-pretrain needs a supervised trainer (trainer=pretrain), not {type(trainer).__name__}")
    in_processes(trainer.distributed, functools.partial(_pretrain, cfg, trainer))


def _pretrain(cfg: DictConfig, trainer: SupervisedPretrainer, ctx: DistributedContext | None) -> None:
    writer = ctx is None or ctx.is_main
    with output_dir() if writer else nullcontext(Path(HydraConfig.get().runtime.output_dir)) as out_dir:
        _pretrain_in(cfg, trainer, Run(out_dir, OmegaConf.to_container(cfg, resolve=True), cfg.seed,
                                       ctx.device if ctx is not None else device_of(cfg.device), cfg.progress, ctx))


def _pretrain_in(cfg: DictConfig, trainer: SupervisedPretrainer, run: Run) -> None:
    out_dir = run.run_dir
    train_set = load_split(cfg.dataset, "train")
    torch.manual_seed(cfg.seed)
    backbone = hydra.utils.instantiate(cfg.backbone).to(run.device)
    if run.writer:
        record(cfg, out_dir)
    history = trainer.pretrain(backbone, train_set, run).history
    if not run.writer:
        return
    write_rows_csv(out_dir / "metrics.csv", history)
    plot = plot_learning_curve(out_dir / "learning_curve.png", history)
    with open_tensorboard(cfg, run) or nullcontext() as tensorboard:
        if tensorboard is not None:
            tensorboard.write_rows("pretrain", history)
            tensorboard.write_images("plots", [plot] if plot is not None else [])
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    name = backbone_cfg.pop("name")
    backbone_cfg.pop("_target_")
    path = save_backbone(backbone.cpu(), out_dir / "backbone.safetensors", name=name, kwargs=backbone_cfg)
    log.info("pretrained backbone written to %s; use it with backbone_weights=%s", path, path)


def report(cfg: DictConfig) -> None:
    """Merge the results of many runs into one table; see ``configs/report.yaml``."""
    root = Path(hydra.utils.to_absolute_path(cfg.dir))
    if not root.is_dir():
        raise FileNotFoundError(f"dir={root} is not a folder; pass the multirun folder (or a folder of runs)")
    with output_dir() as out_dir:
        runs = load_runs(root, include_eval=cfg.include_eval, skip=out_dir)
        results = gather_results(runs)
        matrices = cross_domain_report(gather_by_training_data(runs))
        record(cfg, out_dir)
        write_results(out_dir, results, collect_provenance(config={"dir": str(root)}), notes=different_copies(runs))
        if matrices is not None:
            log.info("cross-domain matrices (rows trained on, columns tested on) in %s",
                     atomic_write_text(out_dir / "cross_domain.md", matrices))
        log.info("%d results merged into %s:\n%s", len(results), out_dir, markdown_table(results))


train_main = app_main("train", train)
eval_main = app_main("eval", evaluate_run)
pretrain_main = app_main("pretrain", pretrain)
report_main = app_main("report", report)
