"""CIFAR-FS and FC100: two few-shot class splits of CIFAR-100 (Krizhevsky 2009), 32x32 RGB.

- CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form solvers",
  ICLR 2019): 64 train / 16 val / 20 test fine classes drawn at random, 600 images each.
- FC100 (Oreshkin, Rodriguez & Lacoste, "TADAM: Task dependent adaptive metric for improved few-shot
  learning", NeurIPS 2018): split by super-class, 12 / 4 / 4 super-classes (60 / 20 / 20 fine classes), so
  test classes share no super-class with training ones.

Both are built from CIFAR-100's official python archive, ``root/cifar-100-python.tar.gz``, or its extracted
folder ``root/cifar-100-python/{train,test,meta}`` (torchvision's layout). A split holds every image of its
classes, the 500 of CIFAR-100's ``train`` file then the 100 of its ``test`` file, class names are CIFAR-100's
fine label names (``apple`` ... ``worm``), classes sorted by name. The class lists are embedded in
``_data/`` (their sources are named in the files); ``trainval`` is train plus val.

The archive is downloaded only when asked (``download=True``), checked against its published MD5 before it
lands in ``root``. It is never extracted to disk: its three pickle members are read in memory and
unpickled by :mod:`episodes.datasets.safe_pickle` (no code in them runs). The decoded split is cached
(:func:`episodes.datasets.loading.load_cached_dataset`).

Normalisation: the per-channel pixel mean and standard deviation MetaOptNet (Lee et al. 2019) and RFS
(Tian et al. 2020) use for CIFAR-FS and FC100, ``(129.377, 124.106, 112.478) / 255`` and
``(68.209, 65.431, 70.459) / 255``.
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.download import download_file
from episodes.datasets.loading import group_by_class, load_cached_dataset
from episodes.datasets.safe_pickle import load_pickle

__all__ = ["ARCHIVE", "CIFAR100_MD5", "CIFAR100_URL", "CIFAR_FS_SPLITS", "CIFAR_MEAN", "CIFAR_STD", "FC100_SPLITS",
           "SPLITS", "find_cifar100", "load_cifar_fs", "load_fc100", "read_cifar100", "read_split_file"]

logger = logging.getLogger(__name__)

#: CIFAR-100's python archive and its MD5, as published on https://www.cs.toronto.edu/~kriz/cifar.html.
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
MEMBERS = ("train", "test", "meta")
CIFAR_MEAN = tuple(x / 255 for x in (129.37731888, 124.10583864, 112.47758569))
CIFAR_STD = tuple(x / 255 for x in (68.20947949, 65.43124043, 70.45866994))
SPLITS = ("train", "val", "test", "trainval")
_DATA = Path(__file__).parent / "_data"
CIFAR_FS_SPLITS = _DATA / "cifar-fs-bertinetto-splits.csv"
FC100_SPLITS = _DATA / "fc100-oreshkin-splits.csv"
_FINE, _COARSE = 100, 20
_LOADER_VERSION = 1
_EXPECTED = (f"{ARCHIVE} (CIFAR-100's python archive, {CIFAR100_URL}, MD5 {CIFAR100_MD5}) or its extracted "
             f"{FOLDER}/ folder (train, test, meta)")


def read_split_file(path: Path, column: str) -> dict[str, list[str]]:
    """The names each split lists in a split file: ``#`` comment lines, a header ``split,<column>``, then one
    ``<train|val|test>,<name>`` row per class (or super-class).

    Raises:
        ValueError: a missing header, a malformed row, an unknown split, or a name listed twice.
    """
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines or lines[0] != f"split,{column}":
        raise ValueError(f"{path}: expected a header line split,{column}")
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2 or fields[0] not in splits or not fields[1]:
            raise ValueError(f"{path}: row {number} {line!r} is not <train|val|test>,<{column}>")
        if fields[1] in seen:
            raise ValueError(f"{path}: {column} {fields[1]!r} is listed twice")
        seen.add(fields[1])
        splits[fields[0]].append(fields[1])
    return splits


def find_cifar100(root: Path) -> Path | None:
    """``root/cifar-100-python.tar.gz``, else the folder ``root/cifar-100-python`` holding train, test and meta,
    else None."""
    if (Path(root) / ARCHIVE).is_file():
        return Path(root) / ARCHIVE
    folder = Path(root) / FOLDER
    return folder if all((folder / member).is_file() for member in MEMBERS) else None


def _read_archive(path: Path) -> dict[str, bytes]:
    """The bytes of the train, test and meta members, read in one pass; nothing is written to disk."""
    wanted = {f"{FOLDER}/{member}": member for member in MEMBERS}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|gz") as archive:
            for info in archive:
                name = PurePosixPath(info.name)
                if name.is_absolute() or ".." in name.parts:
                    raise ValueError(f"unsafe archive {path}: member {info.name!r} points outside its folder; "
                                     f"this is not CIFAR-100's archive")
                member = wanted.get(name.as_posix())
                if member is None:
                    continue
                handle = archive.extractfile(info) if info.isfile() else None
                if handle is None:
                    raise ValueError(f"{path}: member {info.name!r} is not a regular file; this is not CIFAR-100's "
                                     "archive")
                found[member] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{path} is not a readable tar.gz archive ({type(err).__name__}: {err}): it is truncated or "
                         "damaged; delete it and download it again (download=True)") from err
    missing = [f"{FOLDER}/{member}" for member in MEMBERS if member not in found]
    if missing:
        raise ValueError(f"{path} has no {missing}: expected {_EXPECTED}")
    return found


def _unpickle(data: bytes, source: str, keys: Sequence[str]) -> dict:
    try:
        value = load_pickle(io.BytesIO(data))
    except pickle.UnpicklingError as err:
        if "refusing to load global" in str(err):  # the restricted unpickler's refusal: keep its type
            raise pickle.UnpicklingError(f"{source}: {err}") from err
        raise ValueError(f"{source} is not a readable pickle ({err}); expected {_EXPECTED}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:  # a damaged pickle stream
        raise ValueError(f"{source} is not a readable pickle ({type(err).__name__}: {err}); "
                         f"expected {_EXPECTED}") from err
    if isinstance(value, dict):  # a Python 3 re-dump of a file read with encoding="bytes" has bytes keys
        value = {key.decode("latin1") if isinstance(key, bytes) else key: item for key, item in value.items()}
    if not isinstance(value, dict) or any(key not in value for key in keys):
        found = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{source}: expected a dict with keys {list(keys)}, found {found}")
    return value


def read_cifar100(source: Path) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """The train and test pickles of CIFAR-100's archive or folder, and its label names.

    Returns:
        ``{"train": part, "test": part}``, each part with ``images`` (N, 32, 32, 3) uint8 in file order and
        ``fine`` / ``coarse`` (N,) int64 labels; and ``{"fine": 100 names, "coarse": 20 names}`` in label order.

    Raises:
        ValueError: the archive is damaged or not CIFAR-100's (keys, shapes, label counts or ranges).
        pickle.UnpicklingError: a pickle names a global other than numpy's array reconstruction.
    """
    source = Path(source)
    if source.is_dir():
        raw = {member: (source / member).read_bytes() for member in MEMBERS}
        where = {member: str(source / member) for member in MEMBERS}
    else:
        raw = _read_archive(source)
        where = {member: f"{source}:{FOLDER}/{member}" for member in MEMBERS}
    meta = _unpickle(raw.pop("meta"), where["meta"], ("fine_label_names", "coarse_label_names"))
    names = {}
    for kind, count in (("fine", _FINE), ("coarse", _COARSE)):
        listed = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[f"{kind}_label_names"]]
        if len(listed) != count or len(set(listed)) != count:
            raise ValueError(f"{where['meta']}: {len(listed)} {kind} label names ({len(set(listed))} distinct), "
                             f"CIFAR-100 has {count}; is this CIFAR-100's archive?")
        names[kind] = listed
    parts = {}
    for member in ("train", "test"):
        part = _unpickle(raw.pop(member), where[member], ("data", "fine_labels", "coarse_labels"))
        data = part["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{where[member]}: 'data' must be (N, 3072) uint8 rows, got {type(data).__name__} "
                             f"{getattr(data, 'shape', None)}; is this CIFAR-100's archive?")
        labels = {}
        for kind, count in (("fine", _FINE), ("coarse", _COARSE)):
            labels[kind] = np.asarray(part[f"{kind}_labels"], dtype=np.int64).reshape(-1)
            if len(labels[kind]) != len(data) or (len(data) and not 0 <= labels[kind].min() <= labels[kind].max()
                                                  < count):
                raise ValueError(f"{where[member]}: {kind}_labels must be {len(data)} labels in [0, {count})")
        # A row is 1024 red, 1024 green, 1024 blue bytes, each plane row-major.
        parts[member] = {"images": data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), **labels}
    return parts, names


def _build(source: Path, size: int, split_file: Path, column: str, wanted: list[str]) -> dict[str, torch.Tensor]:
    """Every image of the ``wanted`` fine classes (CIFAR-FS) or super-classes (FC100), grouped by class."""
    parts, names = read_cifar100(source)
    kind = "fine" if column == "class" else "coarse"
    missing = sorted(set(wanted) - set(names[kind]))
    if missing:
        raise ValueError(f"{split_file} names {column}es absent from {source}: {missing[:5]}; is this CIFAR-100's "
                         "archive?")
    index = np.array([names[kind].index(name) for name in wanted])
    keep = {member: np.isin(part[kind], index) for member, part in parts.items()}
    images = np.concatenate([part["images"][keep[member]] for member, part in parts.items()])
    fine = np.concatenate([part["fine"][keep[member]] for member, part in parts.items()])
    if kind == "fine":
        empty = sorted(set(wanted) - {names["fine"][i] for i in np.unique(fine)})
        if empty:
            raise ValueError(f"{source} holds no images of {split_file.name}'s classes {empty[:5]}; is the archive "
                             "complete?")
    logger.info("read %d CIFAR-100 images of %d classes from %s", len(images), len(np.unique(fine)), source)
    return group_by_class(images, [names["fine"][i] for i in fine], size=size)


def _load(dataset: str, split_file: Path, column: str, *, split: str, root: Path | str, image_size: int,
          download: bool, cache_dir: Path | None) -> FewShotDataset:
    if split not in SPLITS:
        raise ValueError(f"unknown {dataset} split {split!r}; use one of {SPLITS}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    splits = read_split_file(split_file, column)
    wanted = splits["train"] + splits["val"] if split == "trainval" else splits[split]
    root = Path(root).expanduser()
    source = find_cifar100(root)
    if source is None:
        if not download:
            raise FileNotFoundError(f"no CIFAR-100 in {root}: expected {_EXPECTED}. Put one there, or pass "
                                    "download=True (dataset.loader.download=true) to fetch and check the archive")
        source = download_file(CIFAR100_URL, root / ARCHIVE, md5=CIFAR100_MD5)
    sources = [source] if source.is_file() else [source / member for member in MEMBERS]
    return load_cached_dataset(
        key={"loader": dataset, "version": _LOADER_VERSION, "split": split, "size": image_size, column: wanted},
        sources=sources, root=root, cache_dir=cache_dir, cache_name=f"{dataset}-{split}-{image_size}",
        build=functools.partial(_build, source, image_size, split_file, column, wanted),
        name=f"{dataset}/{split}", mean=CIFAR_MEAN, std=CIFAR_STD)


def load_cifar_fs(*, split: str, root: Path | str, image_size: int = 32, download: bool = False,
                  cache_dir: Path | None = None) -> FewShotDataset:
    """One split of CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes of 600 images.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (the classes of Bertinetto et al.'s split files).
        root: the folder holding ``cifar-100-python.tar.gz`` or ``cifar-100-python/``.
        image_size: side of the square images (32 is CIFAR's; others are resized with Lanczos).
        download: fetch the archive into ``root`` (MD5-checked) if neither is there.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8 images, classes sorted by name,
        with :data:`CIFAR_MEAN` and :data:`CIFAR_STD`.
    """
    return _load("cifar-fs", CIFAR_FS_SPLITS, "class", split=split, root=root, image_size=image_size,
                 download=download, cache_dir=cache_dir)


def load_fc100(*, split: str, root: Path | str, image_size: int = 32, download: bool = False,
               cache_dir: Path | None = None) -> FewShotDataset:
    """One split of FC100 (Oreshkin et al. 2018): the fine classes of 12 / 4 / 4 CIFAR-100 super-classes
    (60 / 20 / 20 classes of 600 images). Arguments and result as in :func:`load_cifar_fs`; ``split`` names the
    super-classes of Oreshkin et al.'s split."""
    return _load("fc100", FC100_SPLITS, "superclass", split=split, root=root, image_size=image_size,
                 download=download, cache_dir=cache_dir)
