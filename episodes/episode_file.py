"""Fixed test episodes as a file: the same episodes on every machine, in every version, in other libraries.

A seeded :class:`~episodes.sampler.EpisodeSampler` fixes its episodes by ``(seed, i)``, but only for this
library's sampling algorithm. An episodes file lists the items of every episode instead, with the content
fingerprint (:func:`episodes.fingerprint.content_fingerprint`) of the data they index, and a checksum. The format
(``fewshot-episodes/1``, plain JSON) is documented in ``docs/formats.md``:

- ``dataset``: ``name``, ``fingerprint``, ``classes`` (class names, in the dataset's order) and ``class_sizes``;
- ``sets``: one per episode shape, each with ``n_way``, ``n_shot``, ``n_query``, ``seed`` (what the episodes were
  drawn with; a record), ``episodes`` (their number E) and three nested integer lists: ``classes`` (E, n_way), the
  index into ``dataset.classes`` of each episode label, labels in order; ``support`` (E, n_way, n_shot) and
  ``query`` (E, n_way, n_query), the position of each image within its class (0 .. class size - 1, in the order the
  loader stores the class's images);
- ``checksum``: the sha256 of the document without ``checksum``, serialised as
  ``json.dumps(document, sort_keys=True, separators=(",", ":"))``.

An item is thus ``(class, position)``; its row in a :class:`FewShotDataset` is ``offsets[class] + position``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from episodes.dataset import FewShotDataset
from episodes.files import atomic_write_text
from episodes.fingerprint import content_fingerprint, short
from episodes.sampler import EpisodeSampler

__all__ = ["FORMAT", "EpisodeSet", "EpisodesFile", "FixedEpisodes", "draw_episode_set", "read_episodes_file",
           "write_episodes_file"]

FORMAT = "fewshot-episodes/1"
_DRAW_BATCH = 1000  # episodes whose indices are drawn at once by draw_episode_set


@dataclass(frozen=True, eq=False)
class EpisodeSet:
    """Fixed episodes of one shape.

    Attributes:
        n_way, n_shot, n_query: the episode shape (queries per class).
        seed: the seed they were drawn with (a record: the items below are what counts).
        classes: (E, n_way) int64 class index of each episode label, in label order.
        support: (E, n_way, n_shot) int64 position of each support image within its class.
        query: (E, n_way, n_query) int64 position of each query image within its class.
    """

    n_way: int
    n_shot: int
    n_query: int
    seed: int
    classes: torch.Tensor
    support: torch.Tensor
    query: torch.Tensor

    @property
    def num_episodes(self) -> int:
        return len(self.classes)

    @property
    def setting(self) -> str:
        return f"{self.n_way}-way {self.n_shot}-shot, {self.n_query} queries per class, {self.num_episodes} episodes"

    def rows(self, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E, n_way * n_shot) support and (E, n_way * n_query) query rows of a dataset with ``offsets``."""
        start = offsets[self.classes.to(offsets.device)].unsqueeze(-1)
        support = (start + self.support.to(offsets.device)).flatten(1)
        return support, (start + self.query.to(offsets.device)).flatten(1)


def draw_episode_set(dataset: FewShotDataset, *, n_way: int, n_shot: int, n_query: int, episodes: int,
                     seed: int) -> EpisodeSet:
    """Episodes ``0 .. episodes - 1`` of ``EpisodeSampler(dataset, n_way, n_shot, n_query, seed)`` as a set."""
    sampler = EpisodeSampler(dataset, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed, num_episodes=episodes)
    parts: list[tuple[torch.Tensor, ...]] = []
    for ids in torch.arange(episodes).split(_DRAW_BATCH):
        support_idx, query_idx, classes = (t.cpu() for t in sampler.indices(ids))
        start = dataset.offsets.cpu()[classes].unsqueeze(-1)
        parts.append((classes, support_idx.view(len(ids), n_way, n_shot) - start,
                      query_idx.view(len(ids), n_way, n_query) - start))
    classes, support, query = (torch.cat(column) for column in zip(*parts, strict=True))
    return EpisodeSet(n_way, n_shot, n_query, seed, classes, support, query)


