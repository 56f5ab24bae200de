"""Supervised pretraining of a backbone on every base class: the Baseline / RFS recipe."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from episodes import FewShotDataset, rng
from episodes.augment import Augment
from fewshot.backbones.spec import BackboneSpec
from fewshot.training.collectives import GlobalBatchNorm, GradientAverager, broadcast_state

logger = logging.getLogger(__name__)


class CosineClassifier(nn.Module):
    """Scaled cosine-similarity classifier: ``logits = scale * cos(features, class weights)``.

    Chen et al. 2019, "A Closer Look at Few-shot Classification" (Baseline++).

    Args:
        in_features: D, the feature size.
        num_classes: K, the number of classes.
        scale: initial temperature (learned).
    """

    def __init__(self, *, in_features: int, num_classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) / math.sqrt(in_features))
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, K) logits."""
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


@dataclass
class PretrainResult:
    """Output of :func:`pretrain_backbone`.

    Attributes:
        backbone: the trained backbone (in eval mode, on the training device), its ``spec``
            mean/std set to the dataset's normalisation.
        head: the trained classifier over all the dataset's classes, (N, D) -> (N, num_classes).
        history: one dict per epoch: ``epoch``, ``loss`` and ``accuracy`` (training-batch mean), ``lr``.
    """

    backbone: nn.Module
    head: nn.Module
    history: list[dict[str, float]]


def _check(backbone: nn.Module, dataset: FewShotDataset, epochs: int, batch_size: int, lr: float,
           optimizer: str, head: str) -> None:
    if not isinstance(getattr(backbone, "feature_dim", None), int):
        raise TypeError(f"{type(backbone).__name__} has no integer `feature_dim`; build it with create_backbone")
    if dataset.images.ndim != 4:
        raise ValueError(f"{dataset.name}: pretraining needs (N, C, H, W) images, got shape "
                         f"{tuple(dataset.images.shape)}")
    if dataset.num_classes < 2:
        raise ValueError(f"{dataset.name}: pretraining needs at least 2 classes, got {dataset.num_classes}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'sgd' or 'adam'")
    if head not in ("linear", "cosine"):
        raise ValueError(f"unknown head {head!r}; use 'linear' or 'cosine'")


