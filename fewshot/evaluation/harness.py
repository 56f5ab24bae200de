"""Score every learner on the same fixed, seeded set of episodes.

Episodes come from ``EpisodeSampler(dataset, n_way, n_shot, n_query, seed, num_episodes)``, so
episode i is the same task for every learner, on any device, in any batch size. Embedding
learners (ProtoNet, frozen-backbone fine-tuning) can embed each image once and be scored on
the gathered features: the numbers equal those of :meth:`Learner.predict` on the images.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from tqdm.auto import tqdm

from episodes import FewShotDataset
from episodes.episode_file import EpisodesFile, FixedEpisodes
from episodes.sampler import EpisodeSampler
from fewshot.evaluation.frame import ScoringFrame, resolve_embed_chunk
from fewshot.evaluation.metrics import mean_ci95, paired_comparison
from fewshot.evaluation.results import Comparison, EpisodeSpec, EvaluationResult, LearnerResult
from fewshot.learners.base import EmbeddingLearner, Learner

logger = logging.getLogger(__name__)


class Shards(Protocol):
    """How one process takes part in an evaluation shared by several (see
    :func:`fewshot.training.distributed.evaluate_distributed`): which block of the work is its own, and how
    the per-block results of all processes are put back together in order."""

    def block(self, count: int) -> tuple[int, int]:
        """[lo, hi) of this process's contiguous share of ``count`` items."""

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every process's (n_p, ...) rows, concatenated in process order."""


class OneProcess:
    """The :class:`Shards` of an evaluation run by one process: all the work, nothing to gather."""

    def block(self, count: int) -> tuple[int, int]:
        return 0, count

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return local


def _accuracy(logits: torch.Tensor, query_y: torch.Tensor, n_way: int, name: str) -> torch.Tensor:
    """(B, Q, n_way) logits and (B, Q) labels -> (B,) float64 accuracy on the CPU."""
    if logits.shape != (*query_y.shape, n_way):
        raise ValueError(f"learner {name!r} returned logits of shape {tuple(logits.shape)}; expected "
                         f"(tasks, queries, n_way) = {(*query_y.shape, n_way)}")
    if bool(torch.isnan(logits).any() | torch.isposinf(logits).any() | torch.isneginf(logits).all(-1).any()):
        raise FloatingPointError(f"learner {name!r} returned NaN or infinite logits (or a query with every class at "
                                 "-inf), which have no argmax; its predictions diverged: lower its step sizes or "
                                 "learning rates, or check its weights")
    correct = (logits.argmax(-1) == query_y).sum(-1)
    return (correct.to(torch.float64) / query_y.shape[-1]).cpu()


