"""Seeded episodic sampling: episode ``i`` of a sampler is a pure function of ``(seed, i)``.

Episodes are drawn with the counter-based generator of :mod:`episodes.rng`, vectorised over a
batch of episode ids, so the same seed gives the same episodes on any machine, in any order,
with any number of DataLoader workers, on CPU and on GPU (integer arithmetic only).

A fixed evaluation set is simply a sampler with a length::

    test_episodes = EpisodeSampler(test_set, n_way=5, n_shot=1, n_query=15, seed=0, num_episodes=1000)

Every learner evaluated on ``test_episodes`` (or on ``test_episodes.indices(...)`` over
precomputed features) sees exactly the same 1000 episodes. Episodes depend on the seed, the
episode shape and the dataset's classes and their sizes (in order), nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence

import torch

from episodes import rng
from episodes.augment import Augment
from episodes.dataset import FewShotDataset
from episodes.episode import Episode, EpisodeBatch

# Sub-streams of each episode key.
_CLASSES, _IMAGES, _AUGMENT = 0, 1, 2
# On CPU, a batch of more than _CPU_BLOCKS_ABOVE elements is gathered and converted to float in blocks
# of _CPU_BLOCK_ELEMENTS (1 MiB of float32): each intermediate of ``to_float`` then stays in cache and
# reuses freed heap memory instead of page-faulting a fresh allocation of the whole batch (measured
# 1.5-2.5x faster from 64 Omniglot 5-way 1-shot episodes up; slower below about 32).
_CPU_BLOCK_ELEMENTS = 1 << 18
_CPU_BLOCKS_ABOVE = 1 << 22
# Images are drawn by sorting one random key per image of the class when no class has more images
# than this (a few vectorised ops per batch), else by Floyd's algorithm (memory independent of size).
_KEY_SORT_MAX_CLASS_SIZE = 4096


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _floyd(draws: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Floyd's algorithm (Bentley & Floyd 1987, "A sample of brilliance"), vectorised over leading dimensions.

    Step ``k`` picks ``t = draws[..., k]`` uniform in ``[0, top[..., k]]`` and keeps it, or
    ``top[..., k]`` if ``t`` was already picked; the result is a uniform random subset.

    Args:
        draws: (..., m) int64, ``draws[..., k]`` uniform in ``[0, top[..., k]]``.
        top: (..., m) int64, increasing by one along the last dimension.
    Returns:
        (..., m) int64 distinct values in ``[0, top[..., -1]]`` (in an order that is not uniform).
    """
    chosen = torch.empty_like(draws)
    for k in range(draws.shape[-1]):
        t = draws[..., k]
        if k:
            t = torch.where((chosen[..., :k] == t.unsqueeze(-1)).any(-1), top[..., k], t)
        chosen[..., k] = t
    return chosen


