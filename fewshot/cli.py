"""Command-line apps (Hydra): ``fewshot-train``, ``fewshot-eval`` and ``fewshot-pretrain``.

The only module that imports hydra/omegaconf: it turns a composed config into typed Python values
and calls the library. Every run writes to its own directory (``runs/<name>/<time>/`` by default):
the composed config (``.hydra/``), the log, ``metrics.csv``, ``checkpoints/`` and the test results
(``results.json``, ``results.csv``, ``results.md``, plots).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from episodes import EpisodeSampler, FewShotDataset
from fewshot.backbones import load_pretrained, save_backbone
from fewshot.evaluation import (
    EvaluationResult,
    collect_provenance,
    evaluate,
    evaluate_settings,
    markdown_table,
    plot_accuracy_vs_shots,
    plot_learning_curve,
    write_csv,
    write_json,
    write_markdown,
)
from fewshot.learners.base import Learner, MetaLearner
from fewshot.training.checkpoint import load_checkpoint, save_checkpoint
from fewshot.training.meta_train import TrainSettings, meta_train
from fewshot.training.pretrain import pretrain_backbone

log = logging.getLogger("fewshot")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but torch sees no CUDA GPU; use device=cpu or device=auto")
    return device


def _load(cfg: DictConfig, role: str) -> FewShotDataset | None:
    """The class split ``cfg.dataset.splits[role]`` (train/val/test), or None where it is null."""
    split = cfg.dataset.splits[role]
    if split is None:
        return None
    return hydra.utils.instantiate(cfg.dataset.loader, split=split)


def _build_learner(cfg: DictConfig, device: torch.device) -> Learner:
    torch.manual_seed(cfg.seed)  # the initial weights are part of the seeded run
    backbone = hydra.utils.instantiate(cfg.backbone)
    if cfg.backbone_weights is not None:
        report = load_pretrained(backbone, Path(hydra.utils.to_absolute_path(cfg.backbone_weights)))
        log.info("backbone weights: %s", report)
    learner = hydra.utils.instantiate(cfg.learner, backbone=backbone)
    return learner.to(device)


def _evaluate(learner: Learner, cfg: DictConfig, test_set: FewShotDataset, device: torch.device,
              train_name: str | None) -> list[EvaluationResult]:
    """Score ``learner`` on every (n_way, n_shot) setting of ``cfg.evaluation`` over fixed episodes."""
    e = cfg.evaluation
    return evaluate_settings({cfg.name: learner}, test_set, settings=[(int(w), int(k)) for w, k in e.settings],
                             n_query=e.n_query, episodes=e.episodes, seed=e.seed, batch_size=e.batch_size,
                             device=device, progress=cfg.progress, train_dataset=train_name)


def _report(out_dir: Path, results: list[EvaluationResult], cfg: DictConfig, device: torch.device,
            history: list[dict[str, float]] | None = None) -> None:
    provenance = collect_provenance(config=OmegaConf.to_container(cfg, resolve=True), seed=cfg.seed,
                                    device=str(device))
    write_json(out_dir / "results.json", results, provenance=provenance)
    write_csv(out_dir / "results.csv", results)
    write_markdown(out_dir / "results.md", results)
    plot_accuracy_vs_shots(out_dir / "accuracy_vs_shots.png", results)
    if history:
        plot_learning_curve(out_dir / "learning_curve.png", history)
    log.info("results (%% accuracy, 95%% CI over %d episodes) in %s:\n%s", cfg.evaluation.episodes, out_dir,
             markdown_table(results))


def train(cfg: DictConfig) -> None:
    """Meta-train (or pretrain, for non-meta learners) and test; see ``configs/train.yaml``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = _device(cfg.device)
    train_set, val_set, test_set = _load(cfg, "train"), _load(cfg, "val"), _load(cfg, "test")
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
                result = evaluate({cfg.name: model}, val_set, n_way=ep.n_way, n_shot=ep.n_shot, n_query=ep.n_query,
                                  episodes=cfg.trainer.val_episodes, seed=cfg.evaluation.seed + 1,
                                  batch_size=cfg.evaluation.batch_size, device=device, progress=False)
                return result.learners[0].mean
        settings = TrainSettings(steps=cfg.trainer.steps, meta_batch=cfg.trainer.meta_batch,
                                 val_every=cfg.trainer.val_every, checkpoint_every=cfg.trainer.checkpoint_every,
                                 log_every=cfg.trainer.log_every)
        outcome = meta_train(learner, sampler, settings=settings, validate=validate, run_dir=run_dir, config=config,
                             device=device, progress=cfg.progress)
        history = outcome.history
        if validate is not None:
            best = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
            learner.load_state_dict(best["learner"])
            log.info("testing the best validation step %d (val accuracy %.4f)", outcome.best_step,
                     outcome.best_val_accuracy)
    else:
        if cfg.trainer.kind != "supervised":
            raise ValueError(f"learner {cfg.name} is not meta-trained: use trainer=pretrain (supervised) "
                             "or give backbone_weights=<file from fewshot-pretrain> with trainer=none")
        if cfg.backbone_weights is None:
            result = pretrain_backbone(learner.backbone, train_set, **_pretrain_kwargs(cfg, device))
            history = result.history
        save_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                        {"learner": learner.state_dict(), "step": 0, "config": str(config)})
    _report(run_dir, _evaluate(learner, cfg, test_set, device, train_set.name), cfg, device, history)