def _embed_rows(learner: EmbeddingLearner, dataset: FewShotDataset, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """(R,) row indices -> (R, D) features of those images, ``chunk`` images per forward pass."""
    with torch.no_grad():
        parts = [learner.embed(dataset.to_float(dataset.images[part])) for part in rows.split(chunk)]
    return torch.cat(parts)


def _score_features(name: str, learner: EmbeddingLearner, features: torch.Tensor, rows: torch.Tensor,
                    picks: tuple[torch.Tensor, torch.Tensor, torch.Tensor], chunks: tuple[torch.Tensor, ...], *,
                    n_way: int, n_shot: int, n_query: int, bar: tqdm) -> list[torch.Tensor]:
    """Score each batch of episodes on precomputed ``features`` of the sorted dataset ``rows``: one (b,)
    float64 accuracy tensor per batch of ``chunks``; ``picks`` hold the rows of exactly those episodes."""
    support_idx, query_idx, _ = picks
    device = features.device
    support_local = torch.searchsorted(rows, support_idx.contiguous())
    query_local = torch.searchsorted(rows, query_idx.contiguous())
    support_y = torch.arange(n_way, device=device).repeat_interleave(n_shot)
    query_y = torch.arange(n_way, device=device).repeat_interleave(n_query)
    scores, start = [], 0
    for ids in chunks:
        stop = start + len(ids)
        b = len(ids)
        logits = learner.predict_features(features[support_local[start:stop]], support_y.expand(b, -1),
                                          features[query_local[start:stop]], n_way)
        scores.append(_accuracy(logits, query_y.expand(b, -1), n_way, name))
        bar.update(b)
        start = stop
    return scores


def evaluate(
    learners: Mapping[str, Learner],
    dataset: FewShotDataset,
    *,
    n_way: int,
    n_shot: int,
    n_query: int,
    episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    embed_once: bool = True,
    embed_chunk: int | None = None,
    train_dataset: str | None = None,
    permutations: int = 10_000,
    episodes_file: EpisodesFile | None = None,
) -> EvaluationResult:
    """Score every learner on the same ``episodes`` seeded tasks of ``dataset``.

    Learners are put in eval mode for the run and restored afterwards; their parameters are
    never changed (each learner's ``predict`` handles its own gradients, e.g. MAML's inner loop).

    Args:
        learners: name -> learner, already on ``device``.
        dataset: the test classes; moved to ``device`` for sampling.
        n_way, n_shot, n_query: the task shape; queries are ``n_query`` per class.
        episodes: number of tasks, episode ids ``0 .. episodes - 1`` of the sampler with ``seed``.
        batch_size: tasks per ``predict`` call.
        device: where sampling and scoring run.
        progress: show a tqdm progress bar.
        embed_once: score :class:`EmbeddingLearner` s on features of each image computed once
            (same numbers as ``predict``, much faster); False calls ``predict`` on images.
        embed_chunk: images per embedding forward pass when ``embed_once``; None:
            :func:`~fewshot.evaluation.frame.default_embed_chunk` of ``device``.
        train_dataset: name of the learners' training data, recorded for cross-domain tables.
        permutations: random sign patterns of the permutation test of each pair (0 skips it).
        episodes_file: score the episodes of this file (see :func:`evaluate_settings`) instead of seeded ones.
    Returns:
        per-episode accuracies (float64, (episodes,)), mean and 95% CI per learner, and a paired
        comparison of every pair of learners.
    """
    return evaluate_settings(learners, dataset, settings=[(n_way, n_shot)], n_query=n_query, episodes=episodes,
                             seed=seed, batch_size=batch_size, device=device, progress=progress, embed_once=embed_once,
                             embed_chunk=embed_chunk, train_dataset=train_dataset, permutations=permutations,
                             episodes_file=episodes_file)[0]


def evaluate_settings(
    learners: Mapping[str, Learner],
    dataset: FewShotDataset,
    *,
    settings: Sequence[tuple[int, int]],
    n_query: int,
    episodes: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    embed_once: bool = True,
    embed_chunk: int | None = None,
    train_dataset: str | None = None,
    permutations: int = 10_000,
    shards: Shards | None = None,
    episodes_file: EpisodesFile | None = None,
) -> list[EvaluationResult]:
    """:func:`evaluate` for several ``(n_way, n_shot)`` settings, one result each, in order.

    An :class:`EmbeddingLearner` embeds each image used by any setting only once. With ``shards`` (several
    processes, each calling this), a process embeds its block of the ``embed_chunk`` image chunks and scores its
    block of the ``batch_size`` episode batches; features and accuracies are gathered in order, so every process
    returns the one-process results bit for bit. With ``episodes_file`` (:func:`episodes.episode_file.
    read_episodes_file`) the episodes are the file's sets of these settings (``ValueError`` if ``dataset`` is not the
    data it was made on, or it holds no set of a setting with ``n_query`` and ``episodes``) instead of those drawn
    with ``seed``; the results' specs record the file's checksum.
    """
    device = torch.device(device)
    frame = ScoringFrame(learners, device=device, embed_once=embed_once, permutations=permutations)
    embed_chunk = resolve_embed_chunk(embed_chunk, device)
    check_settings(learners, dataset, settings=settings, n_query=n_query, episodes=episodes, batch_size=batch_size)
    shards = shards or OneProcess()
    data = dataset.to(device)
    if episodes_file is None:
        samplers = [EpisodeSampler(data, n_way=w, n_shot=k, n_query=n_query, seed=seed, num_episodes=episodes)
                    for w, k in settings]
    else:
        episodes_file.check_dataset(dataset)
        samplers = [FixedEpisodes(data, s) for s in episodes_file.select(settings, n_query=n_query, episodes=episodes)]
    ids = torch.arange(episodes, device=device)
    chunks = ids.split(batch_size)
    lo, hi = shards.block(len(chunks))
    mine = chunks[lo:hi]  # this process's episode batches
    first, last = (int(mine[0][0]), int(mine[-1][-1]) + 1) if mine else (0, 0)
    embedded, direct = frame.embedded, frame.direct
    scores: list[dict[str, list[torch.Tensor]]] = [{name: [] for name in learners} for _ in settings]
    with frame.scoring(total=(last - first) * len(learners) * len(settings), progress=progress,
                       desc=f"evaluate {data.name}") as bar:
        picks = [sampler.indices(ids) for sampler in samplers] if embedded else []
        rows = torch.unique(torch.cat([t.flatten() for p in picks for t in p[:2]])) if embedded else None
        for name, learner in embedded.items():
            bar.set_postfix_str(name)
            row_chunks = rows.split(embed_chunk)
            a, b = shards.block(len(row_chunks))
            features = shards.gather(_embed_rows(learner, data, torch.cat(row_chunks[a:b]) if b > a else rows[:0],
                                                 embed_chunk))
            for k, (n_way, n_shot) in enumerate(settings):
                part = tuple(t[first:last] for t in picks[k])
                scores[k][name] = _score_features(name, learner, features, rows, part, mine, n_way=n_way,
                                                  n_shot=n_shot, n_query=n_query, bar=bar)
        for k, ((n_way, _), sampler) in enumerate(zip(settings, samplers, strict=True)):
            for part in mine if direct else ():
                batch = sampler.batch(part)
                for name, learner in direct.items():
                    bar.set_postfix_str(name)
                    scores[k][name].append(_accuracy(learner.predict(batch), batch.query_y, n_way, name))
                    bar.update(len(part))
    empty = torch.zeros(0, dtype=torch.float64)
    accuracies = [{name: shards.gather(torch.cat(parts) if parts else empty) for name, parts in by_name.items()}
                  for by_name in scores]
    checksum = None if episodes_file is None else episodes_file.checksum
    return [_result(learners, acc, EpisodeSpec(dataset=data.name, n_way=n_way, n_shot=n_shot, n_query=n_query,
                                               episodes=episodes, seed=sampler.seed, episodes_file=checksum),
                    train_dataset=train_dataset, permutations=permutations)
            for acc, (n_way, n_shot), sampler in zip(accuracies, settings, samplers, strict=True)]


def check_settings(learners: Mapping[str, Learner], dataset: FewShotDataset, *, settings: Sequence[tuple[int, int]],
                   n_query: int, episodes: int, batch_size: int = 32) -> None:
    """Raise ``ValueError`` if :func:`evaluate_settings` with these arguments would fail: no settings, fewer than 2
    episodes, an episode shape ``dataset`` cannot supply, or a number of ways a learner cannot score
    (:meth:`Learner.check_ways`). Call it before training to refuse a run whose test would fail after it."""
    if not settings:
        raise ValueError("settings must list at least one (n_way, n_shot) pair, e.g. [(5, 1)]")
    if episodes < 2:
        raise ValueError(f"episodes must be >= 2 for a confidence interval, got {episodes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for n_way, n_shot in settings:
        EpisodeSampler(dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=0, num_episodes=episodes)
        for learner in learners.values():
            learner.check_ways(n_way)


def _result(learners: Mapping[str, Learner], accuracies: dict[str, torch.Tensor], spec: EpisodeSpec, *,
            train_dataset: str | None, permutations: int) -> EvaluationResult:
    """Every learner's mean and 95% CI on the episodes ``spec`` describes, and the paired comparisons."""
    results = []
    for name in learners:
        mean, half = mean_ci95(accuracies[name])
        results.append(LearnerResult(name, accuracies[name], mean, half, learners[name].transductive))
        logger.info("%s on %s %s: %.2f +- %.2f%%", name, spec.dataset, spec.setting, 100 * mean, 100 * half)
    comparisons = tuple(
        Comparison(a, b, paired_comparison(accuracies[a], accuracies[b], permutations=permutations, seed=spec.seed))
        for a, b in itertools.combinations(learners, 2)
    )
    for a, b in itertools.combinations(learners, 2):
        if learners[a].transductive != learners[b].transductive:
            trans, ind = (a, b) if learners[a].transductive else (b, a)
            logger.warning("paired comparison of %s (transductive: it uses the unlabelled query set) with %s "
                           "(inductive) on %s %s: the two protocols are not comparable", trans, ind, spec.dataset,
                           spec.setting)
    return EvaluationResult(spec, tuple(results), comparisons, train_dataset, spec.dataset)
