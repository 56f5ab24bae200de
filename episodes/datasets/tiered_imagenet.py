"""tieredImageNet (Ren et al. 2018, "Meta-Learning for Semi-Supervised Few-Shot Classification"): 608 ILSVRC-2012
classes grouped by 34 WordNet super-classes and split by super-class, 351 train classes (20 super-classes), 97 val
(6) and 160 test (8); 779,165 images (448,695 / 124,261 / 206,209), 84x84 RGB.

No pixels ship with this package (they come from ImageNet). Three layouts are read, from ``root`` or from
``root/tiered-imagenet`` (where learn2learn's download puts the release):

- ``original``: the authors' release (few-shot-ssl-public; what learn2learn, torchmeta and mmfewshot download):
  ``{split}_images_png.pkl``, a pickled list of PNG files (1-D uint8 arrays as ``cv2.imencode`` returns them, or
  bytes), and ``{split}_labels.pkl``, a dict with ``label_specific`` (class index of each image), ``label_general``
  (super-class index), ``label_specific_str`` (ILSVRC class names, e.g. ``"Yorkshire terrier"``) and
  ``label_general_str`` (WordNet super-class names, sometimes cut short, e.g. ``"protective covering, protective
  cover, protect"``).
- ``rfs``: ``{split}_images.npz`` (``images``: (N, 84, 84, 3) uint8 in OpenCV's BGR order, as the authors'
  ``decompress`` step writes it; flipped to RGB here, so both formats give the same pixels) with ``{split}_labels.pkl``:
  the copy MetaOptNet, RFS and Meta-Baseline distribute holds only ``labels`` (N ints, no names), the authors' own
  decompressed cache the original keys.
- ``images``: ``root/{split}/<wnid>/*.png|jpg|jpeg``.

Classes are named ``<super-class wnid>/<class wnid>`` (e.g. ``n02092468/n02094433``, a terrier), so sorting groups
them by super-class; :func:`read_tiered_split` gives the names behind the ids. Files are checked against the split
embedded from the authors' split files (``_data/tiered-imagenet-ren-splits.tsv``): the original labels and the
folders must name exactly the published classes of the split, with the published super-classes. The RFS copy names
no class: its classes are ``class<label:04d>`` with no super-class, and only their number is checked.

Pickles are read with :mod:`episodes.datasets.safe_pickle` (no code runs), ``.npz`` files without pickle; PNGs are
decoded by pillow. The decoded images are cached (:func:`episodes.datasets.loading.load_cached_dataset`).
"""

from __future__ import annotations

import functools
import logging
import pickle
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.cache import encode_names
from episodes.datasets.folder import IMAGE_SUFFIXES
from episodes.datasets.images import decode_image, resize_array
from episodes.datasets.loading import load_cached_dataset
from episodes.datasets.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from episodes.datasets.npz import read_npz_array
from episodes.datasets.safe_pickle import load_pickle

__all__ = ["FORMATS", "SPLITS", "TieredClass", "detect_format", "load_tiered_imagenet", "read_tiered_split"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "original", "rfs", "images")
SPLIT_FILE = Path(__file__).parent / "_data" / "tiered-imagenet-ren-splits.tsv"
SUBFOLDER = "tiered-imagenet"
ORIGINAL_KEYS = ("label_specific", "label_general", "label_specific_str", "label_general_str")
_LOADER_VERSION = 1
_CHUNK = 256


class TieredClass(NamedTuple):
    """One class of the published split: ImageNet wnid and name, and its super-class's wnid and WordNet name."""

    wnid: str
    super_wnid: str
    name: str
    super_name: str

    @property
    def class_name(self) -> str:
        """The name the loader gives the class: ``<super_wnid>/<wnid>``."""
        return f"{self.super_wnid}/{self.wnid}"


@functools.cache
def _published() -> dict[str, tuple[TieredClass, ...]]:
    rows: dict[str, list[TieredClass]] = {split: [] for split in SPLITS}
    for line in SPLIT_FILE.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if fields[0] in rows:
            rows[fields[0]].append(TieredClass(*fields[1:]))
    return {split: tuple(classes) for split, classes in rows.items()}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown tieredImageNet split {split!r}; use one of {SPLITS}")


