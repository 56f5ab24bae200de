"""The reproduction ledger: its entries are complete and valid, every experiment file that cites a paper names one,
and every table marks a cell reproduced, above or below its published number."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_cli import TINY, dataset_args, fewshot, folders, output  # noqa: F401 (fixtures)

from fewshot.evaluation import EpisodeSpec, EvaluationResult, LearnerResult, markdown_table
from fewshot.evaluation.ledger import _entry, ledger_entry, load_ledger, verdict

EXPERIMENTS = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "experiment"


def test_verdicts_match_hand_computations() -> None:
    # 98.54 ± 0.18 -> [98.36, 98.72]: 98.8 lies above the interval, so the run is below the paper by 0.26
    below = verdict(0.9854, 0.0018, 98.8)
    assert (below.status, round(below.gap, 2), str(below)) == ("below", -0.26, "paper 98.8: below by 0.26")
    above = verdict(0.99, 0.001, 98.8)
    assert (above.status, str(above)) == ("above", "paper 98.8: above by 0.20")
    assert verdict(0.988, 0.002, 98.8).status == "reproduced"
    assert verdict(0.986, 0.002, 98.8).status == "reproduced"  # on the interval's edge


def test_every_entry_is_complete_and_valid() -> None:
    ledger = load_ledger()
    assert len(ledger) >= 19
    for key, entry in ledger.items():
        assert entry.id == key and entry.accuracy, key
        assert entry.dataset in ("omniglot/vinyals", "mini-imagenet"), (key, entry.dataset)
        assert set(entry.ci95) <= set(entry.accuracy), key


@pytest.mark.parametrize(("raw", "message"), [
    ({"method": "x"}, "missing"),
    ({**yaml.safe_load("{method: m, paper: p, table: t, dataset: d, backbone: b, image_size: 28, n_query: null, "
                       "episodes: null, transductive: false, batch_norm: b, test_time_augmentation: false, "
                       "checked: null}"), "accuracy": {"5-way": 98.0}}, "written like 5w1s"),
    ({**yaml.safe_load("{method: m, paper: p, table: t, dataset: d, backbone: b, image_size: 28, n_query: null, "
                       "episodes: null, transductive: false, batch_norm: b, test_time_augmentation: false, "
                       "checked: null}"), "accuracy": {"5w1s": 0.988}, "typo": 1}, "unknown \\['typo'\\]"),
])
def test_malformed_entries_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _entry("bad", raw)


def test_an_unknown_id_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="protonet-omniglot"):
        ledger_entry("protonet-omniglott")


def experiment_ledgers() -> dict[str, str | None]:
    return {p.stem: (yaml.safe_load(p.read_text()) or {}).get("ledger") for p in sorted(EXPERIMENTS.glob("*.yaml"))}


def test_experiment_files_name_existing_entries_and_every_entry_is_used() -> None:
    named = experiment_ledgers()
    ledger = load_ledger()
    assert {v for v in named.values() if v is not None} == set(ledger)
    for experiment, key in named.items():
        text = (EXPERIMENTS / f"{experiment}.yaml").read_text()
        if key is None:
            assert "published: none" in text, f"{experiment} names no ledger entry and does not say why"


def test_markdown_cells_carry_the_verdict() -> None:
    acc = torch.full((4,), 0.9854, dtype=torch.float64)
    spec = EpisodeSpec(dataset="omniglot/vinyals/test", n_way=5, n_shot=1, n_query=15, episodes=4, seed=0)
    cell = LearnerResult("protonet", acc, 0.9854, 0.0018, False, "protonet-omniglot")
    table = markdown_table(EvaluationResult(spec, (cell,), (), None, "omniglot/vinyals/test"))
    assert "| protonet | 98.54 ± 0.18 (paper 98.8: below by 0.26) |" in table
    other = EvaluationResult(EpisodeSpec("mini-imagenet/test", 5, 1, 15, 4, 0), (cell,), (), None,
                             "mini-imagenet/test")
    assert "paper" not in markdown_table(other)  # the entry has no number for another dataset


@pytest.mark.slow
def test_train_refuses_an_unknown_ledger_id_before_anything_runs(folders: tuple[Path, Path],  # noqa: F811
                                                                  tmp_path: Path) -> None:
    done = fewshot("train", *dataset_args(folders[0]), *TINY, "ledger=protonet-omniglott",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert done.returncode == 2 and "no ledger entry 'protonet-omniglott'" in output(done).strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
