"""Data-parallel meta-training, pretraining and evaluation over ``torch.distributed`` (launched by torchrun).

Every process (rank) holds the same learner. Each meta-training step's global episode ids
``s*meta_batch .. (s+1)*meta_batch - 1`` are cut into ``world_size`` equal slices and rank ``r`` samples
the ``r``-th; the meta-gradients (and the logged loss and accuracy) are averaged across ranks with one
all-reduce, so every rank takes the same optimizer step as one process on the whole meta-batch would
(equal to float rounding). Only rank 0 writes checkpoints, ``metrics.csv`` and logs.

Batch norm. MAML normalises each task on its own inside its inner loop, so sharding tasks changes
nothing. ProtoNet's ``meta_loss`` (and supervised pretraining) run one backbone call over the whole
batch in train mode: its batch-norm statistics span every task of the meta-batch. With sharded tasks
:class:`~fewshot.training.collectives.GlobalBatchNorm` keeps that meaning: train-mode batch norm takes its
mean and variance over the global batch (all-reduced sums, differentiable), so a sharded run equals the
one-process run, running statistics included. It is on by default for
:class:`~fewshot.learners.base.EmbeddingLearner` s.

Evaluation (:func:`evaluate_distributed`) gives each rank a contiguous block of the same episode batches
(and image-embedding chunks) one process would use, and gathers the per-episode accuracies in order:
the mean and interval equal the one-process numbers exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from episodes import FewShotDataset
from episodes.sampler import EpisodeSampler
from fewshot.evaluation.harness import evaluate_settings
from fewshot.evaluation.results import EvaluationResult
from fewshot.learners.base import EmbeddingLearner, Learner, MetaLearner
from fewshot.training.collectives import GlobalBatchNorm, GradientAverager, broadcast_state
from fewshot.training.meta_train import TrainResult, TrainSettings, Validator, meta_train
from fewshot.training.tensorboard import TensorBoardLog

__all__ = [
    "DistributedContext",
    "RankShards",
    "all_gather_rows",
    "distributed_meta_train",
    "evaluate_distributed",
    "init_distributed",
    "shutdown_distributed",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a distributed run: ``rank`` of ``world_size``, its ``device`` and ``backend``.
    ``world_size == 1`` (no process group) is a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes files and logs."""
        return self.rank == 0


def init_distributed(*, backend: Literal["auto", "gloo", "nccl"] = "auto") -> DistributedContext:
    """Join the process group described by the environment; without one, return a one-process context.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Under SLURM
    (``srun`` with several tasks, e.g. the submitit launcher's ``tasks_per_node``) ``SLURM_PROCID``,
    ``SLURM_NTASKS`` and ``SLURM_LOCALID`` stand in for the first three; ``MASTER_ADDR``/``MASTER_PORT``
    must be exported (``configs/hydra/launcher/slurm.yaml`` does it in ``setup``).
    ``backend="auto"`` picks nccl with one GPU per local rank when CUDA is available, gloo on CPU.
    """
    env = os.environ
    if "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif int(env.get("SLURM_NTASKS", "1") or "1") > 1:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    else:
        return DistributedContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        rank, world_size, local_rank = (int(env[name]) for name in names)
    except (KeyError, ValueError) as err:
        raise RuntimeError(f"{names[1]} is set but {names[0]}/{names[2]} are missing or not integers ({err}); "
                           "launch with `torchrun --nproc_per_node=N ...` or `srun`, which set them") from err
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in env:
            raise RuntimeError(f"{name} is not set: torchrun sets it; under SLURM export it before srun, e.g. "
                               "MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'gloo' or 'nccl'")
    if backend == "nccl":
        if torch.cuda.device_count() <= local_rank:
            raise RuntimeError(f"backend nccl needs a GPU for local rank {local_rank}, but torch sees "
                               f"{torch.cuda.device_count()}; use fewer processes per node or backend='gloo'")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                              backend=backend)


def shutdown_distributed(*, finished: bool) -> None:
    """Leave the process group (no-op in a one-process run). After a run every process ``finished``, they first
    wait for each other, so that none tears its connections down while another still uses them (a gloo process
    that exits first can abort its peer); after an error they leave at once (a barrier could wait forever)."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def _synced(learner: MetaLearner, ctx: DistributedContext, *, sync_batch_norm: bool) -> Iterator[None]:
    """Broadcast rank 0's state, then average meta-gradients (and batch-norm statistics if asked) in the block."""
    if ctx.world_size == 1:
        yield
        return
    broadcast_state(learner)
    learner.grad_sync = GradientAverager(world_size=ctx.world_size)
    try:
        with GlobalBatchNorm() if sync_batch_norm else nullcontext():
            yield
    finally:
        learner.grad_sync = None


