"""Meta-Dataset-style episodes: variable ways, variable and class-imbalanced shots, episode ``i`` a pure function of
``(seed, i)``.

The sampling algorithm of Triantafillou et al. 2020 ("Meta-Dataset: A Dataset of Datasets for Learning to Learn
from Few Examples", ICLR), section 3.2 (episode sampling) and its appendix, checked against the authors' reference code
(google-research/meta-dataset, ``meta_dataset/data/sampling.py``: ``sample_num_ways_uniformly``,
``compute_num_query``, ``sample_support_set_size``, ``sample_num_support_per_class``), without the class hierarchies
(ImageNet's DAG, Omniglot's alphabets): classes are drawn uniformly. For an episode:

1. ways ``N`` uniform in ``[min_way, min(max_way, num_classes)]`` (5 and 50 in the paper), then ``N`` distinct
   classes uniformly, labelled 0..N-1 in a uniformly random order;
2. queries per class ``q = min(max_query, floor(min_c |c| / 2))`` over the chosen classes (balanced query set;
   ``max_query`` = 10);
3. support set size ``S = min(max_support, sum_c (floor(beta * min(max_support_per_class, |c| - q)) + 1))`` with
   ``beta ~ U[0, 1)`` (500 and 100; the paper's ``ceil(beta * ...)`` with ``beta ~ U(0, 1]``, which the reference
   code computes this way);
4. shots ``k_c = min(floor(R_c * (S - N)) + 1, |c| - q)`` with ``R_c = |c| exp(alpha_c) / sum_c' |c'| exp(alpha_c')``
   and ``alpha_c ~ U[min_log_weight, max_log_weight)`` (``log 0.5`` and ``log 2``): noisy class-size proportions,
   at least one shot per class;
5. ``k_c + q`` distinct images of each class uniformly, the first ``k_c`` for the support set.

Every draw comes from the counter-based generator of :mod:`episodes.rng` (as :class:`episodes.EpisodeSampler`),
computed on the CPU: the integer draws are exact, and steps 3-4 are a few float64 operations per class in a fixed
order (sums exactly rounded), so the same seed gives the same episodes in any order, with any number of workers,
on any machine (a count could differ only where a platform's ``exp`` rounds differently a product that lands
within rounding of an integer). Memory per episode grows with N times the largest chosen class. The episodes
have different shapes, so they come one per :class:`~episodes.EpisodeBatch` (see
:meth:`VariableEpisodeSampler.batch`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from episodes import rng
from episodes.dataset import FewShotDataset
from episodes.episode import Episode, EpisodeBatch
from episodes.sampler import SeededEpisodes

__all__ = ["VariableEpisodeSampler", "VariableShape", "episode_counts"]

# Sub-streams of each episode key.
_WAYS, _CLASSES, _SUPPORT_SIZE, _WEIGHTS, _IMAGES = range(5)


def _int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class VariableShape:
    """The parameters of the Meta-Dataset episode distribution (defaults: the paper's).

    Attributes:
        min_way, max_way: the number of ways is uniform in ``[min_way, min(max_way, num_classes)]``
            (``min_way = max_way`` fixes it: N-way variable-shot episodes).
        max_query: at most this many queries per class.
        max_support: at most this many support images in all.
        max_support_per_class: a class adds at most this much to the sampled support set size (not a cap on its
            shots).
        min_log_weight, max_log_weight: range of the log-weights ``alpha_c`` that perturb the class-size
            proportions of the shots (equal values: shots exactly proportional to class sizes).
    """

    min_way: int = 5
    max_way: int = 50
    max_query: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)

    def __post_init__(self) -> None:
        _int("min_way", self.min_way, 2)
        _int("max_way", self.max_way, self.min_way)
        _int("max_query", self.max_query, 1)
        _int("max_support", self.max_support, self.max_way)
        _int("max_support_per_class", self.max_support_per_class, 1)
        for name in ("min_log_weight", "max_log_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.min_log_weight > self.max_log_weight:
            raise ValueError(f"need min_log_weight <= max_log_weight, got {self.min_log_weight} and "
                             f"{self.max_log_weight}")

    def ways(self, num_classes: int) -> tuple[int, int]:
        """The smallest and largest number of ways of episodes over ``num_classes`` classes."""
        return self.min_way, min(self.max_way, num_classes)


def episode_counts(sizes: torch.Tensor, *, beta: float, log_weights: torch.Tensor,
                   shape: VariableShape) -> tuple[int, torch.Tensor]:
    """Steps 2-4 of the algorithm (module docstring) for the chosen classes, given the episode's random draws.

    Args:
        sizes: (N,) int64 images in each chosen class (each at least 2).
        beta: the support-size draw, in [0, 1).
        log_weights: (N,) float64 ``alpha_c`` of each class.
        shape: the distribution's caps.
    Returns:
        queries per class, and (N,) int64 shots of each class (each >= 1, summing to at most ``max_support``).
    """
    per_class = [int(v) for v in sizes.tolist()]
    n_way = len(per_class)
    n_query = min(shape.max_query, min(per_class) // 2)
    remaining = [v - n_query for v in per_class]
    support_size = min(sum(math.floor(beta * min(r, shape.max_support_per_class)) + 1 for r in remaining),
                       shape.max_support)
    weighted = [v * math.exp(a) for v, a in zip(per_class, log_weights.tolist(), strict=True)]
    total = math.fsum(weighted)  # exactly rounded: independent of summation order
    shots = torch.tensor([min(math.floor(w / total * (support_size - n_way)) + 1, r)
                          for w, r in zip(weighted, remaining, strict=True)], dtype=torch.int64)
    return n_query, shots


class VariableEpisodeSampler(SeededEpisodes):
    """Meta-Dataset episodes of a :class:`FewShotDataset` (module docstring), each a pure function of ``(seed, i)``.

    The support set is class-major (all shots of label 0, then label 1, ...) with ``shots[c]`` images of label
    ``c``; the query set is class-major with the same number of images of every label. A map-style dataset (one
    :class:`~episodes.Episode` per id) and, like :class:`~episodes.EpisodeSampler`, a source of batches.

    Args:
        dataset: the images (uint8, turned into float by ``dataset.to_float``) or features; at least
            ``shape.min_way`` classes of at least 2 images each.
        shape: the episode distribution.
        seed: any int; the episodes are fixed by it.
        num_episodes: the length of the sampler, or ``None`` for an endless stream; ids beyond it are refused.
    """

    def __init__(self, dataset: FewShotDataset, *, shape: VariableShape = VariableShape(), seed: int,
                 num_episodes: int | None = None) -> None:
        if not isinstance(shape, VariableShape):
            raise TypeError(f"shape must be a VariableShape, got {type(shape).__name__}")
        self.num_episodes = None if num_episodes is None else _int("num_episodes", num_episodes, 1)
        if dataset.num_classes < shape.min_way:
            raise ValueError(f"{dataset.name}: variable episodes of at least min_way={shape.min_way} ways but the "
                             f"dataset has only {dataset.num_classes} classes; lower min_way or use a split with "
                             "more classes")
        sizes = dataset.class_sizes.cpu()
        small = torch.nonzero(sizes < 2).flatten().tolist()
        if small:
            raise ValueError(f"{dataset.name}: variable episodes need at least 2 images per class (one query, one "
                             f"shot), but class {small[0]} ({dataset.class_names[small[0]]!r}) has 1; drop such "
                             "classes with dataset.subset(...)")
        self.dataset = dataset
        self.shape = shape
        self.seed = seed
        self._root = rng.seed_key(seed)
        self._sizes = sizes
        self._offsets = dataset.offsets.cpu()

    def _check_id(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"episode ids must be ints, got {i!r}")
        if i < 0 or (self.num_episodes is not None and i >= self.num_episodes):
            raise IndexError(f"episode {i} out of range for a sampler of {self.num_episodes} episodes")
        return i

    def indices(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of ``dataset.images`` that make up episode ``i`` (what :meth:`batch` gathers), and the labels.

        Returns:
            support rows (S,), support labels (S,), query rows (N * q,), query labels (N * q,) and classes (N,): int64
            on the CPU, class-major (``shots[c]`` support and ``q`` query rows of label ``c``, in label order).
        """
        key = rng.derive(self._root, self._check_id(i))
        low, high = self.shape.ways(self.dataset.num_classes)
        n_way = low + int(rng.uniform_int(rng.derive(key, _WAYS), 0, high - low + 1))
        class_keys = rng.derive(rng.derive(key, _CLASSES), torch.arange(self.dataset.num_classes)) & rng.MASK63
        classes = torch.argsort(class_keys, stable=True)[:n_way]  # a uniformly random ordered draw
        sizes = self._sizes[classes]
        ways = torch.arange(n_way)
        n_query, shots = episode_counts(
            sizes, beta=float(rng.uniform_float(rng.derive(key, _SUPPORT_SIZE), 0)),
            log_weights=self.shape.min_log_weight + (self.shape.max_log_weight - self.shape.min_log_weight)
            * rng.uniform_float(rng.derive(key, _WEIGHTS), ways), shape=self.shape)
        # Images: the m smallest of one random key per image of each class (past a class's size: the largest key).
        m = int(shots.max()) + n_query
        positions = torch.arange(int(sizes.max()))
        image_keys = (rng.derive(rng.derive(rng.derive(key, _IMAGES), ways).unsqueeze(-1), positions)
                      & rng.MASK63).masked_fill(positions >= sizes.unsqueeze(-1), rng.MASK63)
        local = torch.topk(image_keys, m, dim=-1, largest=False, sorted=True).indices  # (N, m)
        rows = self._offsets[classes].unsqueeze(-1) + local
        slot = torch.arange(m)
        support = rows[slot < shots.unsqueeze(-1)]  # row-major: class-major order
        query = rows[(slot >= shots.unsqueeze(-1)) & (slot < (shots + n_query).unsqueeze(-1))]
        return support, ways.repeat_interleave(shots), query, ways.repeat_interleave(n_query), classes

    def batch(self, episode_ids: Sequence[int] | torch.Tensor) -> EpisodeBatch:
        """The episodes ``episode_ids`` as one batch, gathered on the dataset's device: in practice one id, since
        episodes of different shapes (ways, shots per label, queries) do not stack.

        Returns:
            an :class:`EpisodeBatch` with support_x (B, S, C, H, W), support_y (B, S) (``shots[c]`` times label
            ``c``, class-major), query_x (B, N * q, C, H, W), query_y (B, N * q), classes (B, N).
        Raises:
            ValueError: no ids, or episodes of different shapes.
        """
        ids = [int(i) for i in torch.as_tensor(episode_ids, dtype=torch.int64).reshape(-1).tolist()]
        if not ids:
            raise ValueError("batch() needs at least one episode id")
        episodes = [self._episode(i) for i in ids]
        first = episodes[0]
        for episode in episodes[1:]:
            if (episode.support_y.shape != first.support_y.shape or episode.query_y.shape != first.query_y.shape
                    or not torch.equal(episode.support_y, first.support_y)):
                raise ValueError(f"episodes {first.episode_id} and {episode.episode_id} have different shapes "
                                 f"({len(first.classes)}-way, {len(first.support_y)} shots vs "
                                 f"{len(episode.classes)}-way, {len(episode.support_y)} shots); batch variable "
                                 "episodes one id at a time")
        return EpisodeBatch.stack(episodes)

    def _episode(self, i: int) -> Episode:
        support, support_y, query, query_y, classes = self.indices(i)
        device = self.dataset.images.device
        x = self.dataset.to_float(self.dataset.images.index_select(0, torch.cat([support, query]).to(device)))
        return Episode(support_x=x[:len(support)], support_y=support_y.to(device), query_x=x[len(support):],
                       query_y=query_y.to(device), classes=classes.to(device), episode_id=i)
