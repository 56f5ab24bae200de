"""TensorBoard event files beside ``metrics.csv``: a run's scalars, hyper-parameters and plots.

Needs the ``tensorboard`` package (``pip install 'fewshot[tensorboard]'``); :func:`tensorboard_available` says
whether it is installed. The app builds a :class:`TensorBoardLog` for a run folder (``logging.tensorboard``: on by
default where the package is installed) and hands it to the trainers through their ``Run``.

Each part of a run writes its own event file in the run folder (TensorBoard shows every event file of a folder
as one run): ``meta_train`` (one point per ``metrics.csv`` row, tags ``meta_train/<column>``), ``pretrain`` (one
per epoch), ``test`` (the test accuracies), ``plots`` (the run's PNG figures) and ``hparams`` (the run's
configuration, for TensorBoard's HParams tab). Writing a part again replaces its file: a meta-training resumed
from a checkpoint rewrites ``meta_train`` from the checkpoint's history, as it rewrites ``metrics.csv``, so the
event files hold every step once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

#: The scalar tags a run may write that TensorBoard's HParams tab shows beside the configuration.
HPARAM_METRICS = ("meta_train/loss", "meta_train/accuracy", "meta_train/val_accuracy", "pretrain/loss",
                  "pretrain/accuracy")
#: How TensorBoard names its event files (the rest of a name: time, host, process, part).
EVENT_FILE_PREFIX = "events.out.tfevents."


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package is installed (``torch.utils.tensorboard`` needs it)."""
    return importlib.util.find_spec("tensorboard") is not None


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested configuration as ``{"trainer.steps": 100, ...}``: numbers, booleans and strings as they are,
    lists as their text; ``None`` values left out (TensorBoard's hyper-parameters take no null)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


class TensorBoardLog:
    """The TensorBoard event files of one run folder (see the module docstring for their layout).

    Args:
        log_dir: the run folder (where ``metrics.csv`` is).
        hparams: the run's configuration (nested; see :func:`flatten`), written at once.
        metrics: scalar tags shown with the hyper-parameters (default :data:`HPARAM_METRICS`).
        flush_secs: how often pending events are written to disk.
    Raises:
        ImportError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, *, log_dir: Path, hparams: Mapping[str, Any], metrics: Sequence[str] = HPARAM_METRICS,
                 flush_secs: int = 10) -> None:
        if not tensorboard_available():
            raise ImportError("TensorBoard logging needs the tensorboard package: pip install 'fewshot[tensorboard]' "
                              "(or turn it off with logging.tensorboard=false)")
        if flush_secs < 1:
            raise ValueError(f"flush_secs must be >= 1, got {flush_secs}")
        from torch.utils.tensorboard import SummaryWriter, summary

        self._summary_writer = SummaryWriter
        self.log_dir, self.flush_secs = Path(log_dir), flush_secs
        self._writers: dict[str, Any] = {}
        experiment, start, end = summary.hparams(flatten(hparams), dict.fromkeys(metrics, 0.0))
        writer = self._restart("hparams").file_writer
        for entry in (experiment, start, end):
            writer.add_summary(entry)

    def _restart(self, part: str) -> Any:
        """A new event file for ``part``, in place of the ones written for it before (this run or an earlier one)."""
        if part in self._writers:
            self._writers.pop(part).close()
        for old in self.log_dir.glob(f"{EVENT_FILE_PREFIX}*.{part}"):
            old.unlink()
        self._writers[part] = self._summary_writer(str(self.log_dir), flush_secs=self.flush_secs,
                                                   filename_suffix=f".{part}")
        return self._writers[part]

    def write_rows(self, part: str, rows: Iterable[Mapping[str, float]]) -> None:
        """Replace ``part``'s scalars by ``rows`` (a history: each row's ``step`` and values); later
        :meth:`add_row` calls append to it."""
        self._restart(part)
        for row in rows:
            self.add_row(part, row)

    def add_row(self, part: str, row: Mapping[str, float]) -> None:
        """One history row: scalar ``<part>/<key>`` at step ``row["step"]`` for each other numeric value."""
        writer = self._writers.get(part) or self._restart(part)
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                writer.add_scalar(f"{part}/{key}", float(value), step)

    def write_scalars(self, part: str, values: Mapping[str, float], *, step: int = 0) -> None:
        """Replace ``part``'s scalars by ``values`` (tags ``<part>/<key>``) at ``step``."""
        self.write_rows(part, [{"step": float(step), **values}])

    def write_images(self, part: str, paths: Iterable[Path]) -> None:
        """Replace ``part``'s images by the image files ``paths`` (tag ``<part>/<file stem>``)."""
        writer = self._restart(part)
        for path in paths:
            with Image.open(path) as image:
                writer.add_image(f"{part}/{Path(path).stem}", np.asarray(image.convert("RGB")), 0, dataformats="HWC")

    def close(self) -> None:
        """Write what is pending and close the files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
