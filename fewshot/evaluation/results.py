"""What an evaluation produces: per-episode accuracies of every learner on one episode set, and their
pairwise comparisons; plain-JSON round trip for the result files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from episodes.variable import VariableShape
from fewshot.evaluation.metrics import PairedComparison

__all__ = ["Comparison", "EpisodeSpec", "EvaluationResult", "LearnerResult"]


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episodes were scored: ``episodes`` tasks of ``dataset`` drawn with ``seed``, or read from the episodes
    file whose checksum is ``episodes_file`` (:mod:`episodes.episode_file`; ``seed`` is then the one it records).

    Fixed-shape episodes have ``n_way`` classes of ``n_shot`` support and ``n_query`` query images each. Variable
    (Meta-Dataset-style) episodes, drawn by :class:`episodes.variable.VariableEpisodeSampler`, record their
    distribution in ``variable`` and have ``n_way = n_shot = n_query = 0`` (the counts differ from episode to
    episode); two specs are equal only when they describe the same episodes.
    """

    dataset: str
    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    episodes_file: str | None = None
    variable: VariableShape | None = None

    def __post_init__(self) -> None:
        counts = (self.n_way, self.n_shot, self.n_query)
        if self.variable is not None and (counts != (0, 0, 0) or self.episodes_file is not None):
            raise ValueError(f"variable episodes have no fixed n_way, n_shot, n_query and no episodes file; got "
                             f"{counts} and {self.episodes_file!r}: give 0, 0, 0 and None")
        if self.variable is None and min(counts) < 1:
            raise ValueError(f"n_way, n_shot and n_query must be >= 1, got {counts}; variable episodes set "
                             "variable=VariableShape(...) with 0, 0, 0")

    @property
    def setting(self) -> str:
        """The column label of a results table, e.g. ``"5-way 1-shot"``; variable episodes:
        ``"variable-way variable-shot (5-50 ways)"``, or ``"5-way variable-shot"`` when the ways are fixed."""
        if self.variable is None:
            return f"{self.n_way}-way {self.n_shot}-shot"
        low, high = self.variable.min_way, self.variable.max_way
        return f"{low}-way variable-shot" if low == high else f"variable-way variable-shot ({low}-{high} ways)"

    @property
    def queries(self) -> str:
        """The query sets in words, e.g. ``"15 queries per class"``; variable episodes: at most ``max_query`` per
        class, the same number for every class of an episode, fewer where one of its classes is small."""
        if self.variable is None:
            return f"{self.n_query} queries per class"
        cap = self.variable.max_query
        return (f"at most {cap} queries per class, the same number for every class of an episode; fewer where one "
                f"of its classes has under {2 * cap} images (half the smallest class, rounded down)")


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
        """Plain JSON-ready values (per-episode accuracies as lists of floats; ``spec.episodes_file`` and
        ``spec.variable`` only when set, so results of seeded fixed-shape episodes keep the format they always
        had)."""
        spec = {k: v for k, v in vars(self.spec).items() if k not in ("episodes_file", "variable") or v is not None}
        if self.spec.variable is not None:
            spec["variable"] = asdict(self.spec.variable)
        return {
            "spec": spec,
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
        spec = dict(data["spec"])
        if spec.get("variable") is not None:
            spec["variable"] = VariableShape(**spec["variable"])
        return EvaluationResult(
            spec=EpisodeSpec(**spec),
            learners=tuple(LearnerResult(r["name"], torch.tensor(r["accuracies"], dtype=torch.float64),
                                         float(r["mean"]), float(r["ci95"]), bool(r.get("transductive", False)),
                                         r.get("ledger"))
                          for r in data["learners"]),
            comparisons=tuple(comparisons),
            train_dataset=data["train_dataset"],
            test_dataset=data["test_dataset"],
        )
