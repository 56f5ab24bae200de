"""The path every dataset loader takes: source files -> decoded-array cache -> :class:`FewShotDataset`.

A loader says what its arrays depend on (a key), which files they come from and how to decode them;
:func:`load_cached_dataset` fingerprints the files, finds or builds the cache and groups the images by
class. Loaders whose decoded arrays are images with per-image class names store them in the standard
layout of :func:`group_by_class`, which :func:`load_cached_dataset` reads by default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.cache import cache_dir_for, cached_arrays, decode_names, encode_names, source_fingerprint
from episodes.datasets.images import resize_array

__all__ = ["group_by_class", "load_cached_dataset"]

Arrays = dict[str, torch.Tensor]


def group_by_class(images: np.ndarray, names: Sequence[str], *, size: int) -> Arrays:
    """The standard cache layout of images and the class name of each, classes sorted by name.

    Args:
        images: (N, H, W, 3) uint8; resized (Lanczos) to ``size`` x ``size`` unless already that size.
        names: the class name of each of the N images.
        size: side of the cached images.

    Returns:
        ``images``: (N, 3, size, size) uint8, class after class (stable within a class); ``labels``:
        (N,) int64 class index (into the sorted names) of each; ``class_names``: the sorted distinct
        names, as :func:`~episodes.datasets.cache.encode_names` stores them.
    """
    classes = sorted(set(names))
    code = {name: i for i, name in enumerate(classes)}
    labels = np.array([code[name] for name in names], dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    if images.shape[1:3] != (size, size):
        resized = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            resized[i] = resize_array(image, (size, size))
        images = resized
    return {"images": torch.from_numpy(np.ascontiguousarray(images[order].transpose(0, 3, 1, 2))),
            "labels": torch.from_numpy(labels[order]), "class_names": encode_names(classes)}


def _stored_classes(arrays: Arrays) -> tuple[torch.Tensor, list[str]]:
    return arrays["labels"], decode_names(arrays["class_names"])


def load_cached_dataset(
    *,
    key: Mapping[str, object],
    sources: Sequence[Path] | str,
    root: Path | None,
    cache_dir: Path | None,
    cache_name: str,
    build: Callable[[], Arrays],
    name: str,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Callable[[Arrays], tuple[torch.Tensor, Sequence[str]]] = _stored_classes,
    key_in_name: bool = False,
) -> FewShotDataset:
    """Decode ``sources`` once into a memory-mapped cache, then group the cached images by class.

    The cache key is ``key`` plus ``"source"``: the :func:`~episodes.datasets.cache.source_fingerprint`
    of ``sources``, or ``sources`` itself when it is a string (a content id such as a sha256, for data
    whose location and mtime do not matter). The file is ``<cache_name>.pt`` in
    :func:`~episodes.datasets.cache.cache_dir_for` ``(root, cache_dir)``; see
    :func:`~episodes.datasets.cache.cached_arrays` for when it is rebuilt.

    Args:
        key: JSON-serialisable description of what the arrays depend on besides the sources (loader name
            and version, image size, split, ...); it must not hold ``"source"``.
        sources: the files the arrays are decoded from, or a content id.
        root: the data folder (the cache goes beside it when writable); None for data shipped in the package.
        cache_dir: an explicit cache folder, or None.
        cache_name: the cache file's name without ``.pt``, e.g. ``"mini-imagenet-rfs-train-84"``.
        build: decodes the sources into ``{"images": (N, C, H, W) uint8, ...}`` plus whatever ``classes``
            reads; called only when the cache is missing or stale.
        name, mean, std: as in :meth:`FewShotDataset.from_tensors`.
        classes: from the arrays (cached or built), the (N,) int64 class index of each image and the
            name of each class; default: the ``labels`` and ``class_names`` of :func:`group_by_class`.
        key_in_name: append ``-`` and 16 hex digits of the key's sha256 to ``cache_name`` (for keys, such
            as a list of classes, too long to spell out in the name).

    Returns:
        A :class:`FewShotDataset` of the (N, C, H, W) uint8 images, class after class.
    """
    if "source" in key:
        raise ValueError("key must not hold 'source': load_cached_dataset adds the fingerprint of sources")
    source = sources if isinstance(sources, str) else source_fingerprint(sources)
    full_key = {**key, "source": source}
    if key_in_name:
        cache_name += "-" + hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    arrays = cached_arrays(cache_dir_for(root, cache_dir) / f"{cache_name}.pt", key=full_key, build=build)
    labels, class_names = classes(arrays)
    return FewShotDataset.from_tensors(arrays["images"], labels, class_names, name=name, mean=mean, std=std)
