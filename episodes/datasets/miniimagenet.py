"""Mini-ImageNet (Vinyals et al. 2016, "Matching Networks for One Shot Learning") with the class
split of Ravi & Larochelle 2017 ("Optimization as a Model for Few-Shot Learning"): 64 train,
16 val and 20 test classes of 600 images, 84x84 RGB.

No pixels ship with this package (they come from ImageNet). Three layouts users have are read:

- ``images``: ``root/images/<filename>`` (or ``root/images/<wnid>/<filename>``) and the Ravi split
  files ``root/{train,val,test}.csv`` (rows ``filename,label`` after a header). Without the CSVs the
  copies embedded in this package are used.
- ``learn2learn``: ``root/mini-imagenet-cache-{split}.pkl``, a dict with ``image_data``
  (N, 84, 84, 3) uint8 and ``class_dict`` {wnid: [row indices]}.
- ``rfs``: RFS/MetaOptNet's ``root/miniImageNet_category_split_{train_phase_train,val,test}.pickle``,
  a (Python 2) dict with ``data`` (N, 84, 84, 3) uint8, ``labels`` (N,) and optionally
  ``catname2label`` {wnid: label}.
- ``torchmeta``: ``{split}_data.hdf5`` + ``{split}_labels.json`` in ``root`` or ``root/miniimagenet``
  (see :mod:`episodes.datasets.torchmeta`; needs h5py).

Pickles are read with :mod:`episodes.datasets.pickles` (no code runs). The decoded images are cached
(:func:`episodes.datasets.loading.load_cached_dataset`) and loaded memory-mapped next time.
"""

from __future__ import annotations

import functools
import gzip
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.images import decode_image
from episodes.datasets.loading import group_by_class, load_cached_dataset
from episodes.datasets.pickles import read_learn2learn_pickle, read_rfs_pickle
from episodes.datasets.torchmeta import read_torchmeta, torchmeta_files