def read_tiered_split(split: str) -> tuple[TieredClass, ...]:
    """The classes of ``split`` (351 train, 97 val, 160 test) in the order of the authors' split files."""
    _check_split(split)
    return _published()[split]


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _read_pickle(path: Path) -> object:
    """:func:`load_pickle`, with the file named in every error (a refused global stays an UnpicklingError)."""
    try:
        return load_pickle(path)
    except pickle.UnpicklingError as err:  # a refused global (with its advice), or a damaged stream
        advice = "" if str(err).startswith("refusing") else " (the file is truncated or damaged: copy it again)"
        raise pickle.UnpicklingError(f"{path}: {err}{advice}") from err
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError, struct.error) as err:
        raise ValueError(f"{path} is truncated or not a pickle ({type(err).__name__}: {err}); copy the file "
                         "again") from err


def _labels_dict(path: Path) -> dict[str, object]:
    data = _read_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of labels, found {type(data).__name__}; is this a labels file?")
    return {_text(key): value for key, value in data.items()}


def _int_labels(value: object, path: Path, key: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{path}: {key!r} must be a list of integer labels, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def _names(value: object, path: Path, key: str) -> list[str]:
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{path}: {key!r} must be a list of names, got {type(value).__name__}")
    return [_text(name) for name in value]


def _original_classes(labels: dict[str, object], path: Path, split: str) -> tuple[np.ndarray, list[str]]:
    """From the release's label keys: each image's class index and each class's name, checked against the split."""
    missing = [key for key in ORIGINAL_KEYS if key not in labels]
    if missing:
        raise ValueError(f"{path}: expected the keys {list(ORIGINAL_KEYS)}, missing {missing} (found {sorted(labels)})")
    specific = _int_labels(labels["label_specific"], path, "label_specific")
    general = _int_labels(labels["label_general"], path, "label_general")
    specific_str, general_str = (_names(labels[key], path, key) for key in ORIGINAL_KEYS[2:])
    if len(general) != len(specific):
        raise ValueError(f"{path}: {len(specific)} label_specific but {len(general)} label_general entries")
    for key, values, names in (("label_specific", specific, specific_str), ("label_general", general, general_str)):
        if len(values) and (values.min() < 0 or values.max() >= len(names)):
            raise ValueError(f"{path}: {key} holds values outside [0, {len(names)}), the entries of {key}_str")
    if len(set(specific_str)) != len(specific_str):
        raise ValueError(f"{path}: label_specific_str names a class twice")
    published = read_tiered_split(split)
    by_name = {c.name: c for c in published}
    unknown = [name for name in specific_str if name not in by_name]
    if unknown:
        raise ValueError(f"{path} names {len(unknown)} classes that are not in the published tieredImageNet {split} "
                         f"split (e.g. {unknown[:3]}); is this the {split} file of the original release?")
    classes = [by_name[name] for name in specific_str]
    present = {classes[k].wnid for k in np.unique(specific)}
    absent = [c.wnid for c in published if c.wnid not in present]
    if absent:
        raise ValueError(f"{path}: the published {split} split has {len(published)} classes, {len(absent)} of them "
                         f"without images here (e.g. {absent[:3]}); copy the complete {split} files")
    for k, g in np.unique(np.stack([specific, general], axis=1), axis=0):
        c, found = classes[k], general_str[g]
        if not found or not c.super_name.startswith(found):
            raise ValueError(f"{path}: images of {c.name!r} ({c.wnid}) have super-class {found!r}, but the published "
                             f"split puts the class under {c.super_name!r} ({c.super_wnid})")
    return specific, [c.class_name for c in classes]


def _rfs_classes(labels: dict[str, object], path: Path, split: str) -> tuple[np.ndarray, list[str]]:
    if "label_specific" in labels:
        return _original_classes(labels, path, split)
    if "labels" not in labels:
        raise ValueError(f"{path}: expected 'labels' (MetaOptNet/RFS copy) or the original keys {list(ORIGINAL_KEYS)}; "
                         f"found {sorted(labels)}")
    values = _int_labels(labels["labels"], path, "labels")
    distinct = np.unique(values)
    expected = len(read_tiered_split(split))
    if len(distinct) != expected:
        raise ValueError(f"{path}: {len(distinct)} classes, but the published tieredImageNet {split} split has "
                         f"{expected}; is this the {split} file?")
    return np.searchsorted(distinct, values), [f"class{int(v):04d}" for v in distinct]


def _grouped(labels: np.ndarray, names: Sequence[str], size: int,
             fetch: Callable[[int], np.ndarray]) -> dict[str, torch.Tensor]:
    """The cache layout of :func:`~episodes.datasets.loading.group_by_class` (classes sorted by name), each image
    ``fetch(i) -> (size, size, 3) uint8`` written straight into its slot, in parallel threads, without copies."""
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names))
    sorted_labels = rank[labels]
    order = np.argsort(sorted_labels, kind="stable")
    images = torch.empty((len(order), 3, size, size), dtype=torch.uint8)
    out = images.numpy()

    def fill(start: int) -> None:
        for slot in range(start, min(start + _CHUNK, len(order))):
            out[slot] = fetch(int(order[slot])).transpose(2, 0, 1)

    with ThreadPoolExecutor() as pool:
        list(pool.map(fill, range(0, len(order), _CHUNK)))
    logger.info("decoded %d tieredImageNet images at %dx%d", len(order), size, size)
    return {"images": images, "labels": torch.from_numpy(sorted_labels[order]),
            "class_names": encode_names([names[i] for i in by_name])}


