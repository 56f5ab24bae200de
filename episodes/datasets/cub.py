"""CUB-200-2011 (Wah et al. 2011, "The Caltech-UCSD Birds-200-2011 Dataset"): 11,788 photographs of 200 bird
species with a bounding box each, split for few-shot learning as in Chen et al. 2019 ("A Closer Look at Few-shot
Classification"): 100 train ("base"), 50 val and 50 test ("novel") classes.

The split rule, from their ``filelists/CUB/write_CUB_filelist.py`` (mmfewshot's ``CUBDataset`` applies the same): the
class folders of ``images/`` sorted by name (the order of ``classes.txt``, 001 to 200) are numbered ``i = 0..199``;
train takes ``i % 2 == 0``, val ``i % 4 == 1``, test ``i % 4 == 3``. In ``classes.txt``'s 1-based ids: train the odd
ids, val 2, 6, ..., 198, test 4, 8, ..., 200. The rule is positional, so ``classes.txt`` must be the official one; it
is checked against the copy in ``_data/cub-200-2011-classes.txt``.

Layout: the official archive ``CUB_200_2011.tgz`` extracted, i.e. ``root/CUB_200_2011/`` (or ``root`` itself) holding
``classes.txt`` (``<class id> <name>``), ``images.txt`` (``<image id> <class folder>/<file>.jpg``),
``image_class_labels.txt`` (``<image id> <class id>``), ``bounding_boxes.txt`` (``<image id> <x> <y> <width>
<height>``, pixels from the top-left corner) and ``images/<class folder>/<file>.jpg``.

With ``bbox_crop`` each image is cropped to its box, rounded outwards to whole pixels and clipped to the image, before
resizing. Images are resized to ``image_size`` squares (Lanczos) without keeping the aspect ratio, as every loader of
this package caches them; classes keep their ``classes.txt`` names (``001.Black_footed_Albatross``).
"""

from __future__ import annotations

import functools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.cache import encode_names
from episodes.datasets.images import decode_image, resize_array
from episodes.datasets.loading import load_cached_dataset
from episodes.datasets.miniimagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SPLITS", "chen_split", "crop_to_box", "load_cub", "split_of_class"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASSES_FILE = Path(__file__).parent / "_data" / "cub-200-2011-classes.txt"
FOLDER = "CUB_200_2011"
_LOADER_VERSION = 1

Box = tuple[float, float, float, float]


def split_of_class(class_id: int) -> str | None:
    """Chen et al.'s split of the class with 1-based ``classes.txt`` id ``class_id``: train, val, test or None."""
    i = class_id - 1
    return "train" if i % 2 == 0 else "val" if i % 4 == 1 else "test" if i % 4 == 3 else None


@functools.cache
def _official_classes() -> tuple[str, ...]:
    return tuple(line.split(" ", 1)[1] for line in CLASSES_FILE.read_text(encoding="utf-8").splitlines() if line)


def chen_split(split: str) -> list[str]:
    """The class names of ``split`` (100 train, 50 val, 50 test) in ``classes.txt`` order."""
    if split not in SPLITS:
        raise ValueError(f"unknown CUB split {split!r}; use one of {SPLITS}")
    return [name for i, name in enumerate(_official_classes()) if split_of_class(i + 1) == split]


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``<id> <field> ...`` lines of a CUB metadata file, by id."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; root must hold the extracted CUB_200_2011 archive (classes.txt, "
                                "images.txt, image_class_labels.txt, bounding_boxes.txt, images/)")
    rows: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(" ", columns - 1) if columns == 2 else line.split()
        if len(fields) != columns or not fields[0].isdigit() or int(fields[0]) in rows:
            raise ValueError(f"{path} line {number}: expected '<id> ' and {columns - 1} field(s), ids unique; got "
                             f"{line!r}")
        rows[int(fields[0])] = fields[1:]
    return rows


def crop_to_box(image: np.ndarray, box: Box, *, name: str = "image") -> np.ndarray:
    """The part of ``image`` (H, W, C) inside ``box`` = (x, y, width, height) in pixels, rounded outwards to whole
    pixels (floor of the top-left corner, ceiling of the bottom-right) and clipped to the image."""
    x, y, width, height = box
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(image.shape[1], math.ceil(x + width)), min(image.shape[0], math.ceil(y + height))
    if right <= left or bottom <= top:
        raise ValueError(f"bounding box {box} of {name} holds no pixel of its {image.shape[1]}x{image.shape[0]} image")
    return image[top:bottom, left:right]


def _decode(files: list[Path], boxes: list[Box] | None, labels: list[int], names: list[str],
            size: int) -> dict[str, torch.Tensor]:
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    out = images.numpy()

    def decode(i: int) -> None:
        if boxes is None:
            pixels = decode_image(files[i], mode="RGB", size=(size, size), name=str(files[i]))
        else:
            full = decode_image(files[i], mode="RGB", size=None, name=str(files[i]))
            pixels = resize_array(np.ascontiguousarray(crop_to_box(full, boxes[i], name=str(files[i]))), (size, size))
        out[i] = pixels.transpose(2, 0, 1)

    with ThreadPoolExecutor() as pool:
        list(pool.map(decode, range(len(files))))
    logger.info("decoded %d CUB images at %dx%d", len(files), size, size)
    return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "class_names": encode_names(names)}


