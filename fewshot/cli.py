"""Command-line apps (Hydra): ``fewshot-train``, ``fewshot-eval``, ``fewshot-pretrain`` and ``fewshot-report``.

The only module that imports hydra/omegaconf: it turns a composed config into typed Python values
and calls the library. Every run writes to its own directory (``runs/<name>/<time>/`` by default):
the composed config (``config.yaml`` resolved, ``.hydra/``), the log, ``metrics.csv``, ``checkpoints/``
(periodic and last, best on validation) and the test results (``results.json``, ``results.csv``,
``results.md``, plots). ``fewshot-report`` merges the results of many runs (a multirun sweep) into one table.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from episodes import EpisodeSampler, FewShotDataset
from fewshot.backbones import load_pretrained, save_backbone
from fewshot.evaluation import (
    EvaluationResult,
    collect_provenance,
    evaluate_settings,
    markdown_table,
    plot_accuracy_vs_shots,
    plot_learning_curve,
    read_json,
    write_csv,
    write_json,
)
from fewshot.files import atomic_write_text
from fewshot.learners.base import Learner, MetaLearner
from fewshot.training.checkpoint import load_checkpoint, load_state_exactly, save_checkpoint
from fewshot.training.distributed import (
    DistributedContext,
    RankShards,
    distributed_meta_train,
    init_distributed,
    shutdown_distributed,
)
from fewshot.training.meta_train import TrainSettings, check_resume, meta_train
from fewshot.training.pretrain import pretrain_backbone

log = logging.getLogger("fewshot")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but torch sees no CUDA GPU; use device=cpu or device=auto")
    return device


def _load(data: DictConfig, role: str) -> FewShotDataset | None:
    """The class split ``data.splits[role]`` (train/val/test) of a dataset config, or None where it is null."""
    split = data.splits[role]
    if split is None:
        return None
    return hydra.utils.instantiate(data.loader, split=split)


def _build_learner(cfg: DictConfig, device: torch.device) -> Learner:
    torch.manual_seed(cfg.seed)  # the initial weights are part of the seeded run
    backbone = hydra.utils.instantiate(cfg.backbone)
    if cfg.backbone_weights is not None:
        report = load_pretrained(backbone, Path(hydra.utils.to_absolute_path(cfg.backbone_weights)))
        log.info("backbone weights: %s", report)
    learner = hydra.utils.instantiate(cfg.learner, backbone=backbone)
    return learner.to(device)


def _evaluate(learner: Learner, cfg: DictConfig, test_set: FewShotDataset, device: torch.device,
              train_name: str | None, ctx: DistributedContext | None = None) -> list[EvaluationResult]:
    """Score ``learner`` on every (n_way, n_shot) setting of ``cfg.evaluation`` over fixed episodes (shared by
    the processes of ``ctx`` in a distributed run: the same numbers)."""
    e = cfg.evaluation
    return evaluate_settings({cfg.name: learner}, test_set, settings=[(int(w), int(k)) for w, k in e.settings],
                             n_query=e.n_query, episodes=e.episodes, seed=e.seed, batch_size=e.batch_size,
                             device=device, progress=cfg.progress and ctx is None, train_dataset=train_name,
                             shards=RankShards(ctx) if ctx is not None else None)


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    """``metrics.csv`` of a supervised pretraining run: one row per epoch."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in history for k in row)),
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


def _write_results(out_dir: Path, results: list[EvaluationResult], provenance: dict[str, Any]) -> None:
    """results.json/csv/md and the accuracy plot; the markdown starts with the data trained on and tested on."""
    write_json(out_dir / "results.json", results, provenance=provenance)
    write_csv(out_dir / "results.csv", results)
    pairs = dict.fromkeys((r.train_dataset or "?", r.test_dataset) for r in results)
    lines = "".join(f"- trained on `{train}`, tested on `{test}`\n" for train, test in pairs)
    atomic_write_text(out_dir / "results.md", f"{lines}\n{markdown_table(results)}")
    plot_accuracy_vs_shots(out_dir / "accuracy_vs_shots.png", results)


def _report(out_dir: Path, results: list[EvaluationResult], cfg: DictConfig, device: torch.device,
            history: list[dict[str, float]] | None = None) -> None:
    provenance = collect_provenance(config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.seed,
                                    device=str(device))
    _write_results(out_dir, results, provenance)
    if history:
        plot_learning_curve(out_dir / "learning_curve.png", history)
    log.info("results (%% accuracy, 95%% CI over %d episodes) in %s:\n%s", cfg.evaluation.episodes, out_dir,
             markdown_table(results))