def _pretrain_kwargs(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    t = cfg.trainer
    return {"epochs": t.epochs, "batch_size": t.batch_size, "lr": t.lr, "optimizer": t.optimizer,
            "weight_decay": t.weight_decay, "head": t.head, "seed": cfg.seed, "device": device,
            "progress": cfg.progress}


def evaluate_run(cfg: DictConfig) -> None:
    """Re-test a ``fewshot-train`` run from its checkpoint; see ``configs/eval.yaml``."""
    run = Path(hydra.utils.to_absolute_path(cfg.run))
    saved = run / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{run} is not a fewshot-train run directory (no .hydra/config.yaml); pass run=<the "
                                "directory a training run printed>")
    train_cfg = OmegaConf.load(saved)
    if cfg.evaluation is not None:
        train_cfg.evaluation = cfg.evaluation
    train_cfg.progress = cfg.progress
    device = _device(cfg.device)
    ckpt = run / "checkpoints" / f"{cfg.checkpoint}.ckpt"
    if not ckpt.is_file():
        ckpt = run / "checkpoints" / "last.ckpt"
    learner = _build_learner(train_cfg, device)
    try:
        learner.load_state_dict(load_checkpoint(ckpt)["learner"])
    except RuntimeError as err:
        raise ValueError(f"{ckpt} does not match the run's learner and backbone ({err})") from err
    test_set = _load(train_cfg, "test")
    train_name = _load(train_cfg, "train").name
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    _report(out_dir, _evaluate(learner, train_cfg, test_set, device, train_name), train_cfg, device)


def pretrain(cfg: DictConfig) -> None:
    """Supervised pretraining of a backbone on all base classes; see ``configs/pretrain.yaml``."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = _device(cfg.device)
    train_set = _load(cfg, "train")
    torch.manual_seed(cfg.seed)
    backbone = hydra.utils.instantiate(cfg.backbone).to(device)
    result = pretrain_backbone(backbone, train_set, **_pretrain_kwargs(cfg, device))
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    name = backbone_cfg.pop("name")
    backbone_cfg.pop("_target_")
    path = out_dir / "backbone.safetensors"
    save_backbone(backbone.cpu(), path, name=name, kwargs=backbone_cfg)
    plot_learning_curve(out_dir / "learning_curve.png", result.history)
    log.info("pretrained backbone written to %s; use it with backbone_weights=%s", path, path)


def _guard(task: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Turn expected failures (bad input, bad config, divergence, out of memory) into a one-line error and exit
    status 2 instead of a traceback from deep inside torch."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except torch.cuda.OutOfMemoryError as err:
            log.error("out of GPU memory: %s\nlower trainer.meta_batch or evaluation.batch_size, or use a first-order "
                      "learner (learner=fomaml)", err)
            sys.exit(2)
        except (ValueError, TypeError, KeyError, FileNotFoundError, FloatingPointError, InstantiationException,
                OmegaConfBaseException) as err:
            log.error("%s: %s", type(err).__name__, err)
            sys.exit(2)

    return run


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    _guard(train)(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    _guard(evaluate_run)(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="pretrain")
def _pretrain_app(cfg: DictConfig) -> None:
    _guard(pretrain)(cfg)


def train_main() -> None:
    """Entry point of ``fewshot-train``."""
    _train_app()


def eval_main() -> None:
    """Entry point of ``fewshot-eval``."""
    _eval_app()


def pretrain_main() -> None:
    """Entry point of ``fewshot-pretrain``."""
    _pretrain_app()
