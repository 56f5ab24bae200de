"""episodes: few-shot datasets decoded into tensor caches, and seeded episodic samplers."""

from episodes.augment import Augment, Compose, RandomCropFlip, RandomRot90Classes
from episodes.dataset import FewShotDataset
from episodes.episode import Episode, EpisodeBatch
from episodes.sampler import EpisodeSampler
from episodes.variable import VariableEpisodeSampler, VariableShape

__all__ = ["Augment", "Compose", "Episode", "EpisodeBatch", "EpisodeSampler", "FewShotDataset", "RandomCropFlip",
           "RandomRot90Classes", "VariableEpisodeSampler", "VariableShape"]