def _settings(section: DictConfig, cls: Callable[..., Any], skip: tuple[str, ...], **extra: Any) -> Any:
    """``cls(**section, **extra)`` without the ``skip`` keys: a key ``cls`` does not take is a TypeError."""
    kwargs = {k: v for k, v in OmegaConf.to_container(section, resolve=True).items() if k not in skip}
    return cls(**kwargs, **extra)


def _in_processes(cfg: DictConfig, task: Callable[[DictConfig, DistributedContext | None], None]) -> None:
    """Run ``task(cfg, ctx)``. With ``trainer.distributed``, ``ctx`` is this process's place in the
    torch.distributed group of torchrun / srun (one process per GPU, see :mod:`fewshot.training.distributed`),
    left again afterwards; otherwise ``ctx`` is None."""
    if not cfg.trainer.distributed:
        task(cfg, None)
        return
    ctx = init_distributed()
    try:
        hydra_cfg = HydraConfig.get()
        if ctx.world_size > 1 and hydra_cfg.mode == RunMode.RUN and not any(
                o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra):
            raise ValueError("a distributed run needs one run directory shared by its processes: pass "
                             "hydra.run.dir=<dir>")
        task(cfg, ctx)
    finally:
        shutdown_distributed()


def train(cfg: DictConfig) -> None:
    """Meta-train (or pretrain, for non-meta learners) and test; see ``configs/train.yaml``.

    With ``trainer.distributed=true`` under torchrun or srun, every process runs this; rank 0 writes the files.
    """
    _in_processes(cfg, _train)


def _train(cfg: DictConfig, ctx: DistributedContext | None) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    writer = ctx is None or ctx.is_main
    check_resume(run_dir, OmegaConf.to_container(cfg, resolve=True))  # refuse before config.yaml is replaced
    if writer:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)  # what fewshot-eval reads back
    device = ctx.device if ctx is not None else _device(cfg.device)
    train_set, val_set, test_set = (_load(cfg.dataset, role) for role in ("train", "val", "test"))
    if train_set is None or test_set is None:
        raise ValueError("dataset.splits.train and dataset.splits.test must name class splits")
    learner = _build_learner(cfg, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    history: list[dict[str, float]] = []
    if isinstance(learner, MetaLearner):
        if cfg.trainer.kind != "meta":
            raise ValueError(f"learner {cfg.name} is meta-trained: use a trainer with kind: meta (trainer=default)")
        learner.configure_optimizer(hydra.utils.instantiate(cfg.trainer.optimizer))
        ep = cfg.episode
        sampler = EpisodeSampler(train_set.to(device), n_way=ep.train_n_way, n_shot=ep.train_n_shot,
                                 n_query=ep.train_n_query, seed=cfg.seed)
        validate = None
        if val_set is not None and cfg.trainer.val_every:
            def validate(model: MetaLearner) -> float:
                (result,) = evaluate_settings({cfg.name: model}, val_set, settings=[(ep.n_way, ep.n_shot)],
                                              n_query=ep.n_query, episodes=cfg.trainer.val_episodes,
                                              seed=cfg.evaluation.seed + 1, batch_size=cfg.evaluation.batch_size,
                                              device=device, progress=False,
                                              shards=RankShards(ctx) if ctx is not None else None)
                return result.learners[0].mean
        settings = _settings(cfg.trainer, TrainSettings, ("kind", "optimizer", "val_episodes", "distributed"))
        if ctx is None:
            outcome = meta_train(learner, sampler, settings=settings, validate=validate, run_dir=run_dir,
                                 config=config, device=device, progress=cfg.progress)
        else:
            outcome = distributed_meta_train(learner, sampler, settings=settings, ctx=ctx, validate=validate,
                                             run_dir=run_dir, config=config, progress=cfg.progress)
            _barrier(ctx)  # rank 0 has written its last checkpoints
        history = outcome.history
        if validate is not None:
            best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
            learner.load_state_dict(best["learner"])
            log.info("testing the best validation step %d (val accuracy %.4f)", outcome.best_step,
                     outcome.best_val_accuracy)
    else:
        if cfg.trainer.kind != "supervised":
            raise ValueError(f"learner {cfg.name} is not meta-trained: use trainer=pretrain (supervised pretraining "
                             "of its backbone, skipped when backbone_weights=<file from fewshot-pretrain> is given)")
        if cfg.backbone_weights is None:
            history = _pretrain(learner.backbone, train_set, cfg, device).history
        if writer:
            if history:
                _write_metrics(run_dir, history)
            save_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                            {"learner": learner.state_dict(), "step": 0, "config": str(config)})
    results = _evaluate(learner, cfg, test_set, device, train_set.name, ctx)
    if writer:
        _report(run_dir, results, cfg, device, history)


