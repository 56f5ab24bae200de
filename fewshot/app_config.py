"""From a composed config to the library's objects, for the command-line apps (:mod:`fewshot.cli`): the device,
a dataset's class split, the seeded learner (with its backbone's pretrained weights and input normalisation), the
test's episodes file and variable-episode distribution, and the TensorBoard switch. Each refuses a bad value with an
error that says what to pass."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from episodes import FewShotDataset
from episodes.episode_file import EpisodesFile, read_episodes_file
from episodes.variable import VariableShape
from fewshot.backbones import load_pretrained, normalise_for
from fewshot.learners import Learner
from fewshot.training import Run
from fewshot.training.tensorboard import HPARAM_METRICS, TensorBoardLog, tensorboard_available

__all__ = ["VARIABLE_ACCURACY_TAG", "accuracy_tag", "build_learner", "device_of", "episodes_file_of", "load_split",
           "open_tensorboard", "tensorboard_wanted", "variable_shape_of"]

log = logging.getLogger("fewshot")


def device_of(name: str) -> torch.device:
    """The device of the key ``device``: ``auto`` (CUDA where torch sees a GPU, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:<index>``; anything else, or CUDA without a GPU, is refused saying what to pass."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name} is not supported; use device=auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} asked for, but torch sees no CUDA GPU; use device=cpu or device=auto")
    return device


def load_split(data: DictConfig, role: str) -> FewShotDataset | None:
    """The class split ``data.splits[role]`` (train/val/test) of a dataset config, or None where it is null."""
    split = data.splits[role]
    return None if split is None else hydra.utils.instantiate(data.loader, split=split)


def build_learner(cfg: DictConfig, device: torch.device, *datasets: FewShotDataset | None,
                  ) -> tuple[Learner, list[FewShotDataset | None]]:
    """The seeded learner of ``cfg``, and ``datasets`` fed the way its backbone's pretrained weights (if any: loaded
    from ``backbone_weights``, or the timm/torchvision model's own) were trained (their ``spec``: normalisation,
    channels, size)."""
    torch.manual_seed(cfg.seed)  # the initial weights are part of the seeded run
    backbone = hydra.utils.instantiate(cfg.backbone)
    if cfg.backbone_weights is not None:
        log.info("backbone weights: %s", load_pretrained(backbone, Path(hydra.utils.to_absolute_path(
            cfg.backbone_weights))))
    if cfg.backbone_weights is not None or getattr(backbone, "pretrained", False):
        datasets = tuple(None if d is None else normalise_for(d, backbone.spec) for d in datasets)
    return hydra.utils.instantiate(cfg.learner, backbone=backbone).to(device), list(datasets)


def episodes_file_of(cfg: DictConfig, test_set: FewShotDataset) -> EpisodesFile | None:
    """The episodes file of ``evaluation.episodes_file`` (None when unset), checked against ``test_set`` and the
    evaluation settings, so that a file that would fail is refused before anything runs."""
    e = cfg.evaluation
    path = e.get("episodes_file")
    if path is None:
        return None
    if not isinstance(path, str):
        raise TypeError(f"evaluation.episodes_file={path!r}: expected the path of an episodes file, or null")
    episodes = read_episodes_file(hydra.utils.to_absolute_path(path))
    episodes.check_dataset(test_set)
    episodes.select([(int(w), int(k)) for w, k in e.settings], n_query=e.n_query, episodes=e.episodes)
    return episodes


def variable_shape_of(cfg: DictConfig) -> VariableShape | None:
    """The variable-episode distribution of ``evaluation.variable`` (``evaluation=meta_dataset``), or None."""
    node = cfg.evaluation.get("variable")
    if node is None:
        return None
    shape = hydra.utils.instantiate(node)
    if not isinstance(shape, VariableShape):
        raise TypeError(f"evaluation.variable must build an episodes.variable.VariableShape (or be null), got a "
                        f"{type(shape).__name__}")
    return shape


def tensorboard_wanted(cfg: DictConfig) -> bool:
    """Whether a run writes TensorBoard event files (``logging.tensorboard``: auto = where tensorboard is
    installed, true, false); true without the package is refused."""
    mode = cfg.logging.tensorboard
    if mode is True and not tensorboard_available():
        raise ValueError("logging.tensorboard=true but the tensorboard package is not installed: pip install "
                         "'fewshot[tensorboard]', or set logging.tensorboard=auto (on where it is installed)")
    return mode is True or (mode == "auto" and tensorboard_available())


def accuracy_tag(n_way: int, n_shot: int) -> str:
    """The TensorBoard scalar (part ``test``) of a setting's test accuracy."""
    return f"accuracy_{n_way}way_{n_shot}shot"


#: The TensorBoard scalar (part ``test``) of the test accuracy on the variable episodes of ``evaluation.variable``.
VARIABLE_ACCURACY_TAG = "accuracy_variable"


def open_tensorboard(cfg: DictConfig, run: Run) -> TensorBoardLog | None:
    """The run's TensorBoard log (in the writing process, where ``logging.tensorboard`` asks for it), its HParams
    tab showing the training metrics and every test setting's accuracy."""
    if not (run.writer and run.run_dir is not None and tensorboard_wanted(cfg)):
        return None
    settings = cfg.get("evaluation", {}).get("settings", [])
    tests = [f"test/{accuracy_tag(int(w), int(k))}" for w, k in settings]
    tests += [f"test/{VARIABLE_ACCURACY_TAG}"] if cfg.get("evaluation", {}).get("variable") is not None else []
    return TensorBoardLog(log_dir=run.run_dir, hparams=run.config, metrics=[*HPARAM_METRICS, *tests])
