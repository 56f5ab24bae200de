"""Config values of the wrong type are refused with the key and the expected type, before anything runs; every
shipped config passes the check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from test_cli import fewshot, output

from fewshot.config_types import check_config_types

CONFIGS = Path(__file__).resolve().parent.parent / "fewshot" / "configs"


@pytest.fixture(scope="module", autouse=True)
def hydra_context() -> Iterator[None]:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"experiment={o}" for o in options("experiment")]
                         + [f"{g}={o}" for g in ("learner", "backbone", "trainer", "episode") for o in options(g)])
def test_every_shipped_config_passes(override: str) -> None:
    check_config_types(compose("train", overrides=[override]))


def test_the_other_apps_pass() -> None:
    for name, overrides in (("eval", ["run=/a/run"]), ("pretrain", []), ("report", ["dir=/a"])):
        check_config_types(compose(name, overrides=overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.steps=abc", "trainer.steps='abc': expected int"),
    ("seed=abc", "seed='abc': expected int"),
    ("trainer.optimizer.lr=fast", "trainer.optimizer.lr='fast': expected float"),
    ("learner.distance=manhattan", "learner.distance='manhattan': expected one of 'euclidean', 'cosine'"),
    ("backbone.hidden=1.5", "backbone.hidden=1.5: expected int"),
    ("progress=maybe", "progress='maybe': expected bool"),
    ("evaluation.settings=[[5,x]]", "evaluation.settings=[[5, 'x']]"),
    ("trainer.optimizer.grad_clip=big", "trainer.optimizer.grad_clip='big'"),
])
def test_a_wrong_type_names_the_key_and_the_type(override: str, message: str) -> None:
    with pytest.raises(TypeError) as info:
        check_config_types(compose("train", overrides=[override]))
    assert str(info.value).startswith(message)


def test_numbers_are_accepted_where_floats_are_expected() -> None:
    check_config_types(compose("train", overrides=["trainer.optimizer.lr=1", "trainer.optimizer.grad_clip=null"]))


@pytest.mark.slow
def test_cli_refuses_a_wrong_type_before_creating_the_run_directory(tmp_path: Path) -> None:
    done = fewshot("train", "trainer.steps=abc", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2
    assert output(done).strip().splitlines()[-1].endswith("TypeError: trainer.steps='abc': expected int")
    assert not (tmp_path / "run").exists()