def _barrier(ctx: DistributedContext) -> None:
    if ctx.world_size > 1:
        torch.distributed.barrier()


def _pretrain(backbone: torch.nn.Module, train_set: FewShotDataset, cfg: DictConfig, device: torch.device) -> Any:
    """:func:`pretrain_backbone` with every ``cfg.trainer`` key but ``kind`` as a keyword; its history gets a
    ``step`` (the epoch) for the learning-curve plot."""
    augment = hydra.utils.instantiate(cfg.trainer.augment) if cfg.trainer.augment is not None else None
    result = _settings(cfg.trainer, functools.partial(pretrain_backbone, backbone, train_set), ("kind", "augment"),
                       augment=augment, seed=cfg.seed, device=device, progress=cfg.progress)
    return dataclasses.replace(result, history=[{"step": float(e["epoch"]), **e} for e in result.history])


def _run_config(run: Path) -> DictConfig:
    """The resolved config a ``fewshot-train`` run saved (``config.yaml``; ``.hydra/config.yaml`` for older runs)."""
    for saved in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if saved.is_file():
            return OmegaConf.load(saved)
    raise FileNotFoundError(f"{run} is not a fewshot-train run directory (no config.yaml); pass run=<the directory "
                            "a training run printed>")


def evaluate_run(cfg: DictConfig) -> None:
    """Re-test a ``fewshot-train`` run from its checkpoint, on its own test classes or (cross-domain) on
    ``cfg.test_dataset``; see ``configs/eval.yaml``."""
    run = Path(hydra.utils.to_absolute_path(cfg.run))
    train_cfg = _run_config(run)
    if cfg.evaluation is not None:
        train_cfg.evaluation = cfg.evaluation
    train_cfg.progress = cfg.progress
    device = _device(cfg.device)
    ckpt = run / "checkpoints" / f"{cfg.checkpoint}.ckpt"
    if not ckpt.is_file():
        ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run} has no checkpoints/last.ckpt: the training run did not finish; rerun it")
    learner = _build_learner(train_cfg, device)
    load_state_exactly(learner, load_checkpoint(ckpt)["learner"], source=ckpt,
                       hint=f"the learner is built from {run}/config.yaml: pass the run directory that wrote it")
    test_data = cfg.get("test_dataset") or train_cfg.dataset
    test_set = _load(test_data, "test")
    if test_set is None:
        raise ValueError("test_dataset.splits.test is null: name the class split to test on")
    want = (int(train_cfg.dataset.channels), int(train_cfg.dataset.loader.image_size))
    got = (int(test_set.images.shape[1]), int(test_set.images.shape[-1]))
    if got != want:
        raise ValueError(f"the run was trained on {want[0]}-channel {want[1]}px images but {test_set.name} has "
                         f"{got[0]}-channel {got[1]}px images; set test_dataset.channels={want[0]} "
                         f"test_dataset.loader.image_size={want[1]}")
    train_set = _load(train_cfg.dataset, "train")
    shared = set(train_set.class_names) & set(test_set.class_names)
    if shared:
        log.warning("%d of the %d test classes of %s were also training classes of this run (e.g. %s): the numbers "
                    "are not a test on unseen classes", len(shared), test_set.num_classes, test_set.name, min(shared))
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    _report(out_dir, _evaluate(learner, train_cfg, test_set, device, train_set.name), train_cfg, device)


def pretrain(cfg: DictConfig) -> None:
    """Supervised pretraining of a backbone on all base classes; see ``configs/pretrain.yaml``."""
    _in_processes(cfg, _pretrain_run)


def _pretrain_run(cfg: DictConfig, ctx: DistributedContext | None) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = ctx.device if ctx is not None else _device(cfg.device)
    train_set = _load(cfg.dataset, "train")
    torch.manual_seed(cfg.seed)
    backbone = hydra.utils.instantiate(cfg.backbone).to(device)
    result = _pretrain(backbone, train_set, cfg, device)
    if ctx is not None and not ctx.is_main:
        return
    _write_metrics(out_dir, result.history)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    name = backbone_cfg.pop("name")
    backbone_cfg.pop("_target_")
    path = out_dir / "backbone.safetensors"
    save_backbone(backbone.cpu(), path, name=name, kwargs=backbone_cfg)
    plot_learning_curve(out_dir / "learning_curve.png", result.history)
    log.info("pretrained backbone written to %s; use it with backbone_weights=%s", path, path)