def distributed_meta_train(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    *,
    settings: TrainSettings,
    ctx: DistributedContext,
    validate: Validator | None = None,
    run_dir: Path | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    sync_batch_norm: bool | Literal["auto"] = "auto",
    tensorboard: TensorBoardLog | None = None,
) -> TrainResult:
    """:func:`~fewshot.training.meta_train.meta_train` on every rank of ``ctx``, each on its share of every
    meta-batch (``settings.meta_batch`` is the global number of tasks per step; it must divide evenly).

    Args:
        learner: configured meta-learner on ``ctx.device``; rank 0's parameters are broadcast first.
        sampler: the same seeded training sampler on every rank.
        settings, validate, run_dir, config, progress, tensorboard: as for ``meta_train`` (files and logs from rank 0;
            ``validate`` runs on every rank: build it on :func:`evaluate_distributed` to share the work).
        sync_batch_norm: normalise train-mode batch norm over the global meta-batch (:class:`GlobalBatchNorm`);
            ``"auto"`` does so for embedding learners (ProtoNet), whose ``meta_loss`` embeds all tasks in one
            call, and not for MAML, which normalises per task (never turn it on for MAML: its inner loop's
            per-task batch norm would then mix tasks of different ranks).
    Returns:
        the same :class:`TrainResult` on every rank.
    """
    sync = isinstance(learner, EmbeddingLearner) if sync_batch_norm == "auto" else bool(sync_batch_norm)
    with _synced(learner, ctx, sync_batch_norm=sync):
        result = meta_train(learner, sampler, settings=settings, validate=validate, run_dir=run_dir, config=config,
                            device=ctx.device, progress=progress, rank=ctx.rank, world_size=ctx.world_size,
                            tensorboard=tensorboard)
    if ctx.world_size > 1:
        dist.barrier()  # rank 0's last checkpoints are on disk before any rank reads them
    return result


def all_gather_rows(local: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) tensor in rank order -> (sum n_r, ...); n_r may differ."""
    if ctx.world_size == 1:
        return local
    device = ctx.device if ctx.backend == "nccl" else local.device
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    counts = [int(s) for s in sizes]
    padded = local.new_zeros((max(counts), *local.shape[1:]), device=device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]).to(local.device)


@dataclass(frozen=True)
class RankShards:
    """The harness's :class:`~fewshot.evaluation.harness.Shards` for the ranks of ``ctx``: contiguous blocks
    that differ in size by at most one, gathered in rank order."""

    ctx: DistributedContext

    def block(self, count: int) -> tuple[int, int]:
        per, extra = divmod(count, self.ctx.world_size)
        lo = self.ctx.rank * per + min(self.ctx.rank, extra)
        return lo, lo + per + (self.ctx.rank < extra)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(local, self.ctx)


def evaluate_distributed(
    learners: Mapping[str, Learner],
    dataset: FewShotDataset,
    *,
    ctx: DistributedContext,
    settings: Sequence[tuple[int, int]],
    n_query: int,
    episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    embed_once: bool = True,
    embed_chunk: int | None = None,
    train_dataset: str | None = None,
    permutations: int = 10_000,
) -> list[EvaluationResult]:
    """:func:`~fewshot.evaluation.harness.evaluate_settings` with the work shared by the ranks of ``ctx``.

    Rank ``r`` scores a contiguous block of the same ``batch_size`` episode batches (and embeds a block of the
    same ``embed_chunk`` image chunks) that one process would; per-episode accuracies (and features) are
    all-gathered in order, so every rank returns results identical to the one-process call, bit for bit.
    Call it on every rank, with learners on ``ctx.device``.
    """
    return evaluate_settings(learners, dataset, settings=settings, n_query=n_query, episodes=episodes, seed=seed,
                             batch_size=batch_size, device=ctx.device, progress=False, embed_once=embed_once,
                             embed_chunk=embed_chunk, train_dataset=train_dataset, permutations=permutations,
                             shards=RankShards(ctx))
