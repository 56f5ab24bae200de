"""The transfer-learning study: every way of reusing one pretrained backbone, against the same from scratch.

One backbone is pretrained (supervised, every training class: :func:`~fewshot.training.pretrain.pretrain_backbone`)
from a random initialisation. Six arms then reuse it, and each arm runs again from that same random initialisation
(its scratch counterpart), so a pair differs only in the pretraining:

- **nearest centroid** (feature extraction): frozen features, centred and L2-normalised, nearest class mean
  (SimpleShot, CL2N);
- **linear probe**: frozen features, a linear head fitted on each support set (Baseline);
- **fine-tune last stage**: the last stage and a new head (cosine, imprinted, by default) fine-tuned on each support
  set (:class:`~fewshot.learners.finetune.last_stage.LastStageFineTune`);
- **fine-tune all**: the whole backbone and a new head fine-tuned on each support set, the backbone at
  ``backbone_lr_mult`` times the head's rate (:class:`~fewshot.learners.finetune.baseline.BackboneFineTune`);
- **ProtoNet**: meta-trained on episodes of the training classes from the start, then nearest class mean;
- **MAML**: meta-trained from the start (batch norm on the support set's statistics: inductive).

Scratch is the random initialisation the pretraining started from, with batch-norm running statistics of the
training images (forward passes in training mode; no labels, no gradient step): with batch norm at its initial
statistics a random Conv4's features are nearly zero, and random features are a fair baseline only once they are
normalised as the pretrained ones are. For the four arms that are not meta-trained, scratch therefore means random
features (the nearest-centroid and linear-probe pairs ask whether pretrained features beat random ones, the fine-tune
pairs whether a pretrained start beats a random one at the same per-episode budget); ProtoNet and MAML meta-train
from either start on the same episodes.

Every learner is scored on the same seeded episodes of every test dataset and every shot count
(:func:`~fewshot.evaluation.harness.evaluate_settings`); test datasets with the same classes and class sizes (the
near domain and its shifted copy, :func:`episodes.domain_shift.shift_domain`) give the same episodes.
:func:`~fewshot.evaluation.transfer.transfer_tests` then tests each pair, Holm-adjusted over the study.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from episodes import EpisodeSampler, FewShotDataset
from fewshot.evaluation.harness import evaluate_settings
from fewshot.evaluation.results import EvaluationResult
from fewshot.evaluation.runs import pool_same_episodes
from fewshot.evaluation.transfer import TransferPair, TransferTest, transfer_tests
from fewshot.learners import MAML, BackboneFineTune, FrozenFineTune, Learner, OuterOptimizer, ProtoNet
from fewshot.learners.base import MetaLearner
from fewshot.learners.finetune.baseline import HeadKind
from fewshot.learners.finetune.last_stage import LastStageFineTune
from fewshot.learners.metric.simpleshot import SimpleShot
from fewshot.training.meta_train import TrainSettings, meta_train
from fewshot.training.pretrain import pretrain_backbone

__all__ = ["ARMS", "StudyOutcome", "StudySettings", "calibrate_batch_norm", "check_study_data", "transfer_study"]

logger = logging.getLogger(__name__)

ARMS = ("nearest centroid", "linear probe", "fine-tune last stage", "fine-tune all", "ProtoNet", "MAML")
STARTS = ("pretrained", "scratch")
T = TypeVar("T")


#: the smallest valid value of each integer setting
_MINIMUM = {"n_way": 2, "protonet_way": 2, **dict.fromkeys(
    ("n_query", "episodes", "pretrain_epochs", "pretrain_batch_size", "protonet_shot", "protonet_query",
     "maml_meta_batch", "maml_shot", "maml_query"), 1), **dict.fromkeys(
    ("probe_steps", "finetune_steps", "protonet_steps", "maml_steps", "maml_inner_steps", "maml_eval_steps", "seed",
     "eval_seed"), 0)}


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """Budgets and test protocol of :func:`transfer_study` (defaults: the Omniglot run of
    ``benchmarks/transfer_study.py``).

    Attributes:
        n_way, shots, n_query, episodes, eval_seed: the test episodes: ``episodes`` seeded ``n_way``-way tasks per
            shot count, ``n_query`` queries per class (every class needs ``max(shots) + n_query`` images).
        pretrain_epochs, pretrain_batch_size, pretrain_lr: supervised pretraining (SGD, momentum 0.9, linear head).
        probe_steps, probe_lr: the linear probe's head fit per episode.
        finetune_head, finetune_steps, finetune_lr, backbone_lr_mult: both fine-tune arms: a ``"cosine"`` head
            starts from the class means of the support features (weight imprinting, Baseline++), so that the few
            steps one CPU core affords start from nearest-centroid accuracy, or a ``"linear"`` one from zero; the
            head learns at ``finetune_lr``, the backbone parameters at ``finetune_lr * backbone_lr_mult``.
        protonet_steps, protonet_way, protonet_shot, protonet_query: ProtoNet meta-training episodes.
        maml_steps, maml_meta_batch, maml_shot, maml_query, maml_inner_lr, maml_inner_steps, maml_eval_steps,
            maml_first_order: MAML meta-training on ``n_way``-way tasks and its test-time inner steps.
        meta_lr: Adam learning rate of both meta-learners (cosine schedule to zero).
        seed: pretraining, meta-training episodes and head initialisations.
        alpha: family-wise level of the negative-transfer tests.
    """

    n_way: int = 5
    shots: tuple[int, ...] = (1, 5, 10, 15)
    n_query: int = 5
    episodes: int = 600
    eval_seed: int = 2017
    pretrain_epochs: int = 8
    pretrain_batch_size: int = 128
    pretrain_lr: float = 0.1
    probe_steps: int = 100
    probe_lr: float = 0.01
    finetune_head: HeadKind = "cosine"
    finetune_steps: int = 3
    finetune_lr: float = 0.05
    backbone_lr_mult: float = 0.1
    protonet_steps: int = 300
    protonet_way: int = 20
    protonet_shot: int = 5
    protonet_query: int = 5
    maml_steps: int = 200
    maml_meta_batch: int = 4
    maml_shot: int = 5
    maml_query: int = 5
    maml_inner_lr: float = 0.4
    maml_inner_steps: int = 1
    maml_eval_steps: int = 2
    maml_first_order: bool = True
    meta_lr: float = 1e-3
    seed: int = 0
    alpha: float = 0.05

    def __post_init__(self) -> None:
        bad = {k: getattr(self, k) for k, low in _MINIMUM.items()
               if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int) or getattr(self, k) < low}
        if bad:
            raise ValueError(f"StudySettings needs integers of at least {({k: _MINIMUM[k] for k in bad})}, got {bad}")
        if not self.shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.shots) or (
                len(set(self.shots)) != len(self.shots)):
            raise ValueError(f"shots must be distinct positive integers, e.g. (1, 5, 10, 15), got {self.shots!r}")
        rates = {k: getattr(self, k) for k in ("pretrain_lr", "probe_lr", "finetune_lr", "meta_lr", "maml_inner_lr")}
        if any(not (math.isfinite(v) and v > 0) for v in rates.values()) or not (
                math.isfinite(self.backbone_lr_mult) and self.backbone_lr_mult >= 0):
            raise ValueError(f"learning rates must be finite and > 0 and backbone_lr_mult >= 0, got {rates} and "
                             f"backbone_lr_mult={self.backbone_lr_mult}")
        if self.finetune_head not in ("linear", "cosine"):
            raise ValueError(f"finetune_head must be 'linear' or 'cosine', got {self.finetune_head!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), e.g. 0.05, got {self.alpha}")


@dataclass
class StudyOutcome:
    """What :func:`transfer_study` produced.

    Attributes:
        results: one per test dataset and shot count, every learner (``"<arm> (pretrained)"``, ``"<arm>
            (scratch)"``) on the same episodes, with every pair's paired comparison.
        pairs: the pretrained/scratch pair of each arm.
        tests: each pair on each episode set, Holm-adjusted (:func:`~fewshot.evaluation.transfer.transfer_tests`).
        pretrain_history: the pretraining's per-epoch loss and accuracy.
        cpu_seconds, wall_seconds: per phase (``pretrain``, ``meta-train <learner>``, ``test <learner> on
            <dataset>``, ...): this process's CPU time, and elapsed time.
    """

    results: list[EvaluationResult]
    pairs: tuple[TransferPair, ...]
    tests: list[TransferTest]
    pretrain_history: list[dict[str, float]]
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        self.cpu_seconds[phase] = time.process_time() - cpu
        self.wall_seconds[phase] = time.perf_counter() - wall
        logger.info("%s: %.1f s CPU, %.1f s elapsed", phase, self.cpu_seconds[phase], self.wall_seconds[phase])


def calibrate_batch_norm(backbone: nn.Module, dataset: FewShotDataset, *, chunk: int = 256, seed: int = 0,
                         device: torch.device | str = "cpu") -> nn.Module:
    """Set the running mean and variance of every batch norm of ``backbone`` to their average over ``dataset``'s
    images (in seeded random chunks of ``chunk``, training-mode forward passes without gradients); the weights are
    not changed. Returns ``backbone``, in eval mode."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the chunks
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    backbone.to(device).train()
    try:
        with torch.no_grad():
            for rows in order.split(chunk):
                backbone(dataset.to_float(dataset.images[rows.to(dataset.images.device)].to(device)))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        backbone.eval()
    return backbone


def _seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's global generator seeded (a head's initial weights), the caller's state kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_study_data(train: FewShotDataset, tests: Sequence[FewShotDataset], s: StudySettings) -> None:
    """``ValueError`` for episodes the data cannot give (too few classes, or images per class, for a setting) or
    test datasets named alike; :func:`transfer_study` calls it before any training."""
    names = [t.name for t in tests]
    if not tests or len(set(names)) != len(names):
        raise ValueError(f"give one or more test datasets with distinct names, got {names}")
    EpisodeSampler(train, n_way=s.protonet_way, n_shot=s.protonet_shot, n_query=s.protonet_query, seed=s.seed)
    EpisodeSampler(train, n_way=s.n_way, n_shot=s.maml_shot, n_query=s.maml_query, seed=s.seed)
    for test in tests:
        for shots in s.shots:
            EpisodeSampler(test, n_way=s.n_way, n_shot=shots, n_query=s.n_query, seed=s.eval_seed)


