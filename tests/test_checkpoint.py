"""Checkpoint files: exact round trip, atomic writes, clear errors on damaged or malicious files, RNG states."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import files
from episodes.files import atomic_write_bytes
from fewshot.training.checkpoint import (
    load_checkpoint,
    load_state_exactly,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class _Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"learner": {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(7)}, "step": 12, "best": float("nan"),
            "history": [{"step": 1.0, "loss": 0.5}], "config": '{"a": 1}', "rng": rng_state()}


def test_round_trip_is_exact(tmp_path: Path) -> None:
    saved = state()
    save_checkpoint(tmp_path / "c" / "last.ckpt", saved)  # creates the folder
    loaded = load_checkpoint(tmp_path / "c" / "last.ckpt")
    assert torch.equal(loaded["learner"]["w"], saved["learner"]["w"]) and loaded["learner"]["n"].item() == 7
    assert loaded["step"] == 12 and loaded["history"] == saved["history"] and loaded["config"] == '{"a": 1}'
    assert torch.equal(loaded["rng"]["torch"], saved["rng"]["torch"])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.ckpt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"step": 1})

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_interrupt_during_write_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "x.ckpt", b"data")
    assert not list(tmp_path.iterdir())


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.ckpt does not exist.*checkpoints/"):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_file_gives_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, state())
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00not a checkpoint" * 9}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"cannot be read safely .*truncated, corrupt, or holds code objects") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)  # never advise the unsafe retry


def test_a_file_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(ValueError, match="holds a Tensor, not the dict"):
        load_checkpoint(tmp_path / "tensor.ckpt")


@pytest.mark.parametrize("via", ["torch.save", "plain pickle"])
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path, via: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"learner": {"w": torch.zeros(2)}, "step": 1, "x": _Exploit(marker)}
    if via == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="cannot be read safely") as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "weights_only" not in str(info.value)
    if via == "torch.save":  # the payload is live: unsafe loading would have run it
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_rng_states_round_trip_through_a_file(tmp_path: Path) -> None:
    random.gauss(0, 1)  # leaves a cached second normal in both generators: part of the state
    np.random.standard_normal()
    save_checkpoint(tmp_path / "rng.ckpt", {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.ckpt")["rng"])
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


def test_load_state_exactly_names_the_mismatches_and_changes_nothing(tmp_path: Path) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    other = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4)).state_dict()
    with pytest.raises(ValueError, match=r"x.ckpt does not match this learner and backbone: 0.weight: \(4, 2\) in the "
                                         r"checkpoint, \(3, 2\) here; .* \(and 3 more\); use the right config"):
        load_state_exactly(module, other, source=tmp_path / "x.ckpt", hint="use the right config")
    partial = {k: v for k, v in module.state_dict().items() if k != "1.running_var"}
    with pytest.raises(ValueError, match=r"1.running_var missing from the checkpoint; use"):
        load_state_exactly(module, partial, source=tmp_path / "x.ckpt", hint="use")
    with pytest.raises(ValueError, match=r"extra unexpected; use"):
        load_state_exactly(module, {**module.state_dict(), "extra": torch.zeros(1)}, source=tmp_path / "x.ckpt",
                           hint="use")
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    same = {k: v + 1 for k, v in before.items() if v.is_floating_point()} | {"1.num_batches_tracked": torch.tensor(5)}
    load_state_exactly(module, same, source=tmp_path / "x.ckpt", hint="use")
    assert torch.equal(module.state_dict()["0.bias"], before["0.bias"] + 1)
