"""episodes: few-shot datasets decoded into tensor caches, and seeded episodic samplers."""

from episodes.dataset import FewShotDataset
from episodes.episode import Episode, EpisodeBatch

__all__ = ["Episode", "EpisodeBatch", "FewShotDataset"]