def _run_label(path: Path, root: Path) -> str:
    """The command-line overrides of the run that wrote ``path`` (its ``.hydra/overrides.yaml``), else its folder."""
    overrides = path.parent / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        kept = [o for o in OmegaConf.load(overrides) if not str(o).startswith("hydra.")]
        if kept:
            return ",".join(str(o) for o in kept)
    return str(path.parent.relative_to(root))


def gather_results(root: Path, *, include_eval: bool = False, skip: Path | None = None) -> list[EvaluationResult]:
    """Every ``results.json`` under ``root`` (a multirun folder, a run, or any folder of runs), in path order.

    Re-tests written by ``fewshot-eval`` (under ``eval/``) are left out unless ``include_eval``. Where two runs
    report the same method name in the same setting, each is renamed ``name [overrides]`` after its run's
    command-line overrides, so one table holds them all.
    """
    files = sorted(p for p in root.rglob("results.json")
                   if (include_eval or "eval" not in p.relative_to(root).parts[:-1])
                   and (skip is None or skip not in p.parents))
    if not files:
        raise FileNotFoundError(f"no results.json under {root}; pass dir=<a multirun folder or run folder that "
                                "fewshot-train wrote>")
    loaded = [(path, read_json(path)[0]) for path in files]
    seen: dict[tuple[str, str, str], int] = {}
    for _, results in loaded:
        for result in results:
            for learner in result.learners:
                key = (learner.name, result.test_dataset, result.spec.setting)
                seen[key] = seen.get(key, 0) + 1
    merged = []
    for path, results in loaded:
        for result in results:
            def rename(name: str, result: EvaluationResult = result, path: Path = path) -> str:
                clash = seen[name, result.test_dataset, result.spec.setting] > 1
                return f"{name} [{_run_label(path, root)}]" if clash else name
            learners = tuple(dataclasses.replace(r, name=rename(r.name)) for r in result.learners)
            comparisons = tuple(dataclasses.replace(c, learner_a=rename(c.learner_a), learner_b=rename(c.learner_b))
                                for c in result.comparisons)
            merged.append(dataclasses.replace(result, learners=learners, comparisons=comparisons))
    return merged


def report(cfg: DictConfig) -> None:
    """Merge the results of many runs into one table; see ``configs/report.yaml``."""
    root = Path(hydra.utils.to_absolute_path(cfg.dir))
    if not root.is_dir():
        raise FileNotFoundError(f"dir={root} is not a folder; pass the multirun folder (or a folder of runs)")
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = gather_results(root, include_eval=cfg.include_eval, skip=out_dir)
    _write_results(out_dir, results, collect_provenance(config={"dir": str(root)}))
    log.info("%d results merged into %s:\n%s", len(results), out_dir, markdown_table(results))


def _guard(task: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Turn expected failures (bad input, bad config, divergence, out of memory) into a one-line error and exit
    status 2 instead of a traceback from deep inside torch."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> None:
        _TASK_STARTED[0] = True
        try:
            task(cfg)
        except torch.cuda.OutOfMemoryError as err:
            log.error("out of GPU memory: %s\nlower trainer.meta_batch or evaluation.batch_size, or use a first-order "
                      "learner (learner=fomaml)", err)
            sys.exit(2)
        except (ValueError, TypeError, KeyError, OSError, FloatingPointError, pickle.UnpicklingError,
                zipfile.BadZipFile, InstantiationException, OmegaConfBaseException) as err:  # OSError: downloads, disk
            log.error("%s: %s", type(err).__name__, err)
            sys.exit(2)

    return run


#: Set once a task runs: Hydra's exit status 1 before that means the config could not be composed.
_TASK_STARTED = [False]


def _config_errors_exit_2(app: Callable[[], None]) -> None:
    """Run a Hydra app; a config Hydra cannot compose (unknown key, unknown option, bad value) exits with 2 like
    every other bad input (Hydra itself exits with 1 after printing the error)."""
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == 1 and not _TASK_STARTED[0]:
            sys.exit(2)
        raise


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    _guard(train)(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    _guard(evaluate_run)(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="pretrain")
def _pretrain_app(cfg: DictConfig) -> None:
    _guard(pretrain)(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="report")
def _report_app(cfg: DictConfig) -> None:
    _guard(report)(cfg)


def train_main() -> None:
    """Entry point of ``fewshot-train``."""
    _config_errors_exit_2(_train_app)


def eval_main() -> None:
    """Entry point of ``fewshot-eval``."""
    _config_errors_exit_2(_eval_app)


def pretrain_main() -> None:
    """Entry point of ``fewshot-pretrain``."""
    _config_errors_exit_2(_pretrain_app)


def report_main() -> None:
    """Entry point of ``fewshot-report`` (``python -m fewshot report dir=<multirun folder>``)."""
    _config_errors_exit_2(_report_app)