def _meta_trained(learner: MetaLearner, sampler: EpisodeSampler, steps: int, meta_batch: int, lr: float,
                  device: torch.device, progress: bool) -> MetaLearner:
    learner.to(device).configure_optimizer(OuterOptimizer(lr=lr, schedule="cosine", total_steps=max(steps, 1)))
    meta_train(learner, sampler, settings=TrainSettings(steps=steps, meta_batch=meta_batch, log_every=max(steps, 1)),
               device=device, progress=progress)
    return learner.eval()


def _learners(start: nn.Module, train: FewShotDataset, s: StudySettings, device: torch.device, progress: bool,
              outcome: StudyOutcome, label: str) -> dict[str, Learner]:
    """The six arms from ``start`` (copied for each), named ``"<arm> (<label>)"``."""
    def net() -> nn.Module:
        return copy.deepcopy(start)

    finetune = {"head": s.finetune_head, "steps": s.finetune_steps, "lr": s.finetune_lr,
                "backbone_lr_mult": s.backbone_lr_mult}
    centroid = SimpleShot(net(), feature_transform="CL2N").to(device)
    with outcome.timed(f"base-class mean ({label})"):
        centroid.fit_base_classes(train)
    arms: dict[str, Learner] = {
        "nearest centroid": centroid,
        "linear probe": FrozenFineTune(net(), head="linear", steps=s.probe_steps, lr=s.probe_lr),
        "fine-tune last stage": LastStageFineTune(net(), **finetune),
        "fine-tune all": BackboneFineTune(net(), finetune_backbone="all", **finetune),
    }
    with outcome.timed(f"meta-train ProtoNet ({label})"):
        sampler = EpisodeSampler(train, n_way=s.protonet_way, n_shot=s.protonet_shot, n_query=s.protonet_query,
                                 seed=s.seed)
        arms["ProtoNet"] = _meta_trained(ProtoNet(net()), sampler, s.protonet_steps, 1, s.meta_lr, device, progress)
    with outcome.timed(f"meta-train MAML ({label})"):
        sampler = EpisodeSampler(train, n_way=s.n_way, n_shot=s.maml_shot, n_query=s.maml_query, seed=s.seed)
        maml = _seeded(s.seed, lambda: MAML(net(), n_way=s.n_way, inner_lr=s.maml_inner_lr,
                                            inner_steps=s.maml_inner_steps, eval_inner_steps=s.maml_eval_steps,
                                            first_order=s.maml_first_order, bn_mode="support"))
        arms["MAML"] = _meta_trained(maml, sampler, s.maml_steps, s.maml_meta_batch, s.meta_lr, device, progress)
    return {f"{arm} ({label})": learner.to(device) for arm, learner in arms.items()}


