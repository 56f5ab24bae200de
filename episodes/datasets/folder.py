"""Any dataset laid out as one folder per class: ``root/<class>/*.png|jpg|jpeg``.

Classes may differ in size. A class split is either given explicitly (class names per split) or
drawn from fractions, deterministically from a seed with :mod:`episodes.rng` (the same on every
machine). The decoded images are cached and loaded memory-mapped next time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from episodes import rng
from episodes.dataset import FewShotDataset
from episodes.datasets.images import decode_image
from episodes.datasets.loading import load_cached_dataset

__all__ = ["IMAGE_SUFFIXES", "assign_classes", "decode_files", "list_classes", "load_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LOADER_VERSION = 1


def list_classes(root: Path) -> dict[str, list[Path]]:
    """Every class folder of ``root`` (hidden folders skipped) and its image files, both sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} is not a folder; expected root/<class>/*.png|jpg|jpeg")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[folder.name] = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{root} has no class folders; expected root/<class>/*.png|jpg|jpeg")
    return found


def assign_classes(names: Sequence[str], fractions: Mapping[str, float], *, seed: int) -> dict[str, list[str]]:
    """Split class ``names`` into parts of the given ``fractions``, deterministically from ``seed``.

    The names are sorted, shuffled by the counter-based generator of :mod:`episodes.rng` and cut
    in the order of ``fractions`` at the rounded cumulative fractions.

    Args:
        names: class names (order does not matter).
        fractions: e.g. ``{"train": 0.6, "val": 0.2, "test": 0.2}``: positive, summing to 1.
        seed: any int.
    Returns:
        the sorted class names of each part, keyed like ``fractions``.
    """
    if not fractions or any(not isinstance(f, (int, float)) or isinstance(f, bool) or f <= 0
                            for f in fractions.values()):
        raise ValueError(f"fractions must be a non-empty mapping of positive numbers, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total} from {dict(fractions)}")
    ordered = sorted(names)
    keys = rng.derive(rng.seed_key(seed), torch.arange(len(ordered)))
    shuffled = [ordered[i] for i in torch.argsort(keys, stable=True).tolist()]
    parts, start, cumulative = {}, 0, 0.0
    for i, (part, fraction) in enumerate(fractions.items()):
        cumulative += fraction
        stop = len(shuffled) if i == len(fractions) - 1 else round(cumulative * len(shuffled))
        if stop <= start:
            raise ValueError(f"fraction {fraction} gives split {part!r} no class out of {len(shuffled)}; "
                             "use larger fractions or more classes")
        parts[part] = sorted(shuffled[start:stop])
        start = stop
    return parts


def _select(available: Sequence[str], classes: Sequence[str] | Mapping[str, Sequence[str]] | None,
            split: str | None, fractions: Mapping[str, float] | None, seed: int) -> list[str]:
    """The class names to load."""
    if fractions is not None:
        if classes is not None or split is None:
            raise ValueError("fractions= needs split= (which part to load) and no classes=")
        parts = assign_classes(available, fractions, seed=seed)
        if split not in parts:
            raise ValueError(f"split {split!r} is not one of the fractions' keys {list(parts)}")
        return parts[split]
    if isinstance(classes, Mapping):
        if split not in classes:
            raise ValueError(f"split={split!r} is not one of the class lists given: {list(classes)}")
        chosen = list(classes[split])
    elif classes is not None:
        if isinstance(classes, str) or split is not None:
            raise ValueError("classes= must be a list of class names, or a mapping split -> names used with split=")
        chosen = list(classes)
    else:
        if split is not None:
            raise ValueError(f"split={split!r} needs classes= as a mapping split -> names, or fractions=")
        return list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"classes must be distinct names of class folders; unknown: {unknown[:5]}, "
                         f"available: {list(available)[:5]}{' ...' if len(available) > 5 else ''}")
    return chosen


def decode_files(files: list[Path], mode: str, size: int) -> dict[str, torch.Tensor]:
    """Decode image ``files`` in parallel threads, converted to ``mode`` (``"L"`` or ``"RGB"``) and resized to
    ``size`` squares (Lanczos): ``{"images": (len(files), 1 or 3, size, size) uint8}`` in the order of ``files``,
    the ``build`` of :func:`~episodes.datasets.loading.load_cached_dataset` for a list of image files."""
    channels = 1 if mode == "L" else 3
    images = np.empty((len(files), size, size, channels), dtype=np.uint8)

    def decode(i: int) -> None:
        pixels = decode_image(files[i], mode=mode, size=(size, size), name=str(files[i]))
        images[i] = pixels.reshape(size, size, channels)

    with ThreadPoolExecutor() as pool:
        list(pool.map(decode, range(len(files))))
    logger.info("decoded %d images at %dx%d", len(files), size, size)
    return {"images": torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))}


def load_image_folder(root: Path | str, *, image_size: int, channels: int = 3,
                      classes: Sequence[str] | Mapping[str, Sequence[str]] | None = None, split: str | None = None,
                      fractions: Mapping[str, float] | None = None, seed: int = 0, mean: Sequence[float],
                      std: Sequence[float], cache_dir: Path | None = None) -> FewShotDataset:
    """Load ``root/<class>/*.png|jpg|jpeg`` (all classes, or one split of them).

    Args:
        root: the folder of class folders (hidden folders such as the cache are skipped).
        image_size: side of the square images; every image is resized to it (Lanczos).
        channels: 1 (greyscale) or 3 (RGB).
        classes: the class folder names to load, or a mapping ``split -> names`` used with ``split``.
        split: which part to load when ``classes`` is a mapping or ``fractions`` is given.
        fractions: e.g. ``{"train": 0.6, "val": 0.2, "test": 0.2}``; classes are assigned with
            :func:`assign_classes` from ``seed``.
        seed: seed of the fractions' class assignment.
        mean, std: per-channel statistics (``channels`` entries each) for ``FewShotDataset.to_float``.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        a :class:`FewShotDataset` of (N, channels, image_size, image_size) uint8 images.
    """
    root = Path(root)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need {channels} entries each (std > 0), got mean={mean}, std={std}")
    found = list_classes(root)
    chosen = _select(list(found), classes, split, fractions, seed)
    empty = [name for name in chosen if not found[name]]
    if empty:
        raise ValueError(f"class folder(s) {empty[:5]} in {root} hold no {'/'.join(IMAGE_SUFFIXES)} images; "
                         "add images or remove the folders")
    files = [path for name in chosen for path in found[name]]
    labels = torch.tensor([i for i, name in enumerate(chosen) for _ in found[name]])
    mode = "L" if channels == 1 else "RGB"
    return load_cached_dataset(
        key={"loader": "image-folder", "version": _LOADER_VERSION, "classes": chosen, "size": image_size,
             "mode": mode},
        sources=files, root=root, cache_dir=cache_dir, cache_name=f"folder-{root.name}", key_in_name=True,
        build=functools.partial(decode_files, files, mode, image_size), classes=lambda _: (labels, chosen),
        name=f"{root.name}/{split}" if split else root.name, mean=mean, std=std)
