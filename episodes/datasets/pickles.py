"""Readers of the pickled image caches other few-shot libraries ship, built on :mod:`episodes.datasets.safe_pickle`
(no code in a file runs).

- learn2learn's ``mini-imagenet-cache-{split}.pkl``: a dict with ``image_data`` (N, H, W, 3) uint8 and
  ``class_dict`` {class name: [row indices]}.
- RFS/MetaOptNet's ``*_category_split_*.pickle``: a (often Python 2) dict with ``data`` (N, H, W, 3) uint8,
  ``labels`` (N,) ints and optionally ``catname2label`` {class name: label}.

Each reader returns the images as stored and the class name of every image; grouping, resizing and
caching are the loader's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from episodes.datasets.safe_pickle import load_pickle

__all__ = ["read_learn2learn_pickle", "read_pickle_dict", "read_rfs_pickle"]


def read_pickle_dict(path: Path, *, keys: Sequence[str]) -> dict:
    """The dict pickled in ``path`` (read with :func:`~episodes.datasets.safe_pickle.load_pickle`).

    Raises:
        ValueError: the file holds no dict, or the dict lacks one of ``keys``.
        pickle.UnpicklingError: the file names a global outside the allowed numpy/builtin ones.
    """
    data = load_pickle(path)
    if not isinstance(data, dict) or any(k not in data for k in keys):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a dict with keys {list(keys)}, found {found}")
    return data


def _check_pixels(data: object, source: Path, key: str) -> np.ndarray:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{source}: {key!r} must be (N, H, W, 3) uint8 images, got {type(data).__name__} {shape}; "
                         "is this the right file?")
    return data


def read_learn2learn_pickle(path: Path) -> tuple[np.ndarray, list[str]]:
    """Images and class names of a learn2learn cache pickle (``image_data`` + ``class_dict``).

    Returns:
        ``image_data`` as stored, (N, H, W, 3) uint8 in file order, and the class name (``class_dict``
        key, e.g. a WordNet id) of each of the N images.

    Raises:
        ValueError: a key is missing, the images are not (N, H, W, 3) uint8, or ``class_dict`` lists
            a row out of range or twice, or leaves an image without a class.
    """
    data = read_pickle_dict(path, keys=("image_data", "class_dict"))
    images = _check_pixels(data["image_data"], path, "image_data")
    names: list[str | None] = [None] * len(images)
    for wnid, rows in data["class_dict"].items():
        for row in rows:
            if not 0 <= int(row) < len(images) or names[int(row)] is not None:
                raise ValueError(f"{path}: class_dict row {row} of {wnid!r} is out of range or listed twice")
            names[int(row)] = str(wnid)
    missing = [i for i, name in enumerate(names) if name is None]
    if missing:
        raise ValueError(f"{path}: {len(missing)} images belong to no class in class_dict (e.g. row {missing[0]})")
    return images, [str(name) for name in names]


def read_rfs_pickle(path: Path) -> tuple[np.ndarray, list[str]]:
    """Images and class names of an RFS/MetaOptNet pickle (``data`` + ``labels`` [+ ``catname2label``]).

    Returns:
        ``data`` as stored, (N, H, W, 3) uint8 in file order, and the class name of each of the N
        images: its ``catname2label`` name, or ``class<label:04d>`` for a label the file does not name.

    Raises:
        ValueError: a key is missing, the images are not (N, H, W, 3) uint8, or there are not N labels.
    """
    data = read_pickle_dict(path, keys=("data", "labels"))
    images = _check_pixels(data["data"], path, "data")
    labels = [int(label) for label in data["labels"]]
    if len(labels) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(labels)} labels")
    catname = {int(label): str(name) for name, label in data.get("catname2label", {}).items()}
    return images, [catname.get(label, f"class{label:04d}") for label in labels]