def _base(root: Path) -> Path:
    if (root / FOLDER / "images.txt").is_file():
        return root / FOLDER
    if (root / "images.txt").is_file():
        return root
    raise FileNotFoundError(f"no CUB-200-2011 in {root}: expected {root / FOLDER}/images.txt (the official "
                            "CUB_200_2011.tgz extracted into root) or root/images.txt")


def load_cub(root: Path | str, *, split: str, image_size: int = 84, bbox_crop: bool = False,
             cache_dir: Path | None = None) -> FewShotDataset:
    """Load one split of CUB-200-2011 (Chen et al. 2019 classes), decoding it into the cache on first use.

    Args:
        root: the folder holding ``CUB_200_2011/`` (or that folder itself).
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side of the square images.
        bbox_crop: crop each image to its bounding box before resizing.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8 images with ImageNet mean and std, its
        classes named as in ``classes.txt`` and in that order.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown CUB split {split!r}; use one of {SPLITS}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not isinstance(bbox_crop, bool):
        raise ValueError(f"bbox_crop must be True or False, got {bbox_crop!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"CUB root {root} is not a folder; pass the folder holding CUB_200_2011/")
    base = _base(root)
    classes = _read_table(base / "classes.txt", 2)
    official = _official_classes()
    wrong = [i + 1 for i, name in enumerate(official) if classes.get(i + 1, [None])[0] != name]
    if wrong or len(classes) != len(official):
        raise ValueError(f"{base / 'classes.txt'} is not the official CUB-200-2011 class list ({len(classes)} "
                         f"classes; ids {wrong[:5]} differ); Chen et al.'s split is defined by position in that list")
    paths, class_of = _read_table(base / "images.txt", 2), _read_table(base / "image_class_labels.txt", 2)
    chosen: list[tuple[int, int]] = []  # (class id, image id), classes in order
    for image_id, (relative,) in paths.items():
        if image_id not in class_of:
            raise ValueError(f"{base / 'image_class_labels.txt'} gives no class to image {image_id} ({relative})")
        class_id = int(class_of[image_id][0])
        if class_id not in classes or relative.split("/")[0] != classes[class_id][0]:
            raise ValueError(f"image {image_id} ({relative}) has class {class_id} in image_class_labels.txt, whose "
                             f"folder is {classes.get(class_id, ['(none)'])[0]}")
        if split_of_class(class_id) == split:
            chosen.append((class_id, image_id))
    chosen.sort()
    wanted = [i + 1 for i in range(len(official)) if split_of_class(i + 1) == split]
    empty = sorted(set(wanted) - {class_id for class_id, _ in chosen})
    if empty:
        raise ValueError(f"{base / 'images.txt'} lists no image of {len(empty)} class(es) of the {split} split "
                         f"(e.g. {[classes[c][0] for c in empty[:3]]}); copy the complete archive")
    files = [base / "images" / paths[image_id][0] for _, image_id in chosen]
    missing = [str(f.relative_to(base)) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{base / 'images.txt'} names {len(missing)} images of the {split} split absent from "
                                f"{base / 'images'} (e.g. {missing[:3]}); extract the complete archive")
    sources = [*files, base / "classes.txt", base / "images.txt", base / "image_class_labels.txt"]
    boxes = None
    if bbox_crop:
        table = _read_table(base / "bounding_boxes.txt", 5)
        absent = [image_id for _, image_id in chosen if image_id not in table]
        if absent:
            raise ValueError(f"{base / 'bounding_boxes.txt'} has no box for {len(absent)} images (e.g. id {absent[0]})")
        try:
            boxes = [tuple(float(v) for v in table[image_id]) for _, image_id in chosen]
        except ValueError as err:
            raise ValueError(f"{base / 'bounding_boxes.txt'}: a box is not four numbers ({err})") from err
        sources.append(base / "bounding_boxes.txt")
    position = {class_id: k for k, class_id in enumerate(wanted)}
    labels = [position[class_id] for class_id, _ in chosen]
    names = [classes[c][0] for c in wanted]
    return load_cached_dataset(
        key={"loader": "cub", "version": _LOADER_VERSION, "split": split, "size": image_size, "bbox_crop": bbox_crop},
        sources=sources, root=root, cache_dir=cache_dir,
        cache_name=f"cub-{split}-{image_size}{'-bbox' if bbox_crop else ''}",
        build=functools.partial(_decode, files, boxes, labels, names, image_size),
        name=f"cub/{split}{'/bbox' if bbox_crop else ''}", mean=IMAGENET_MEAN, std=IMAGENET_STD)
