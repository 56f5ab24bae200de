"""The reproduction ledger: every published number the experiment files cite, machine-readable, and the verdict of
a measured result against it.

The ledger is ``fewshot/evaluation/ledger.yaml`` (package data). Each entry is one paper's numbers for one method,
dataset and backbone, keyed by an id that experiment files name with ``ledger: <id>``; a run of such an experiment
records the id with its results (:attr:`~fewshot.evaluation.results.LearnerResult.ledger`), and every results table
marks each cell reproduced, above or below the paper (:func:`verdict`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from fewshot.evaluation.results import EvaluationResult, LearnerResult

__all__ = ["LedgerEntry", "Verdict", "cell_verdict", "ledger_entry", "load_ledger", "setting_key", "verdict"]

_SETTING = re.compile(r"^(\d+)w(\d+)s$")
_FIELDS = {"method", "paper", "table", "dataset", "backbone", "image_size", "n_query", "episodes", "transductive",
           "batch_norm", "test_time_augmentation", "checked", "accuracy", "ci95"}
_REQUIRED = _FIELDS - {"ci95"}


def setting_key(n_way: int, n_shot: int) -> str:
    """The ledger's name of a setting, e.g. ``"5w1s"``."""
    return f"{n_way}w{n_shot}s"


@dataclass(frozen=True)
class LedgerEntry:
    """One paper's published numbers for one method on one dataset and backbone.

    Attributes:
        id: the key experiment files name (``ledger: <id>``).
        method, paper, table: what was published where (``table`` e.g. ``"Table 1"``).
        dataset: dataset and class split as this library names it, e.g. ``"omniglot/vinyals"`` or
            ``"mini_imagenet/ravi"``; a test set matches when its name starts with it.
        backbone: the paper's network, e.g. ``"Conv4 (64 filters)"``; image_size: its input side in pixels.
        n_query: query images per class at test, or None where the paper does not say.
        episodes: test episodes averaged, or None where the paper does not say.
        transductive: the method (or its batch norm) uses the unlabelled query set.
        batch_norm: how the paper's batch norm normalises test batches, e.g. ``"running statistics"``.
        test_time_augmentation: the paper averaged predictions over augmented copies.
        checked: where the numbers were checked against a text (paper table, authors' README, ...), or None when
            they could not be checked.
        accuracy: percent per setting, e.g. ``{"5w1s": 98.8}``.
        ci95: the paper's 95% half-widths per setting, where given.
    """

    id: str
    method: str
    paper: str
    table: str
    dataset: str
    backbone: str
    image_size: int
    n_query: int | None
    episodes: int | None
    transductive: bool
    batch_norm: str
    test_time_augmentation: bool
    checked: str | None
    accuracy: Mapping[str, float]
    ci95: Mapping[str, float]

    def published(self, test_dataset: str, n_way: int, n_shot: int) -> float | None:
        """The published accuracy (%) for ``test_dataset`` in this setting, or None when the paper has none."""
        if not test_dataset.startswith(self.dataset):
            return None
        return self.accuracy.get(setting_key(n_way, n_shot))


def _entry(key: str, raw: Any) -> LedgerEntry:
    if not isinstance(raw, dict):
        raise ValueError(f"ledger entry {key!r} must be a mapping of {sorted(_FIELDS)}")
    missing, unknown = _REQUIRED - raw.keys(), raw.keys() - _FIELDS
    if missing or unknown:
        raise ValueError(f"ledger entry {key!r}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    for table in ("accuracy", "ci95"):
        for setting, value in (raw.get(table) or {}).items():
            if not _SETTING.match(str(setting)) or not isinstance(value, int | float) or not 0 < value <= 100:
                raise ValueError(f"ledger entry {key!r}: {table}[{setting!r}] = {value!r}; settings are written like "
                                 "5w1s and values are percentages in (0, 100]")
    if not raw["accuracy"]:
        raise ValueError(f"ledger entry {key!r} has no published accuracy")
    return LedgerEntry(id=key, **{**raw, "accuracy": dict(raw["accuracy"]), "ci95": dict(raw.get("ci95") or {})})


@functools.cache
def load_ledger() -> dict[str, LedgerEntry]:
    """Every entry of the packaged ledger, by id (validated: required fields, setting names, percentages)."""
    text = resources.files("fewshot.evaluation").joinpath("ledger.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or {}
    return {key: _entry(key, value) for key, value in raw.items()}


def ledger_entry(key: str) -> LedgerEntry:
    """The entry named ``key``; a ``KeyError`` that lists the known ids otherwise."""
    ledger = load_ledger()
    if key not in ledger:
        raise KeyError(f"no ledger entry {key!r}; known: {', '.join(sorted(ledger))} (fewshot/evaluation/ledger.yaml)")
    return ledger[key]


@dataclass(frozen=True)
class Verdict:
    """A measured cell against its published number, in percentage points.

    Attributes:
        published: the paper's accuracy.
        status: ``"reproduced"`` (the published number lies inside the run's 95% interval), ``"above"`` (the whole
            interval lies above it: reproduced, and better) or ``"below"`` (the whole interval lies below it).
        gap: measured mean minus published.
    """

    published: float
    status: str
    gap: float

    def __str__(self) -> str:
        if self.status == "reproduced":
            return f"paper {self.published}: reproduced"
        return f"paper {self.published}: {self.status} by {abs(self.gap):.2f}"


def verdict(mean: float, ci95: float, published: float) -> Verdict:
    """Judge a measured ``mean`` ± ``ci95`` (fractions in [0, 1]) against a ``published`` percentage."""
    low, high = 100 * (mean - ci95), 100 * (mean + ci95)
    status = "reproduced" if low <= published <= high else ("above" if published < low else "below")
    return Verdict(published, status, 100 * mean - published)


def cell_verdict(learner: LearnerResult, result: EvaluationResult) -> Verdict | None:
    """The verdict of ``learner``'s cell in ``result`` (its episode set) against the published number of the ledger
    entry it names, or None when it names none or the paper has no number for that dataset and setting."""
    if learner.ledger is None:
        return None
    published = ledger_entry(learner.ledger).published(result.test_dataset, result.spec.n_way, result.spec.n_shot)
    return None if published is None else verdict(learner.mean, learner.ci95, published)
