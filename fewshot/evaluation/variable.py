"""Score every learner on the same Meta-Dataset-style variable episodes (:mod:`episodes.variable`).

Variable-way, variable-shot episodes have different shapes, so each is scored on its own: one ``predict`` call per
episode and learner (B = 1), or, for an :class:`~fewshot.learners.base.EmbeddingLearner`, one
``predict_features`` call per episode on features of every test image embedded once (the numbers of ``predict``).
Per-episode accuracies, ``mean_ci95`` and the paired comparisons are those of :func:`~fewshot.evaluation.evaluate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from episodes import FewShotDataset
from episodes.variable import VariableEpisodeSampler, VariableShape
from fewshot.evaluation.frame import ScoringFrame, resolve_embed_chunk
from fewshot.evaluation.harness import OneProcess, Shards, _accuracy, _embed_rows, _result
from fewshot.evaluation.results import EpisodeSpec, EvaluationResult
from fewshot.learners.base import Learner

__all__ = ["check_variable", "evaluate_variable"]


def check_variable(learners: Mapping[str, Learner], dataset: FewShotDataset, *, shape: VariableShape,
                   episodes: int) -> None:
    """Raise ``ValueError`` if :func:`evaluate_variable` with these arguments would fail: fewer than 2 episodes,
    a dataset the sampler refuses (fewer than ``shape.min_way`` classes, a class of one image), or a learner that
    cannot score some number of ways the episodes may have (:meth:`Learner.check_ways`: a MAML head of fixed
    size), naming the learner and what to use instead. Call it before training."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise ValueError(f"episodes must be >= 2 for a confidence interval, got {episodes!r}")
    VariableEpisodeSampler(dataset, shape=shape, seed=0, num_episodes=episodes)
    low, high = shape.ways(dataset.num_classes)
    for name, learner in learners.items():
        refused: dict[int, str] = {}
        for n_way in range(low, high + 1):
            try:
                learner.check_ways(n_way)
            except ValueError as err:
                refused[n_way] = str(err)
        if refused:
            fine = [w for w in range(low, high + 1) if w not in refused]
            fix = (f"fix the ways (min_way = max_way = {fine[0]}: evaluation.variable.min_way and max_way) or "
                   if fine else "")
            raise ValueError(f"learner {name!r} ({type(learner).__name__}) cannot score variable-way episodes of "
                             f"{low} to {high} ways ({next(iter(refused.values()))}); {fix}test a learner that "
                             "scores any number of ways (e.g. learner=protonet)")


def evaluate_variable(
    learners: Mapping[str, Learner],
    dataset: FewShotDataset,
    *,
    shape: VariableShape | None = None,
    episodes: int = 600,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    embed_once: bool = True,
    embed_chunk: int | None = None,
    train_dataset: str | None = None,
    permutations: int = 10_000,
    shards: Shards | None = None,
) -> EvaluationResult:
    """Score every learner on episodes ``0 .. episodes - 1`` of ``VariableEpisodeSampler(dataset, shape, seed)``.

    Learners are put in eval mode for the run and restored afterwards; their parameters are never changed.

    Args:
        learners: name -> learner, already on ``device``.
        dataset: the test classes; moved to ``device``.
        shape: the episode distribution; None: the Meta-Dataset paper's (``VariableShape()``).
        episodes, seed: which episodes.
        device: where the images are gathered and scored.
        progress: show a tqdm progress bar.
        embed_once: score :class:`EmbeddingLearner` s on features of each image computed once (the numbers of
            ``predict``); False calls ``predict`` on images.
        embed_chunk: images per embedding forward pass when ``embed_once``; None:
            :func:`~fewshot.evaluation.frame.default_embed_chunk` of ``device``.
        train_dataset: name of the learners' training data, recorded for cross-domain tables.
        permutations: random sign patterns of the permutation test of each pair (0 skips it).
        shards: several processes, each calling this: a process scores its contiguous block of the episodes and
            the accuracies are gathered in order (the one-process results).
    Returns:
        per-episode accuracies (float64, (episodes,)), mean and 95% CI per learner and the paired comparisons,
        with an :class:`EpisodeSpec` whose ``variable`` is ``shape`` with ``max_way`` lowered to the number of
        classes where it is larger (the same episodes: the distribution actually sampled).
    """
    device = torch.device(device)
    shape = VariableShape() if shape is None else shape
    frame = ScoringFrame(learners, device=device, embed_once=embed_once, permutations=permutations)
    embed_chunk = resolve_embed_chunk(embed_chunk, device)
    check_variable(learners, dataset, shape=shape, episodes=episodes)
    data = dataset.to(device)
    sampler = VariableEpisodeSampler(data, shape=shape, seed=seed, num_episodes=episodes)
    shards = shards or OneProcess()
    first, last = shards.block(episodes)
    embedded, direct = frame.embedded, frame.direct
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in learners}
    with frame.scoring(total=(last - first) * len(learners), progress=progress,
                       desc=f"evaluate {data.name} (variable episodes)") as bar:
        picks = [tuple(t.to(device) for t in sampler.indices(i)) for i in range(first, last)] if embedded else []
        rows = torch.unique(torch.cat([p[k] for p in picks for k in (0, 2)])) if picks else None
        for name, learner in embedded.items():
            bar.set_postfix_str(name)
            features = _embed_rows(learner, data, rows, embed_chunk)
            for support, support_y, query, query_y, classes in picks:
                logits = learner.predict_features(features[torch.searchsorted(rows, support)][None], support_y[None],
                                                  features[torch.searchsorted(rows, query)][None], len(classes))
                scores[name].append(_accuracy(logits, query_y[None], len(classes), name))
                bar.update(1)
        for i in range(first, last) if direct else ():
            batch = sampler.batch([i])
            for name, learner in direct.items():
                bar.set_postfix_str(name)
                scores[name].append(_accuracy(learner.predict(batch), batch.query_y, batch.n_way, name))
                bar.update(1)
    empty = torch.zeros(0, dtype=torch.float64)
    accuracies = {name: shards.gather(torch.cat(parts) if parts else empty) for name, parts in scores.items()}
    sampled = dataclasses.replace(shape, max_way=shape.ways(data.num_classes)[1])
    spec = EpisodeSpec(dataset=data.name, n_way=0, n_shot=0, n_query=0, episodes=episodes, seed=seed,
                       variable=sampled)
    return _result(learners, accuracies, spec, train_dataset=train_dataset, permutations=permutations)