def pretrain_backbone(
    backbone: nn.Module,
    dataset: FewShotDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: Literal["sgd", "adam"] = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    head: Literal["linear", "cosine"] = "linear",
    seed: int,
    device: torch.device | str = "cpu",
    augment: Augment | Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    distributed: bool = False,
) -> PretrainResult:
    """Train ``backbone`` with a classifier over all classes of ``dataset`` (cross-entropy).

    The "good embedding" recipe of Chen et al. 2019 ("A Closer Look at Few-shot Classification",
    Baseline / Baseline++ with ``head="cosine"``) and Tian et al. 2020 ("Rethinking Few-Shot Image
    Classification: a Good Embedding Is All You Need", RFS: SGD, momentum 0.9, weight decay 5e-4,
    learning rate divided by 10 at ``milestones``).

    Reproducible: the shuffling uses its own ``torch.Generator`` seeded with ``seed``; the head's
    initialisation, DropBlock and ``augment`` draw from torch's global generator, which is seeded
    with ``seed`` inside a fork, so the caller's random state is left as it was.

    Args:
        backbone: a module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim). Trained in place.
        dataset: the base classes; ``images`` (N, C, H, W) uint8, turned into input by ``to_float``.
        epochs, batch_size, lr: the schedule. A final batch of a single image is skipped (batch norm
            cannot train on it).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``; both with ``weight_decay``.
        milestones, gamma: multiply the learning rate by ``gamma`` after each listed epoch.
        head: ``"linear"`` or ``"cosine"`` (:class:`CosineClassifier`).
        seed: seeds everything random in the run.
        device: where to train; batches are gathered on the dataset's device and moved there.
        augment: batched augmentation of each batch after ``to_float``: an :class:`episodes.augment.Augment`
            (e.g. ``RandomCropFlip()``), called on the batch as one (1, B, C, H, W) episode with keys
            derived from ``seed``, the epoch and each image's index, every image its own class key
            (so class-level transforms act per image); or any callable (B, C, H, W) -> (B, C, H, W).
        progress: show a tqdm bar per epoch.
        distributed: share every batch among the ranks of the initialised ``torch.distributed`` process group
            (see :mod:`fewshot.training.distributed`; call on every rank, ``device`` being this rank's): rank
            ``r`` trains on the ``r``-th slice of each batch, gradients are averaged with weights that give the
            whole batch's mean loss, batch norm uses the whole batch's statistics, and the history is
            global, so without ``augment`` the run equals the one-process run to float rounding (random
            ``augment`` and DropBlock draws differ). A final batch smaller than the number of ranks is skipped.
    """
    _check(backbone, dataset, epochs, batch_size, lr, optimizer, head)
    device = torch.device(device)
    cuda_index = None
    if device.type == "cuda":
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        torch.default_generator.manual_seed(seed)
        if cuda_index is not None:
            with torch.cuda.device(cuda_index):
                torch.cuda.manual_seed(seed)
        backbone.to(device)
        classifier: nn.Module = (nn.Linear(backbone.feature_dim, dataset.num_classes) if head == "linear" else
                                 CosineClassifier(in_features=backbone.feature_dim, num_classes=dataset.num_classes))
        classifier.to(device)
        params = [p for p in [*backbone.parameters(), *classifier.parameters()] if p.requires_grad]
        if optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma)
        world = dist.get_world_size() if distributed and dist.is_initialized() else 1
        if distributed and world > 1:
            broadcast_state(backbone)
            broadcast_state(classifier)
        with GlobalBatchNorm() if world > 1 else nullcontext():
            history = _train(backbone, classifier, dataset, opt, schedule, epochs=epochs, batch_size=batch_size,
                             seed=seed, device=device, augment=augment, progress=progress,
                             rank=dist.get_rank() if world > 1 else 0, world=world)
    backbone.eval()
    classifier.eval()
    spec = getattr(backbone, "spec", None)
    if isinstance(spec, BackboneSpec) and len(dataset.mean) in (1, spec.in_channels):
        channels = spec.in_channels
        backbone.spec = replace(spec, mean=tuple(dataset.mean) * (channels // len(dataset.mean)),
                                std=tuple(dataset.std) * (channels // len(dataset.std)))
    return PretrainResult(backbone=backbone, head=classifier, history=history)


def _train(backbone: nn.Module, classifier: nn.Module, dataset: FewShotDataset, opt: torch.optim.Optimizer,
           schedule: torch.optim.lr_scheduler.LRScheduler, *, epochs: int, batch_size: int, seed: int,
           device: torch.device, augment: Augment | Callable[[torch.Tensor], torch.Tensor] | None,
           progress: bool, rank: int, world: int) -> list[dict[str, float]]:
    shuffle = torch.Generator().manual_seed(seed)
    averager = GradientAverager(world_size=world)
    labels = dataset.labels.cpu()
    history = []
    for epoch in range(1, epochs + 1):
        backbone.train()
        classifier.train()
        batches = list(torch.randperm(len(labels), generator=shuffle).split(batch_size))
        if len(batches) > 1 and len(batches[-1]) < max(2, world):
            batches.pop()
        lr = opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for whole in tqdm(batches, desc=f"pretrain {epoch}/{epochs}", disable=not progress or rank > 0, leave=False):
            idx = whole.tensor_split(world)[rank]
            x = dataset.to_float(dataset.images[idx.to(dataset.images.device)].to(device, non_blocking=True))
            y = labels[idx].to(device, non_blocking=True)
            if isinstance(augment, Augment):
                keys = rng.derive(rng.derive(rng.seed_key(seed, device=device), epoch), idx.to(device)[None])
                x = augment(x[None], image_keys=rng.derive(keys, 0), class_keys=rng.derive(keys, 1))[0]
            elif augment is not None:
                x = augment(x)
            logits = classifier(backbone(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            # weighted so that the average over ranks is the whole batch's mean loss
            (loss * (len(idx) * world / len(whole))).backward()
            averager.average([p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None])
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += len(y)
        schedule.step()
        totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, device=device).double()])
        if world > 1:
            dist.all_reduce(totals)
        loss_total, correct_total, seen_total = totals.tolist()
        record = {"epoch": epoch, "loss": loss_total / seen_total, "accuracy": correct_total / seen_total, "lr": lr}
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"pretraining loss became non-finite in epoch {epoch}; lower lr ({lr}) "
                                     "or check the data normalisation")
        logger.info("pretrain epoch %d/%d: loss %.4f, accuracy %.4f, lr %.3g", epoch, epochs, record["loss"],
                    record["accuracy"], lr)
        history.append(record)
    return history