class FixedEpisodes(EpisodeSampler):
    """A sampler whose episodes are read from an :class:`EpisodeSet` instead of drawn: episode ``i`` is the set's
    ``i``-th; batches are gathered exactly as :class:`EpisodeSampler` gathers them.

    Args:
        dataset: the data the set indexes (checked with :meth:`EpisodesFile.check_dataset`).
        episodes: the set.
    """

    def __init__(self, dataset: FewShotDataset, episodes: EpisodeSet) -> None:
        super().__init__(dataset, n_way=episodes.n_way, n_shot=episodes.n_shot, n_query=episodes.n_query,
                         seed=episodes.seed, num_episodes=episodes.num_episodes)
        self.episode_set = episodes
        self._rows = episodes.rows(dataset.offsets)
        self._classes = episodes.classes.to(dataset.offsets.device)

    def indices(self, episode_ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`EpisodeSampler.indices`: the set's support and query rows and classes of ``episode_ids``."""
        ids = self._ids(episode_ids).to(self._classes.device)
        return self._rows[0][ids], self._rows[1][ids], self._classes[ids]


def _checksum(document: Mapping[str, Any]) -> str:
    body = {key: value for key, value in document.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_episodes_file(path: str | os.PathLike[str], dataset: FewShotDataset, sets: Sequence[EpisodeSet]) -> str:
    """Write ``sets`` (episodes of ``dataset``) to ``path`` atomically; returns the file's checksum."""
    if not sets:
        raise ValueError("no episode sets to write; give at least one")
    document: dict[str, Any] = {
        "format": FORMAT,
        "dataset": {"name": dataset.name, "fingerprint": content_fingerprint(dataset),
                    "classes": list(dataset.class_names), "class_sizes": dataset.class_sizes.tolist()},
        "sets": [{"n_way": s.n_way, "n_shot": s.n_shot, "n_query": s.n_query, "seed": s.seed,
                  "episodes": s.num_episodes, "classes": s.classes.tolist(), "support": s.support.tolist(),
                  "query": s.query.tolist()} for s in sets],
    }
    document["checksum"] = _checksum(document)
    atomic_write_text(path, json.dumps(document, separators=(",", ":")) + "\n")
    return document["checksum"]


@dataclass(frozen=True, eq=False)
class EpisodesFile:
    """A read and checked episodes file (:func:`read_episodes_file`)."""

    path: Path
    dataset_name: str
    fingerprint: str
    classes: tuple[str, ...]
    class_sizes: tuple[int, ...]
    sets: tuple[EpisodeSet, ...]
    checksum: str

    def check_dataset(self, dataset: FewShotDataset) -> None:
        """Raise ``ValueError`` unless ``dataset`` holds exactly the data the file was made on (its fingerprint)."""
        found = content_fingerprint(dataset)
        if found == self.fingerprint:
            return
        same_classes = (tuple(dataset.class_names), tuple(dataset.class_sizes.tolist())) == (self.classes,
                                                                                             self.class_sizes)
        what = "the same classes and image counts but other pixels" if same_classes else "other classes or counts"
        raise ValueError(f"{self.path} was made on another copy of the data: {self.dataset_name} with fingerprint "
                         f"{short(self.fingerprint)}, but {dataset.name} here has fingerprint {short(found)} ({what}); "
                         "export the episodes from this copy, or load the copy they were made on (python -m fewshot "
                         "data check says which copy you have)")

    def select(self, settings: Sequence[tuple[int, int]], *, n_query: int, episodes: int) -> list[EpisodeSet]:
        """The set of each ``(n_way, n_shot)`` of ``settings``; ``ValueError`` naming the keys to set where the file
        has no set of that shape with ``n_query`` queries per class and ``episodes`` episodes."""
        chosen = []
        held = "; ".join(s.setting for s in self.sets)
        for n_way, n_shot in settings:
            shape = [s for s in self.sets if (s.n_way, s.n_shot) == (n_way, n_shot)]
            exact = [s for s in shape if (s.n_query, s.num_episodes) == (n_query, episodes)]
            if exact:
                chosen.append(exact[0])
            elif shape:
                raise ValueError(f"{self.path} holds {shape[0].setting}, but the evaluation asks for {n_query} "
                                 f"queries per class and {episodes} episodes; set evaluation.n_query="
                                 f"{shape[0].n_query} evaluation.episodes={shape[0].num_episodes}")
            else:
                raise ValueError(f"{self.path} holds no {n_way}-way {n_shot}-shot episodes (it holds: {held}); set "
                                 "evaluation.settings to shapes the file holds, or export a file for these settings")
        return chosen


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is not a valid episodes file: {what}; export it again (python -m fewshot episodes "
                      "export)")


def _int_tensor(value: object, shape: tuple[int, ...], path: Path, where: str) -> torch.Tensor:
    try:
        tensor = torch.tensor(value, dtype=torch.int64)
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise _bad(path, f"{where} is not a nested list of integers ({err})") from err
    if tuple(tensor.shape) != shape or (tensor.numel() and bool((tensor < 0).any())):
        raise _bad(path, f"{where} must be non-negative integers of shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def _read_set(entry: object, sizes: torch.Tensor, path: Path, k: int) -> EpisodeSet:
    keys = ("n_way", "n_shot", "n_query", "seed", "episodes", "classes", "support", "query")
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise _bad(path, f"set {k} must hold the keys {list(keys)}")
    shape = [entry[key] for key in keys[:5]]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in shape) or min(shape[:3] + shape[4:]) < 1:
        raise _bad(path, f"set {k}: n_way, n_shot, n_query and episodes must be positive integers, seed an integer")
    n_way, n_shot, n_query, seed, count = shape
    classes = _int_tensor(entry["classes"], (count, n_way), path, f"set {k} classes")
    support = _int_tensor(entry["support"], (count, n_way, n_shot), path, f"set {k} support")
    query = _int_tensor(entry["query"], (count, n_way, n_query), path, f"set {k} query")
    if bool((classes >= len(sizes)).any()):
        raise _bad(path, f"set {k} names a class index >= the {len(sizes)} classes of the file")
    if bool((classes.sort(-1).values.diff(dim=-1) == 0).any()):
        raise _bad(path, f"set {k} has an episode with the same class twice")
    items = torch.cat([support, query], -1)
    if bool((items >= sizes[classes].unsqueeze(-1)).any()):
        raise _bad(path, f"set {k} names an image position beyond its class's size")
    if bool((items.sort(-1).values.diff(dim=-1) == 0).any()):
        raise _bad(path, f"set {k} has an episode using the same image twice")
    return EpisodeSet(n_way, n_shot, n_query, seed, classes, support, query)


def read_episodes_file(path: str | os.PathLike[str]) -> EpisodesFile:
    """Read and check an episodes file: readable JSON of this format, checksum, and consistent contents.

    Raises:
        ValueError: saying what is wrong (unreadable or truncated, another format, edited: checksum mismatch,
            indices out of range or repeated within an episode).
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"episodes file {path} not found; export one with python -m fewshot episodes export")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable episodes file ({err}); it is truncated or damaged: export it "
                         "again (python -m fewshot episodes export)") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fewshot episodes file (expected format {FORMAT!r})")
    if document.get("checksum") != _checksum(document):
        raise ValueError(f"{path} was edited or damaged: its checksum does not match its content; export it again "
                         "(python -m fewshot episodes export)")
    data = document.get("dataset")
    if (not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get(
            "fingerprint"), str) or not isinstance(data.get("classes"), list)):
        raise _bad(path, "'dataset' must hold name, fingerprint, classes and class_sizes")
    sizes = _int_tensor(data.get("class_sizes"), (len(data["classes"]),), path, "dataset class_sizes")
    sets = document.get("sets")
    if not isinstance(sets, list) or not sets:
        raise _bad(path, "'sets' must be a non-empty list")
    return EpisodesFile(path, data["name"], data["fingerprint"], tuple(str(c) for c in data["classes"]),
                        tuple(sizes.tolist()), tuple(_read_set(s, sizes, path, k) for k, s in enumerate(sets)),
                        document["checksum"])
