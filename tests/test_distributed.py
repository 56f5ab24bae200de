"""Distributed training and evaluation: 2 gloo processes on the CPU against one process on the whole batch.

All exactness checks run in float64 with SGD so that the only difference between the two runs is the order
of floating-point sums (one backward over 32 tasks vs two over 16, then an all-reduce): relative differences
are ~1e-15 per operation, far below the 1e-9 tolerance, while any real mistake (a missing average, a wrong
share of episode ids, batch-norm statistics over half the batch) changes parameters by ~1e-3 or more.
(Adam is not used there: it divides by sqrt(v), so a gradient that is zero in theory but rounding noise in
practice, e.g. a bias just before batch norm, becomes a full learning-rate step whose sign no reduction order
can reproduce.)
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from episodes import FewShotDataset
from episodes.sampler import EpisodeSampler
from fewshot.learners import MAML, OuterOptimizer, ProtoNet
from fewshot.learners.base import MetaLearner
from fewshot.training import distributed as fdist
from fewshot.training.meta_train import TrainSettings, meta_train
from fewshot.training.pretrain import pretrain_backbone

STEPS, META_BATCH, EPISODES, EVAL_BATCH = 3, 32, 10, 3
SLURM_YAML = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "hydra" / "launcher" / "slurm.yaml"


class TinyNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> maxpool -> flatten on 1x8x8 images; feature_dim = 64; float64."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten())
        self.feature_dim = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.to(torch.float64))


def tiny_dataset() -> FewShotDataset:
    """10 classes x 8 images: a fixed random template per class plus pixel noise (uint8 1x8x8)."""
    g = torch.Generator().manual_seed(7)
    templates = torch.rand(10, 1, 8, 8, generator=g) * 200
    labels = torch.arange(10).repeat_interleave(8)
    images = (templates[labels] + 55 * torch.rand(80, 1, 8, 8, generator=g)).to(torch.uint8)
    return FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(10)], name="tiny")


def build(kind: str) -> MetaLearner:
    torch.manual_seed(0)
    if kind == "protonet":
        learner: MetaLearner = ProtoNet(TinyNet())
    else:
        learner = MAML(TinyNet(), n_way=5, inner_lr=0.1, inner_steps=1, eval_inner_steps=2,
                       first_order=kind == "fomaml", batched=False)
    learner.double()
    learner.configure_optimizer(OuterOptimizer(name="sgd", lr=0.1, momentum=0.9))
    return learner


def train(kind: str, ctx: fdist.DistributedContext, *, run_dir: Path | None = None,
          sync_batch_norm: bool | str = "auto") -> dict:
    learner = build(kind)
    sampler = EpisodeSampler(tiny_dataset(), n_way=5, n_shot=1, n_query=2, seed=3)
    settings = TrainSettings(steps=STEPS, meta_batch=META_BATCH, log_every=1)
    result = fdist.distributed_meta_train(learner, sampler, settings=settings, ctx=ctx, run_dir=run_dir,
                                          progress=False, sync_batch_norm=sync_batch_norm)
    return {"state": learner.state_dict(), "history": result.history}


def evaluate(ctx: fdist.DistributedContext, *, episodes: int = EPISODES, batch_size: int = EVAL_BATCH,
             embed_chunk: int = 16) -> list[dict]:
    learners = {"protonet": build("protonet"), "maml": build("maml")}
    results = fdist.evaluate_distributed(learners, tiny_dataset(), ctx=ctx, settings=[(5, 1), (5, 2)], n_query=2,
                                         episodes=episodes, seed=11, batch_size=batch_size, embed_chunk=embed_chunk,
                                         permutations=100)
    return [r.to_dict() for r in results]


def pretrain(distributed: bool) -> dict:
    """80 images in batches of 13 (the last of 2): shards of 7 and 6 rows, then 1 and 1."""
    torch.manual_seed(0)
    result = pretrain_backbone(TinyNet().double(), tiny_dataset(), epochs=2, batch_size=13, lr=0.05, seed=5,
                               progress=False, distributed=distributed)
    return {"backbone": result.backbone.state_dict(), "head": result.head.state_dict(), "history": result.history}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # the pretraining head is built with the default dtype
    ctx = fdist.init_distributed(backend="gloo")
    finished = False
    try:
        runs = Path(out) / "runs"
        runs.mkdir(exist_ok=True)
        outcome = {
            "ctx": (ctx.rank, ctx.world_size),
            "maml": train("maml", ctx, run_dir=runs),
            "fomaml": train("fomaml", ctx),
            "protonet": train("protonet", ctx),
            "protonet_unsynced": train("protonet", ctx, sync_batch_norm=False),
            "evaluation": evaluate(ctx),
            "evaluation_one_batch": evaluate(ctx, episodes=4, batch_size=32, embed_chunk=4096),  # rank 1 idle
            "pretrain": pretrain(True),
        }
        torch.save(outcome, Path(out) / f"rank{rank}.pt")
        finished = True
    finally:
        fdist.shutdown_distributed(finished=finished)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every distributed scenario, run once by 2 spawned gloo processes; one result dict per rank."""
    out = tmp_path_factory.mktemp("dist")
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    return [torch.load(out / f"rank{r}.pt", weights_only=False) | {"dir": out} for r in range(2)]


@pytest.fixture()
def float64():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