__all__ = ["FORMATS", "IMAGENET_MEAN", "IMAGENET_STD", "SPLITS", "detect_format", "load_mini_imagenet",
           "read_ravi_split"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
FORMATS = ("auto", "images", "learn2learn", "rfs", "torchmeta")
EMBEDDED_SPLITS = Path(__file__).parent / "_data" / "mini-imagenet-ravi-splits.csv.gz"
_LEARN2LEARN_FILE = "mini-imagenet-cache-{split}.pkl"
_RFS_FILES = {"train": "miniImageNet_category_split_train_phase_train.pickle",
              "val": "miniImageNet_category_split_val.pickle",
              "test": "miniImageNet_category_split_test.pickle"}
_LOADER_VERSION = 1


def _parse_rows(text: str, *, source: str, columns: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or len(lines[0].split(",")) != columns or "filename" not in lines[0]:
        raise ValueError(f"{source}: expected a header naming {'split,' if columns == 3 else ''}filename,label")
    rows = [line.split(",") for line in lines[1:]]
    bad = [i + 2 for i, row in enumerate(rows) if len(row) != columns or not all(row)]
    if bad:
        raise ValueError(f"{source}: malformed line(s) {bad[:5]}; each needs {columns} comma-separated fields")
    return rows


def read_ravi_split(root: Path | None, split: str) -> tuple[list[tuple[str, str]], Path]:
    """The ``(filename, wnid)`` rows of ``split``: from ``root/<split>.csv`` if present, else the embedded copy.

    Returns:
        the rows in file order and the file they came from.
    """
    _check_split(split)
    csv = None if root is None else Path(root) / f"{split}.csv"
    if csv is not None and csv.is_file():
        try:
            text = csv.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{csv}: not a UTF-8 text file ({err.reason} at byte {err.start}); expected the Ravi "
                             "split CSV with a header filename,label") from err
        rows = _parse_rows(text, source=str(csv), columns=2)
        return [(filename, label) for filename, label in rows], csv
    text = gzip.decompress(EMBEDDED_SPLITS.read_bytes()).decode()
    rows = _parse_rows(text, source=str(EMBEDDED_SPLITS), columns=3)
    return [(filename, label) for part, filename, label in rows if part == split], EMBEDDED_SPLITS


def _build_learn2learn(path: Path, size: int) -> dict[str, torch.Tensor]:
    return group_by_class(*read_learn2learn_pickle(path), size=size)


def _build_rfs(path: Path, size: int) -> dict[str, torch.Tensor]:
    return group_by_class(*read_rfs_pickle(path), size=size)


def _build_torchmeta(data_file: Path, labels_file: Path, size: int) -> dict[str, torch.Tensor]:
    return group_by_class(*read_torchmeta(data_file, labels_file), size=size)


def _image_paths(root: Path, rows: list[tuple[str, str]], csv: Path) -> list[Path]:
    paths, missing = [], []
    for filename, wnid in rows:
        flat, nested = root / "images" / filename, root / "images" / wnid / filename
        path = flat if flat.is_file() else nested
        paths.append(path)
        if not path.is_file():
            missing.append(filename)
    if missing:
        raise FileNotFoundError(f"{csv} names {len(missing)} images absent from {root / 'images'} "
                                f"(e.g. {missing[:3]}); copy the full Mini-ImageNet images folder there")
    return paths


def _build_images(paths: list[Path], rows: list[tuple[str, str]], size: int) -> dict[str, torch.Tensor]:
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def decode(i: int) -> None:
        images[i] = decode_image(paths[i], mode="RGB", size=(size, size), name=str(paths[i]))

    with ThreadPoolExecutor() as pool:
        list(pool.map(decode, range(len(paths))))
    logger.info("decoded %d Mini-ImageNet images at %dx%d", len(paths), size, size)
    return group_by_class(images, [wnid for _, wnid in rows], size=size)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown Mini-ImageNet split {split!r}; use one of {SPLITS}")


def detect_format(root: Path, split: str) -> str:
    """The layout of the Mini-ImageNet ``split`` (one of :data:`SPLITS`) in ``root``: ``"learn2learn"``, ``"rfs"``,
    ``"torchmeta"`` or ``"images"``, the first found in this order (the ``fmt="auto"`` of
    :func:`load_mini_imagenet`); ``FileNotFoundError`` naming the files of every layout if none is there."""
    _check_split(split)
    if (root / _LEARN2LEARN_FILE.format(split=split)).is_file():
        return "learn2learn"
    if (root / _RFS_FILES[split]).is_file():
        return "rfs"
    if torchmeta_files(root, split) is not None:
        return "torchmeta"
    if (root / "images").is_dir():
        return "images"
    raise FileNotFoundError(
        f"no Mini-ImageNet {split} data in {root}: expected {_LEARN2LEARN_FILE.format(split=split)} (learn2learn), "
        f"{_RFS_FILES[split]} (RFS/MetaOptNet), {split}_data.hdf5 + {split}_labels.json (torchmeta), "
        f"or an images/ folder (with the Ravi {split}.csv, else the embedded copy is used)")


def load_mini_imagenet(root: Path | str, *, split: str, fmt: str = "auto", image_size: int = 84,
                       cache_dir: Path | None = None) -> FewShotDataset:
    """Load one split of Mini-ImageNet, decoding it into the cache on first use.

    Args:
        root: folder holding the data in one of the layouts of this module.
        split: ``"train"``, ``"val"`` or ``"test"`` (Ravi & Larochelle classes).
        fmt: ``"images"``, ``"learn2learn"``, ``"rfs"``, ``"torchmeta"`` or ``"auto"`` (detected in this
            order of preference: learn2learn pickle, RFS pickle, torchmeta files, images folder).
        image_size: side of the square images (84 is the standard; others are resized with Lanczos).
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        a :class:`FewShotDataset` with (N, 3, image_size, image_size) uint8 images, classes sorted by
        WordNet id, and ImageNet mean and std.
    """
    root = Path(root)
    _check_split(split)
    if fmt not in FORMATS:
        raise ValueError(f"unknown Mini-ImageNet format {fmt!r}; use one of {FORMATS}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"Mini-ImageNet root {root} is not a folder; pass the folder holding images/ "
                                "or the learn2learn / RFS pickles / torchmeta files")
    fmt = detect_format(root, split) if fmt == "auto" else fmt
    build: Callable[[], dict[str, torch.Tensor]]
    if fmt == "images":
        rows, csv = read_ravi_split(root, split)
        if not rows:
            raise ValueError(f"{csv} lists no images of split {split!r}")
        paths = _image_paths(root, rows, csv)
        sources = [*paths, csv]
        build = functools.partial(_build_images, paths, rows, image_size)
    elif fmt == "torchmeta":
        files = torchmeta_files(root, split)
        if files is None:
            raise FileNotFoundError(f"no {split}_data.hdf5 and {split}_labels.json in {root} "
                                    f"or {root / 'miniimagenet'}")
        sources = list(files)
        build = functools.partial(_build_torchmeta, *files, image_size)
    else:
        pickle_file = root / (_LEARN2LEARN_FILE.format(split=split) if fmt == "learn2learn" else _RFS_FILES[split])
        if not pickle_file.is_file():
            raise FileNotFoundError(f"{pickle_file} not found; check root and fmt={fmt!r}")
        sources = [pickle_file]
        builder = _build_learn2learn if fmt == "learn2learn" else _build_rfs
        build = functools.partial(builder, pickle_file, image_size)
    return load_cached_dataset(
        key={"loader": "mini-imagenet", "version": _LOADER_VERSION, "format": fmt, "split": split, "size": image_size},
        sources=sources, root=root, cache_dir=cache_dir, cache_name=f"mini-imagenet-{fmt}-{split}-{image_size}",
        build=build, name=f"mini-imagenet/{split}", mean=IMAGENET_MEAN, std=IMAGENET_STD)