def _shuffle(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``values`` permuted along the last dimension by sorting random ``keys`` (same shape)."""
    return values.gather(-1, torch.argsort(keys, dim=-1, stable=True))


class SeededEpisodes(torch.utils.data.Dataset, abc.ABC):
    """What every seeded sampler shares: a map-style dataset of episodes ``0 .. num_episodes - 1`` (an endless
    stream when ``num_episodes`` is None), episode ``i`` being ``self.batch([i])[0]``."""

    num_episodes: int | None

    @abc.abstractmethod
    def batch(self, episode_ids: Sequence[int] | torch.Tensor) -> EpisodeBatch:
        """The episodes ``episode_ids`` gathered into one batch."""

    def __len__(self) -> int:
        if self.num_episodes is None:
            raise TypeError("this sampler is an endless stream (num_episodes=None); "
                            "give it num_episodes=... to use it as a finite dataset")
        return self.num_episodes

    def __getitem__(self, i: int) -> Episode:
        """Episode ``i`` (negative ``i`` counts from the end when the sampler has a length)."""
        if self.num_episodes is not None and i < 0:
            i += self.num_episodes
        if i < 0 or (self.num_episodes is not None and i >= self.num_episodes):
            raise IndexError(f"episode {i} out of range for a sampler of {self.num_episodes} episodes")
        return self.batch([i])[0]


class EpisodeSampler(SeededEpisodes):
    """N-way K-shot episodes of a :class:`FewShotDataset`, each a pure function of ``(seed, i)``.

    Episodic sampling as in Vinyals et al. 2016 ("Matching Networks for One Shot Learning").
    Each episode picks ``n_way`` distinct classes uniformly (then labels them 0..n_way-1 in a
    uniformly random order), and ``n_shot + n_query`` distinct images of each class uniformly, the
    first ``n_shot`` of a uniformly shuffled draw going to the support set and the rest to the
    query set (so support and query are disjoint). Classes may differ in size.

    Works without a DataLoader (:meth:`batch`, :meth:`batches`: vectorised over the batch, on the
    dataset's device) and as a map-style DataLoader dataset (``collate_fn=EpisodeBatch.stack``,
    any number of workers).

    Args:
        dataset: the images (uint8, turned into float by ``dataset.to_float``) or features.
        n_way, n_shot, n_query: episode shape; positive ints.
        seed: any int; the episodes are fixed by it.
        num_episodes: the length of the sampler (e.g. 1000 for a fixed evaluation set), or
            ``None`` for an endless stream (training); ids beyond it are refused.
        augment: applied to the float support and query images of every batch, seeded by the
            episode (so augmented episodes are reproducible too); ``None`` at test time.
    """

    def __init__(self, dataset: FewShotDataset, *, n_way: int, n_shot: int, n_query: int, seed: int,
                 num_episodes: int | None = None, augment: Augment | None = None) -> None:
        self.n_way = _positive_int("n_way", n_way)
        self.n_shot = _positive_int("n_shot", n_shot)
        self.n_query = _positive_int("n_query", n_query)
        self.num_episodes = None if num_episodes is None else _positive_int("num_episodes", num_episodes)
        if n_way > dataset.num_classes:
            raise ValueError(f"{dataset.name}: n_way={n_way} but the dataset has only {dataset.num_classes} "
                             "classes; lower n_way or use a split with more classes")
        sizes = dataset.class_sizes
        smallest = int(torch.argmin(sizes))
        need = n_shot + n_query
        if int(sizes[smallest]) < need:
            raise ValueError(
                f"{dataset.name}: n_shot + n_query = {need} but class {smallest} "
                f"({dataset.class_names[smallest]!r}) has only {int(sizes[smallest])} images; lower n_shot or "
                f"n_query, or drop the small classes with dataset.subset(...)")
        if augment is not None and dataset.images.ndim != 4:
            raise ValueError(f"{dataset.name}: augmentation needs (N, C, H, W) images, but the dataset holds "
                             f"rows of shape {tuple(dataset.images.shape[1:])}; pass augment=None")
        self.dataset = dataset
        self.seed = seed
        self.augment = augment
        self._root = rng.seed_key(seed, device=dataset.offsets.device)
        self._sizes = sizes
        self._max_size = int(sizes.max())

    def _ids(self, episode_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(episode_ids, dtype=torch.int64, device=self._root.device).reshape(-1)
        if len(ids) and int(ids.min()) < 0:
            raise ValueError(f"episode ids must be >= 0, got {int(ids.min())}")
        if len(ids) and self.num_episodes is not None and int(ids.max()) >= self.num_episodes:
            raise ValueError(f"episode id {int(ids.max())} is beyond num_episodes={self.num_episodes}")
        return ids

    def indices(self, episode_ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows of ``dataset.images`` that make up each episode (what :meth:`batch` gathers).

        Args:
            episode_ids: (B,) non-negative ints.
        Returns:
            support_idx (B, n_way * n_shot), query_idx (B, n_way * n_query) and classes (B, n_way),
            int64 on the dataset's device, class-major (all rows of label 0, then label 1, ...).
        """
        ids = self._ids(episode_ids)
        n_tasks, n_way, m = len(ids), self.n_way, self.n_shot + self.n_query
        device = ids.device
        episode = rng.derive(self._root, ids).unsqueeze(-1)  # (B, 1)

        # Classes: Floyd over [0, num_classes), then a uniform order of the labels.
        key = rng.derive(episode, _CLASSES)
        ways = torch.arange(n_way, device=device)
        top = (self.dataset.num_classes - n_way + ways).expand(n_tasks, n_way)
        classes = _floyd(rng.uniform_int(key, ways, top + 1), top)
        classes = _shuffle(classes, rng.derive(key, n_way + ways))  # (B, n_way)

        # Images: a uniformly random ordered draw of m distinct images within each chosen class; the
        # first n_shot are support.
        key = rng.derive(rng.derive(episode, _IMAGES), ways).unsqueeze(-1)  # (B, n_way, 1)
        local = self._draw_images(key, self._sizes[classes], m)
        rows = self.dataset.offsets[classes].unsqueeze(-1) + local
        support = rows[..., :self.n_shot].reshape(n_tasks, -1)
        query = rows[..., self.n_shot:].reshape(n_tasks, -1)
        return support, query, classes

    def batch(self, episode_ids: Sequence[int] | torch.Tensor) -> EpisodeBatch:
        """The episodes ``episode_ids`` as one batch, gathered on the dataset's device.

        One ``index_select`` of all rows (on CPU, one per cache-sized block of rows), then
        ``dataset.to_float``, then the augmentation if any.

        Args:
            episode_ids: (B,) non-negative ints (B >= 1).
        Returns:
            an :class:`EpisodeBatch` with support_x (B, n_way * n_shot, C, H, W) and
            query_x (B, n_way * n_query, C, H, W) float (or (B, K, D) features).
        """
        ids = self._ids(episode_ids)
        if not len(ids):
            raise ValueError("batch() needs at least one episode id")
        support_idx, query_idx, classes = self.indices(ids)
        n_tasks, n_support, n_query = len(ids), support_idx.shape[1], query_idx.shape[1]
        rows = torch.cat([support_idx.reshape(-1), query_idx.reshape(-1)]).to(self.dataset.images.device)
        x = self._gather(rows)
        support_x = x[:n_tasks * n_support].view(n_tasks, n_support, *x.shape[1:])
        query_x = x[n_tasks * n_support:].view(n_tasks, n_query, *x.shape[1:])
        ways = torch.arange(self.n_way, device=ids.device)
        support_y = ways.repeat_interleave(self.n_shot).repeat(n_tasks, 1)
        query_y = ways.repeat_interleave(self.n_query).repeat(n_tasks, 1)
        if self.augment is not None:
            key = rng.derive(rng.derive(self._root, ids), _AUGMENT).unsqueeze(-1)  # (B, 1)
            image_key, class_key = rng.derive(key, 0), rng.derive(key, 1)
            positions = torch.arange(n_support + n_query, device=ids.device)
            support_x = self.augment(support_x, image_keys=rng.derive(image_key, positions[:n_support]),
                                     class_keys=rng.derive(class_key, support_y))
            query_x = self.augment(query_x, image_keys=rng.derive(image_key, positions[n_support:]),
                                   class_keys=rng.derive(class_key, query_y))
        return EpisodeBatch(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y,
                            classes=classes, episode_ids=ids)

    def _draw_images(self, key: torch.Tensor, sizes: torch.Tensor, m: int) -> torch.Tensor:
        """``m`` distinct positions in ``[0, size)`` per class, in uniformly random order.

        Args:
            key: (B, n_way, 1) int64 keys; sizes: (B, n_way) int64 class sizes.
        Returns:
            (B, n_way, m) int64 positions within each class.
        """
        if self._max_size <= _KEY_SORT_MAX_CLASS_SIZE:
            # The m smallest of one random key per image (images past the class size get the largest key).
            positions = torch.arange(self._max_size, device=key.device)
            keys = (rng.derive(key, positions) & rng.MASK63).masked_fill(positions >= sizes.unsqueeze(-1), rng.MASK63)
            return torch.topk(keys, m, dim=-1, largest=False, sorted=True).indices
        # Floyd's algorithm (memory independent of class size), then a random order.
        slots = torch.arange(m, device=key.device)
        top = sizes.unsqueeze(-1) - m + slots  # (B, n_way, m)
        return _shuffle(_floyd(rng.uniform_int(key, slots, top + 1), top), rng.derive(key, m + slots))

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """``dataset.to_float(dataset.images[rows])``: one gather, or cache-sized blocks of rows for big CPU batches."""
        images, to_float = self.dataset.images, self.dataset.to_float
        per_row = max(1, images[0].numel())
        if images.device.type != "cpu" or len(rows) * per_row <= _CPU_BLOCKS_ABOVE:
            return to_float(images.index_select(0, rows))
        step = max(1, _CPU_BLOCK_ELEMENTS // per_row)
        first = to_float(images.index_select(0, rows[:step]))
        out = torch.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
        out[:step] = first
        for start in range(step, len(rows), step):
            out[start:start + step] = to_float(images.index_select(0, rows[start:start + step]))
        return out

    def batches(self, batch_size: int, *, start: int = 0, stop: int | None = None) -> Iterator[EpisodeBatch]:
        """Consecutive batches of episodes ``start, start + 1, ..., stop - 1``.

        ``stop=None`` means ``num_episodes``, or an endless stream when the sampler has no length.
        The last batch may be smaller than ``batch_size``.
        """
        _positive_int("batch_size", batch_size)
        if stop is None:
            stop = self.num_episodes
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
        first = start
        while stop is None or first < stop:
            last = first + batch_size if stop is None else min(first + batch_size, stop)
            yield self.batch(torch.arange(first, last))
            first = last