def assert_states_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", ["maml", "fomaml", "protonet"])
def test_two_ranks_of_16_tasks_equal_one_process_of_32(two_ranks: list[dict], kind: str, float64: None) -> None:
    reference = train(kind, fdist.DistributedContext())
    assert [r["ctx"] for r in two_ranks] == [(0, 2), (1, 2)]
    for rank in two_ranks:
        # parameters and, for ProtoNet, batch-norm running statistics (global-batch statistics on both ranks)
        assert_states_close(rank[kind]["state"], reference["state"])
        for got, want in zip(rank[kind]["history"], reference["history"], strict=True):
            assert got.keys() == want.keys()
            assert got["accuracy"] == pytest.approx(want["accuracy"], rel=1e-12)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-9)
            # MAML's task-by-task backward sums the logged loss in the images' dtype (float32 here)
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    moved = max((reference["state"][k] - build(kind).state_dict()[k]).abs().max() for k in reference["state"])
    assert moved > 1e-3  # training changed the parameters, so equality is not trivial


def test_per_rank_batch_norm_would_differ(two_ranks: list[dict], float64: None) -> None:
    """Without global batch-norm statistics, ProtoNet's sharded run is a different objective."""
    reference = train("protonet", fdist.DistributedContext())["state"]
    unsynced = two_ranks[0]["protonet_unsynced"]["state"]
    assert max((unsynced[k] - reference[k]).abs().max() for k in reference) > 1e-6


def test_only_rank_zero_writes(two_ranks: list[dict]) -> None:
    runs = two_ranks[0]["dir"] / "runs"
    rows = (runs / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + STEPS  # a header and one row per step, not one per rank
    assert (runs / "checkpoints" / "last.ckpt").is_file()


def test_evaluation_equals_one_process_exactly(two_ranks: list[dict], float64: None) -> None:
    reference = evaluate(fdist.DistributedContext())
    for rank in two_ranks:
        assert rank["evaluation"] == reference  # same per-episode accuracies in the same order, same mean and CI
    assert len(reference[0]["learners"][0]["accuracies"]) == EPISODES
    # fewer episode batches (and image chunks) than processes: the idle rank still joins the gathers
    one_batch = evaluate(fdist.DistributedContext(), episodes=4, batch_size=32, embed_chunk=4096)
    assert [rank["evaluation_one_batch"] for rank in two_ranks] == [one_batch, one_batch]


def test_sharded_pretraining_equals_one_process(two_ranks: list[dict], float64: None) -> None:
    reference = pretrain(False)
    for rank in two_ranks:
        assert_states_close(rank["pretrain"]["backbone"], reference["backbone"])
        assert_states_close(rank["pretrain"]["head"], reference["head"])
        for got, want in zip(rank["pretrain"]["history"], reference["history"], strict=True):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-9)
            assert got["accuracy"] == want["accuracy"]


def test_rank_takes_its_slice_of_each_meta_batch_and_writes_nothing(tmp_path: Path) -> None:
    seen: list[list[int]] = []

    class Recorder(EpisodeSampler):
        def batch(self, episode_ids):
            seen.append([int(i) for i in episode_ids])
            return super().batch(episode_ids)

    learner = build("fomaml")
    sampler = Recorder(tiny_dataset(), n_way=5, n_shot=1, n_query=2, seed=3)
    meta_train(learner, sampler, settings=TrainSettings(steps=2, meta_batch=4, log_every=1), run_dir=tmp_path,
               progress=False, rank=1, world_size=2)
    assert seen == [[2, 3], [6, 7]]
    assert list(tmp_path.iterdir()) == []


def test_meta_batch_must_divide_among_ranks() -> None:
    sampler = EpisodeSampler(tiny_dataset(), n_way=5, n_shot=1, n_query=2, seed=3)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        meta_train(build("fomaml"), sampler, settings=TrainSettings(steps=1, meta_batch=3), progress=False,
                   rank=0, world_size=2)


def test_init_without_launcher_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    ctx = fdist.init_distributed()
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)


def test_init_under_slurm_needs_a_master_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        fdist.init_distributed(backend="gloo")
    monkeypatch.setenv("SLURM_PROCID", "one")
    with pytest.raises(RuntimeError, match="not integers"):
        fdist.init_distributed(backend="gloo")


def test_slurm_launcher_config_composes_into_an_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               ) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the cluster extra: "
                        "pip install 'fewshot[cluster]' (hydra-submitit-launcher)")
    import submitit
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.errors import ConfigCompositionException
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="fewshot.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
    # composing checks every key against the plugin's schema: the same file with a misspelt key fails
    configs = tmp_path / "configs"
    (configs / "hydra" / "launcher").mkdir(parents=True)
    (configs / "config.yaml").write_text("x: 1\n")
    (configs / "hydra" / "launcher" / "typo.yaml").write_text(SLURM_YAML.read_text() + "gpu_count: 4\n")
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"), \
            pytest.raises(ConfigCompositionException, match="gpu_count"):
        compose("config", overrides=["hydra/launcher=typo"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node) == (4, 4)
    # the plugin's own mapping of these keys onto a submitit executor, which writes the sbatch script
    fake_srun = tmp_path / "bin" / "srun"
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\n")
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(launcher, resolve=False)
    params.update(submitit_folder=str(tmp_path / "submitit"), name="fewshot")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params.pop("_target_")
    params["tasks_per_node"] = launcher.tasks_per_node
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m fewshot", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --time=240", "export MASTER_ADDR=$(scontrol show hostnames"):
        assert line in script
