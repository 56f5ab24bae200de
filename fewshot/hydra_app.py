"""The Hydra side of the command-line apps (:mod:`fewshot.cli` holds the commands): one entry point per app, the
guard that turns expected failures into one line and exit status 2, the claim and record of a job's output folder,
and joining the process group of a distributed launch."""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fewshot.allocator import tune_allocator
from fewshot.config_types import check_config_types
from fewshot.training.distributed import DistributedContext, init_distributed, shutdown_distributed
from fewshot.training.run_dir import claim_run_dir, remove_if_empty

log = logging.getLogger("fewshot")


@contextmanager
def output_dir() -> Iterator[Path]:
    """This job's output folder, claimed for the block (:func:`~fewshot.training.run_dir.claim_run_dir`: refused if
    it holds files that are not a run, or another process writes it); nothing is written into it before
    :func:`record`, and the log lines of the job until then are kept in memory for its log file."""
    hydra_cfg = HydraConfig.get()
    option = "hydra.run.dir" if hydra_cfg.mode == RunMode.RUN else "hydra.sweep.dir (a job folder)"
    lock = claim_run_dir(Path(hydra_cfg.runtime.output_dir), option=option)
    early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    early.fewshot_run = lock.path
    logging.getLogger().addHandler(early)
    try:
        yield lock.path
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "fewshot_run", None) == lock.path]:
            root.removeHandler(handler)
            handler.close()
        lock.release()


def record(cfg: DictConfig, out_dir: Path) -> None:
    """Once every check passed: what Hydra writes (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``) and
    the log file ``<job name>.log`` in ``out_dir``, which receives every later log line of the job."""
    hydra_cfg = HydraConfig.get()
    folder = out_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")
    handler = logging.FileHandler(out_dir / f"{hydra_cfg.job.name}.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.fewshot_run = out_dir
    root = logging.getLogger()
    for early in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)
                  and getattr(h, "fewshot_run", None) == out_dir]:
        early.setTarget(handler)
        early.flush()  # the lines logged since the folder was claimed
        root.removeHandler(early)
    root.addHandler(handler)


def in_processes(distributed: bool, task: Callable[[DistributedContext | None], None]) -> None:
    """Run ``task(ctx)``: with ``distributed``, ``ctx`` is this process's place in the torch.distributed group of
    torchrun / srun (one process per GPU), left again afterwards; otherwise ``ctx`` is None."""
    if not distributed:
        task(None)
        return
    ctx = init_distributed()
    finished = False
    try:
        hydra_cfg = HydraConfig.get()
        if ctx.world_size > 1 and hydra_cfg.mode == RunMode.RUN and not any(
                o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra):
            raise ValueError("a distributed run needs one run directory shared by its processes: pass "
                             "hydra.run.dir=<dir>")
        task(ctx)
        finished = True
    finally:
        shutdown_distributed(finished=finished)
    if ctx.rank != 0:
        # A finished rank > 0 has written nothing and left the group; at interpreter exit gloo's C++ threads can
        # still abort it in static destructors ("terminate called without an active exception", seen on rank 1
        # under load in CI), failing the launcher. It leaves without running them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _guard(task: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Turn expected failures (bad input, bad config, divergence, out of memory) into a one-line error and exit
    status 2 instead of a traceback from deep inside torch."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> None:
        _TASK_STARTED[0] = True
        try:
            check_config_types(cfg)  # wrong types stop here, before any folder is claimed
            task(cfg)
        except KeyboardInterrupt:
            log.error("interrupted; a training run resumes from its last checkpoint when the same command is "
                      "run again with hydra.run.dir=%s", _job_dir())
            sys.exit(130)
        except torch.cuda.OutOfMemoryError as err:
            _refuse(f"out of GPU memory: {err}\nlower trainer.meta_batch or evaluation.batch_size, or use a "
                    "first-order learner (learner=fomaml)")
        except InstantiationException as err:  # a constructor refused its config: report its own error
            cause = err.__cause__ or err
            where = str(err).strip().splitlines()[-1] if "full_key:" in str(err) else ""
            _refuse(f"{type(cause).__name__}: {cause}" + (f" ({where})" if where else ""))
        except (ValueError, TypeError, KeyError, OSError, FloatingPointError, pickle.UnpicklingError,
                zipfile.BadZipFile, OmegaConfBaseException) as err:  # OSError: downloads, disk
            _refuse(f"{type(err).__name__}: {err}")

    return run


def _refuse(message: str) -> None:
    """Log ``message``, remove the folder Hydra made for the job if the job wrote nothing there (and the ``eval/``
    folder of a run that a refused first re-test leaves empty), exit with 2."""
    log.error("%s", message)
    job = _job_dir()
    if job is not None:
        remove_if_empty(job)
        if not job.exists() and job.parent.name == "eval":
            remove_if_empty(job.parent)
    sys.exit(2)


def _job_dir() -> Path | None:
    """The folder Hydra chose for this job, or None outside a Hydra run (e.g. the guard called from Python)."""
    if not HydraConfig.initialized():
        return None
    folder = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", throw_on_missing=False)
    return Path(folder) if folder else None


#: Set once a task runs: Hydra's exit status 1 before that means the config could not be composed.
_TASK_STARTED = [False]


def app_main(config_name: str, task: Callable[[DictConfig], None]) -> Callable[[], None]:
    """The entry point of one app: Hydra composes ``configs/<config_name>.yaml`` and runs ``task`` under
    :func:`_guard`; a config Hydra cannot compose (unknown key, option or bad value) exits with 2 like every other
    bad input (Hydra itself exits with 1 after printing the error). Before anything else, the entry point applies
    the apps' glibc allocator settings to its own process (:func:`fewshot.allocator.tune_allocator`: mmap off, a
    1 GiB trim threshold; off with ``FEWSHOT_NO_MALLOPT=1``)."""
    app = hydra.main(version_base="1.3", config_path="configs", config_name=config_name)(_guard(task))

    def main() -> None:
        tune_allocator()
        try:
            app()
        except SystemExit as exit_:
            if exit_.code == 1 and not _TASK_STARTED[0]:
                sys.exit(2)
            raise

    main.__name__ = f"{config_name}_main"
    main.__doc__ = f"Entry point of ``fewshot-{config_name}``."
    return main


def command_main(config_name: str, task: Callable[[DictConfig], None]) -> Callable[[list[str]], None]:
    """The entry point of a command that claims no run folder (``data check``, ``episodes export``): the config
    ``configs/<config_name>.yaml`` composed with the given overrides (Hydra's compose API: no output folder, log
    lines to the console), then ``task`` under the same guard as the apps; a config that cannot be composed is
    refused in one line with exit status 2 too. ``--help`` prints the task's docstring and the config."""

    def main(overrides: list[str]) -> None:
        tune_allocator()
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        wants_help = bool({"-h", "--help"} & set(overrides))
        try:
            with hydra.initialize_config_module(config_module="fewshot.configs", version_base="1.3"):
                cfg = hydra.compose(config_name=config_name, overrides=[] if wants_help else overrides)
        except (HydraException, OmegaConfBaseException) as err:  # Hydra's message, its search path left out
            _refuse(f"{type(err).__name__}: {' '.join(str(err).split('Config search path')[0].split())}")
        if wants_help:
            sys.stdout.write(f"{task.__doc__}\n\nconfigs/{config_name}.yaml, composed:\n\n{OmegaConf.to_yaml(cfg)}")
            return
        _guard(task)(cfg)

    main.__name__ = f"{config_name}_main"
    return main
