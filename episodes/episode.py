"""Episode containers: one few-shot task, or a batch of tasks with a leading task dimension."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class EpisodeBatch:
    """B few-shot tasks of identical shape, stacked along a leading task dimension.

    Attributes:
        support_x: (B, n_way * n_shot, C, H, W) float images, class-major order
            (all shots of label 0, then label 1, ...); in variable-shot episodes (B, S, C, H, W) with
            ``shots[:, c]`` images of label ``c``.
        support_y: (B, n_way * n_shot) int64 labels in [0, n_way) (or (B, S)).
        query_x: (B, n_way * n_query, C, H, W) float images, class-major order.
        query_y: (B, n_way * n_query) int64 labels in [0, n_way).
        classes: (B, n_way) int64 dataset class index of each episode label.
        episode_ids: (B,) int64 index of each episode in its sampler (seeded stream).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    episode_ids: torch.Tensor

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    @property
    def n_way(self) -> int:
        return self.classes.shape[1]

    @property
    def shots(self) -> torch.Tensor:
        """(B, n_way) int64 support images of each label of each task."""
        counts = torch.zeros(self.support_y.shape[0], self.n_way, dtype=torch.int64, device=self.device)
        return counts.scatter_add_(1, self.support_y, torch.ones_like(self.support_y))

    @property
    def n_shot(self) -> int:
        """Support images per class, the same for every class (``ValueError`` for variable-shot episodes, e.g. of
        :class:`~episodes.variable.VariableEpisodeSampler`: use :attr:`shots`)."""
        shots = self.shots
        if not bool((shots == shots[:, :1]).all()):
            raise ValueError(f"these episodes have different numbers of support images per class "
                             f"({shots[0].tolist()} in the first); use batch.shots for the per-class counts")
        return self.support_y.shape[1] // self.n_way

    @property
    def n_query(self) -> int:
        return self.query_y.shape[1] // self.n_way

    @property
    def device(self) -> torch.device:
        return self.support_x.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> EpisodeBatch:
        """Return a copy with every tensor on ``device``."""
        return EpisodeBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )

    def __getitem__(self, task: int) -> Episode:
        """The ``task``-th episode of the batch, without its task dimension."""
        return Episode(**{f.name: getattr(self, f.name)[task] for f in fields(self) if f.name != "episode_ids"},
                       episode_id=int(self.episode_ids[task]))

    def select(self, tasks: slice | torch.Tensor) -> EpisodeBatch:
        """A sub-batch of the tasks picked by ``tasks`` (a slice or an index tensor)."""
        return EpisodeBatch(**{f.name: getattr(self, f.name)[tasks] for f in fields(self)})

    @staticmethod
    def stack(episodes: list[Episode]) -> EpisodeBatch:
        """Stack same-shaped episodes into a batch (the collate function for a DataLoader)."""
        if not episodes:
            raise ValueError("cannot stack an empty list of episodes")
        return EpisodeBatch(
            support_x=torch.stack([e.support_x for e in episodes]),
            support_y=torch.stack([e.support_y for e in episodes]),
            query_x=torch.stack([e.query_x for e in episodes]),
            query_y=torch.stack([e.query_y for e in episodes]),
            classes=torch.stack([e.classes for e in episodes]),
            episode_ids=torch.tensor([e.episode_id for e in episodes], dtype=torch.int64),
        )


@dataclass(frozen=True)
class Episode:
    """One few-shot task.

    Attributes:
        support_x: (n_way * n_shot, C, H, W) float images, class-major order.
        support_y: (n_way * n_shot,) int64 labels in [0, n_way).
        query_x: (n_way * n_query, C, H, W) float images, class-major order.
        query_y: (n_way * n_query,) int64 labels in [0, n_way).
        classes: (n_way,) int64 dataset class index of each episode label.
        episode_id: index of the episode in its sampler.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor
    episode_id: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        """Return a copy with every tensor on ``device``."""
        return Episode(
            support_x=self.support_x.to(device, non_blocking=non_blocking),
            support_y=self.support_y.to(device, non_blocking=non_blocking),
            query_x=self.query_x.to(device, non_blocking=non_blocking),
            query_y=self.query_y.to(device, non_blocking=non_blocking),
            classes=self.classes.to(device, non_blocking=non_blocking),
            episode_id=self.episode_id,
        )

    def as_batch(self) -> EpisodeBatch:
        """This episode as a batch of one task."""
        return EpisodeBatch.stack([self])