def _png_bytes(item: object, path: Path, i: int) -> bytes:
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    raise ValueError(f"{path}: image {i} is a {type(item).__name__}, not the bytes of a PNG file")


def _build_original(images_file: Path, labels_file: Path, split: str, size: int) -> dict[str, torch.Tensor]:
    labels, names = _original_classes(_labels_dict(labels_file), labels_file, split)
    items = _read_pickle(images_file)
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{images_file}: expected a list of PNG images, found {type(items).__name__}")
    if len(items) != len(labels):
        raise ValueError(f"{images_file}: {len(items)} images but {labels_file.name} labels {len(labels)}")

    def fetch(i: int) -> np.ndarray:
        return decode_image(_png_bytes(items[i], images_file, i), mode="RGB", size=(size, size),
                            name=f"{images_file.name}[{i}]")

    return _grouped(labels, names, size, fetch)


def _build_rfs(images_file: Path, labels_file: Path, split: str, size: int) -> dict[str, torch.Tensor]:
    labels, names = _rfs_classes(_labels_dict(labels_file), labels_file, split)
    images = read_npz_array(images_file, "images")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_file}: 'images' must be (N, H, W, 3) uint8, got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{images_file}: {len(images)} images but {labels_file.name} labels {len(labels)}")

    def fetch(i: int) -> np.ndarray:
        rgb = images[i][:, :, ::-1]  # stored BGR
        return rgb if rgb.shape[:2] == (size, size) else resize_array(np.ascontiguousarray(rgb), (size, size))

    return _grouped(labels, names, size, fetch)


