"""What an evaluation produces: per-episode accuracies of every learner on one episode set, and their
pairwise comparisons; plain-JSON round trip for the result files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fewshot.evaluation.metrics import PairedComparison

__all__ = ["Comparison", "EpisodeSpec", "EvaluationResult", "LearnerResult"]


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episodes were scored: ``episodes`` tasks of ``dataset`` drawn with ``seed``."""

    dataset: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int

    @property
    def setting(self) -> str:
        """The column label of a results table, e.g. ``"5-way 1-shot"``."""
        return f"{self.n_way}-way {self.n_shot}-shot"


@dataclass(frozen=True, eq=False)
class LearnerResult:
    """One learner's scores.

    Attributes:
        name: the learner's key in the mapping given to :func:`evaluate`.
        accuracies: (episodes,) float64 query accuracy of each episode, in [0, 1].
        mean, ci95: mean accuracy and 95% half-width from :func:`mean_ci95`, in [0, 1].
        transductive: the learner used the unlabelled query set of each episode (:attr:`Learner.transductive`).
        ledger: id of the reproduction-ledger entry its experiment reproduces (``fewshot/evaluation/ledger.yaml``),
            or None; tables then mark each cell against the published number.
    """

    name: str
    accuracies: torch.Tensor
    mean: float
    ci95: float
    transductive: bool = False
    ledger: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Learner ``learner_a`` against ``learner_b`` on the same episodes (difference a - b)."""

    learner_a: str
    learner_b: str
    result: PairedComparison


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """Every learner's scores on one episode set, and every pairwise comparison.

    Attributes:
        spec: the episode set.
        learners: one result per learner, in the order they were given.
        comparisons: every pair (a, b) with a before b in that order.
        train_dataset: the dataset the learners were trained on (for cross-domain tables), or None.
        test_dataset: the dataset the episodes came from.
    """

    spec: EpisodeSpec
    learners: tuple[LearnerResult, ...]
    comparisons: tuple[Comparison, ...]
    train_dataset: str | None
    test_dataset: str

    def __getitem__(self, name: str) -> LearnerResult:
        for result in self.learners:
            if result.name == name:
                return result
        raise KeyError(f"no learner named {name!r}; have {[r.name for r in self.learners]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (per-episode accuracies as lists of floats)."""
        return {
            "spec": vars(self.spec).copy(),
            "learners": [{"name": r.name, "mean": r.mean, "ci95": r.ci95, "transductive": r.transductive,
                          "ledger": r.ledger, "accuracies": r.accuracies.tolist()} for r in self.learners],
            "comparisons": [{"learner_a": c.learner_a, "learner_b": c.learner_b, **c.result.to_dict()}
                            for c in self.comparisons],
            "train_dataset": self.train_dataset,
            "test_dataset": self.test_dataset,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        comparisons = []
        for entry in data["comparisons"]:
            entry = dict(entry)
            a, b = entry.pop("learner_a"), entry.pop("learner_b")
            comparisons.append(Comparison(a, b, PairedComparison.from_dict(entry)))
        return EvaluationResult(
            spec=EpisodeSpec(**data["spec"]),
            learners=tuple(LearnerResult(r["name"], torch.tensor(r["accuracies"], dtype=torch.float64),
                                         float(r["mean"]), float(r["ci95"]), bool(r.get("transductive", False)),
                                         r.get("ledger"))
                          for r in data["learners"]),
            comparisons=tuple(comparisons),
            train_dataset=data["train_dataset"],
            test_dataset=data["test_dataset"],
        )