def transfer_study(backbone: nn.Module, train: FewShotDataset, tests: Sequence[FewShotDataset], *,
                   settings: StudySettings, device: torch.device | str = "cpu",
                   progress: bool = False) -> StudyOutcome:
    """Pretrain ``backbone`` on ``train``, build every arm from it and from its initialisation, test them all.

    Args:
        backbone: a randomly initialised :class:`~fewshot.backbones.Backbone` (e.g. Conv4) whose ``forward_features``
            applies its ``stages`` in order (the last-stage arm needs it); not modified.
        train: the training classes (pretraining, base-class mean, meta-training, scratch batch-norm statistics).
        tests: the test datasets (distinct names), e.g. the near domain and a shifted copy of it.
        settings: budgets and test protocol.
        device: where to train and test.
        progress: show progress bars.
    Returns:
        The results, the negative-transfer tests, the pretraining history and the time of every phase.
    """
    device = torch.device(device)
    s = settings
    check_study_data(train, tests, s)
    outcome = StudyOutcome(results=[], pairs=tuple(TransferPair(arm, f"{arm} (pretrained)", f"{arm} (scratch)")
                                                   for arm in ARMS), tests=[], pretrain_history=[])
    with outcome.timed("pretrain"):
        pretrained = pretrain_backbone(copy.deepcopy(backbone), train, epochs=s.pretrain_epochs,
                                       batch_size=s.pretrain_batch_size, lr=s.pretrain_lr, seed=s.seed, device=device,
                                       progress=progress)
    outcome.pretrain_history = pretrained.history
    with outcome.timed("scratch batch-norm statistics"):
        scratch = calibrate_batch_norm(copy.deepcopy(backbone), train, seed=s.seed, device=device)
    built = {**_learners(pretrained.backbone, train, s, device, progress, outcome, "pretrained"),
             **_learners(scratch, train, s, device, progress, outcome, "scratch")}
    learners = {pair_name: built[pair_name] for pair in outcome.pairs for pair_name in (pair.pretrained, pair.scratch)}
    scored = []
    for test in tests:
        for name, learner in learners.items():
            with outcome.timed(f"test {name} on {test.name}"):
                for result in evaluate_settings({name: learner}, test, settings=[(s.n_way, k) for k in s.shots],
                                                n_query=s.n_query, episodes=s.episodes, seed=s.eval_seed,
                                                device=device, progress=progress, train_dataset=train.name,
                                                permutations=0):
                    scored.append((test.name, result))
    outcome.results = pool_same_episodes(scored)
    outcome.tests = transfer_tests(outcome.results, outcome.pairs, alpha=s.alpha)
    return outcome