def _folder_files(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    folder, published = root / split, read_tiered_split(split)
    found = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = [c.wnid for c in published if c.wnid not in found]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {len(missing)} of the {len(published)} class folders of the published "
                                f"tieredImageNet {split} split (e.g. {missing[:3]}); copy the complete split")
    extra = sorted(set(found) - {c.wnid for c in published})
    if extra:
        raise ValueError(f"{folder} has class folders outside the published {split} split: {extra[:5]}; is this the "
                         f"{split} folder?")
    files: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(published):
        images = sorted(p for p in found[c.wnid].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"class folder {found[c.wnid]} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        files += images
        labels += [k] * len(images)
    return files, np.array(labels, dtype=np.int64), [c.class_name for c in published]


def _build_folder(files: list[Path], labels: np.ndarray, names: list[str], size: int) -> dict[str, torch.Tensor]:
    return _grouped(labels, names, size, lambda i: decode_image(files[i], mode="RGB", size=(size, size),
                                                                name=str(files[i])))


def _find(root: Path, name: str) -> Path | None:
    return next((folder / name for folder in (root, root / SUBFOLDER) if (folder / name).is_file()), None)


def detect_format(root: Path, split: str) -> str:
    """The layout of the tieredImageNet ``split`` (one of :data:`SPLITS`) in ``root`` or its ``tiered-imagenet``
    subfolder: ``"original"``, ``"rfs"`` or ``"images"``, the first found in this order (the ``fmt="auto"`` of
    :func:`load_tiered_imagenet`); ``FileNotFoundError`` naming the files of every layout if none is there."""
    _check_split(split)
    if _find(root, f"{split}_images_png.pkl"):
        return "original"
    if _find(root, f"{split}_images.npz"):
        return "rfs"
    if (root / split).is_dir():
        return "images"
    raise FileNotFoundError(f"no tieredImageNet {split} data in {root} or {root / SUBFOLDER}: expected "
                            f"{split}_images_png.pkl + {split}_labels.pkl (the original release), {split}_images.npz + "
                            f"{split}_labels.pkl (MetaOptNet/RFS), or a folder {split}/<wnid>/ of images")


def load_tiered_imagenet(root: Path | str, *, split: str, fmt: str = "auto", image_size: int = 84,
                         cache_dir: Path | None = None) -> FewShotDataset:
    """Load one split of tieredImageNet, decoding it into the cache on first use.

    Args:
        root: folder holding the data in one of the layouts of this module (or its ``tiered-imagenet`` subfolder).
        split: ``"train"``, ``"val"`` or ``"test"`` (Ren et al.'s classes).
        fmt: ``"original"``, ``"rfs"``, ``"images"`` or ``"auto"`` (detected in this order).
        image_size: side of the square images (84 is the release's; others are resized with Lanczos).
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8 images with ImageNet mean and std, classes
        named ``<super wnid>/<wnid>`` and sorted (``class<label>`` for the RFS copy, which names none).
    """
    root = Path(root)
    _check_split(split)
    if fmt not in FORMATS:
        raise ValueError(f"unknown tieredImageNet format {fmt!r}; use one of {FORMATS}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"tieredImageNet root {root} is not a folder; pass the folder holding the release's "
                                "pickles, the RFS .npz files or the train/val/test image folders")
    fmt = detect_format(root, split) if fmt == "auto" else fmt
    build: Callable[[], dict[str, torch.Tensor]]
    if fmt == "images":
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root / split} is not a folder; expected {root / split}/<wnid>/*.jpg")
        files, labels, names = _folder_files(root, split)
        sources: list[Path] = files
        build = functools.partial(_build_folder, files, labels, names, image_size)
    else:
        image_name = f"{split}_images_png.pkl" if fmt == "original" else f"{split}_images.npz"
        images_file = _find(root, image_name)
        if images_file is None:
            raise FileNotFoundError(f"{image_name} not found in {root} or {root / SUBFOLDER}; check root and "
                                    f"fmt={fmt!r}")
        labels_file = images_file.parent / f"{split}_labels.pkl"
        if not labels_file.is_file():
            raise FileNotFoundError(f"{labels_file} not found: the labels of {images_file.name} come in that file of "
                                    "the same release; copy it beside the images")
        sources = [images_file, labels_file]
        builder = _build_original if fmt == "original" else _build_rfs
        build = functools.partial(builder, images_file, labels_file, split, image_size)
    return load_cached_dataset(
        key={"loader": "tiered-imagenet", "version": _LOADER_VERSION, "format": fmt, "split": split,
             "size": image_size},
        sources=sources, root=root, cache_dir=cache_dir, cache_name=f"tiered-imagenet-{fmt}-{split}-{image_size}",
        build=build, name=f"tiered-imagenet/{split}", mean=IMAGENET_MEAN, std=IMAGENET_STD)
