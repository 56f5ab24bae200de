"""Read torchmeta's Mini-ImageNet files (h5py is an optional dependency, imported only here).

torchmeta (Deleu et al. 2019, "Torchmeta: A Meta-Learning library for PyTorch") converts
learn2learn-style pickles into ``<root>/miniimagenet/{split}_data.hdf5``, whose group
``datasets`` holds one (n, 84, 84, 3) uint8 dataset per class (named by WordNet id), and
``{split}_labels.json``, the sorted list of those class names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["read_torchmeta", "torchmeta_files"]

DATA_FILE = "{split}_data.hdf5"
LABELS_FILE = "{split}_labels.json"


def torchmeta_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """The data and labels files of ``split`` in ``root`` or ``root/miniimagenet``, or None."""
    for folder in (root, root / "miniimagenet"):
        data, labels = folder / DATA_FILE.format(split=split), folder / LABELS_FILE.format(split=split)
        if data.is_file() and labels.is_file():
            return data, labels
    return None


def read_torchmeta(data_file: Path, labels_file: Path) -> tuple[np.ndarray, list[str]]:
    """All images of a torchmeta split and the class name of each.

    Returns:
        (N, H, W, 3) uint8 images, class after class in the order of the labels file, and the
        class name of each image.
    """
    try:
        import h5py
    except ImportError as err:
        raise ImportError("reading torchmeta's .hdf5 files needs h5py: pip install h5py") from err
    classes = json.loads(labels_file.read_text())
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{labels_file}: expected a non-empty JSON list of class names")
    images, names = [], []
    with h5py.File(data_file, "r") as handle:
        if "datasets" not in handle:
            raise ValueError(f"{data_file}: no 'datasets' group; is this a torchmeta Mini-ImageNet file?")
        group = handle["datasets"]
        missing = [c for c in classes if c not in group]
        if missing:
            raise ValueError(f"{data_file}: classes listed in {labels_file.name} are absent: {missing[:5]}")
        for name in classes:
            pixels = np.asarray(group[name])
            if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
                raise ValueError(f"{data_file}: class {name!r} must hold (n, H, W, 3) uint8 images, "
                                 f"got {pixels.dtype} {pixels.shape}")
            images.append(pixels)
            names += [name] * len(pixels)
    shapes = {p.shape[1:] for p in images}
    if len(shapes) != 1:
        raise ValueError(f"{data_file}: classes hold images of different sizes {sorted(shapes)}")
    return np.concatenate(images), names
