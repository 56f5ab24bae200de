"""Atomic, safe checkpoints holding everything needed to resume a run bit for bit."""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from episodes.files import atomic_write_bytes


def rng_state() -> dict[str, Any]:
    """Every global RNG state a run may touch (torch CPU and CUDA, numpy, random), as tensors and numbers
    only, so that :func:`load_checkpoint` can read it back without unpickling objects."""
    _, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(keys.tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(pos),
        "numpy_gauss": [int(has_gauss), float(cached_gauss)],
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": gauss_next,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    has_gauss, cached_gauss = state.get("numpy_gauss", (0, 0.0))
    np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), float(cached_gauss)))
    random.setstate((state.get("python_version", 3), tuple(state["python"].tolist()), state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors, numbers, strings, lists and dicts of them) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is truncated, corrupt, or holds objects other than plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .ckpt file from a run's "
                                "checkpoints/ folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise ValueError(f"checkpoint {path} cannot be read safely ({type(err).__name__}: {_reason(err)}). The "
                         "file is truncated, corrupt, or holds code objects; use another checkpoint (last.ckpt / "
                         "best.ckpt) or rerun training") from err
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not the dict that save_checkpoint "
                         "writes; pass a .ckpt file from a run's checkpoints/ folder")
    return state


def load_state_exactly(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: Path, hint: str) -> None:
    """Load ``state`` into ``module`` with every key and shape matching, or raise a short ``ValueError``.

    Raises:
        ValueError: keys missing or unexpected, or shapes that differ (the first few are named), followed by
            ``hint`` (what to do); ``module`` is left unchanged.
    """
    own = module.state_dict()
    problems = [f"{k}: {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} here" for k in own
                if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    problems += [f"{k} missing from the checkpoint" for k in own if k not in state]
    problems += [f"{k} unexpected" for k in state if k not in own]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"checkpoint {source} does not match this learner and backbone: {'; '.join(problems[:3])}"
                         f"{more}; {hint}")
    module.load_state_dict(state)


def _reason(err: Exception) -> str:
    """The useful sentence of a ``torch.load`` error, without its advice to retry with ``weights_only=False``."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return "no detail"
    if not lines[0].startswith("Weights only load failed"):
        return lines[0].split(". ")[0].rstrip(".")
    advice = ("(1)", "(2)", "Please file an issue", "Check the documentation")
    detail = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines[1:] if not line.startswith(advice)]
    found = next((line.split(". ")[0].rstrip(".") for line in detail if line), "unsupported content")
    return f"refused by the safe unpickler: {found}"
