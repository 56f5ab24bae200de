"""What the four BSCD-FSL targets share (Guo et al. 2020, "A Broader Study of Cross-Domain Few-Shot Learning", ECCV):
CropDiseases, EuroSAT, ISIC 2018 and ChestX, the test domains of a model trained on Mini-ImageNet.

Every class of a target is novel, so each has one class split, ``test``, holding all its images; the benchmark scores
600 seeded 5-way episodes of 5, 20 and 50 shots with 15 queries (``fewshot/configs/evaluation/bscd_fsl.yaml``). The
class lists the benchmark fixes (its label order, from the authors' ``IBM/cdfsl-benchmark``
``datasets/*_few_shot.py``) are in ``_data/bscd-fsl-classes.json``. Images are decoded to RGB (ChestX's greyscale
X-rays as three equal channels, as the benchmark feeds them) and resized to ``image_size`` squares (Lanczos), with
ImageNet's mean and std, as a Mini-ImageNet model expects.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from episodes.dataset import FewShotDataset
from episodes.datasets.folder import decode_files
from episodes.datasets.loading import load_cached_dataset
from episodes.datasets.miniimagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["SPLIT", "TARGETS", "check_options", "load_target", "read_csv", "target_classes"]

SPLIT = "test"
CLASSES_FILE = Path(__file__).parent / "_data" / "bscd-fsl-classes.json"
#: config option (test_dataset=<name>) -> the dataset's name in messages
TARGETS = {"crop_diseases": "CropDiseases", "eurosat": "EuroSAT", "isic": "ISIC 2018", "chestx": "ChestX"}
_LOADER_VERSION = 1


@functools.cache
def _table() -> dict[str, dict]:
    return json.loads(CLASSES_FILE.read_text(encoding="utf-8"))


def target_classes(target: str) -> tuple[int, tuple[str, ...] | None]:
    """The number of classes of ``target`` (a key of :data:`TARGETS`) and their names in the benchmark's label
    order, or None where the benchmark fixes only their number (CropDiseases)."""
    entry = _table()[target]
    return entry["num_classes"], None if entry["classes"] is None else tuple(entry["classes"])


def check_options(target: str, root: Path | str, split: str, image_size: int) -> Path:
    """Refuse a split other than ``test`` (a target has no training classes), a bad ``image_size`` or a ``root``
    that is not a folder; return ``root`` as a Path."""
    name = TARGETS[target]
    if split != SPLIT:
        raise ValueError(f"{name} is a BSCD-FSL test target: all its classes are novel, so its only class split is "
                         f"'test', not {split!r}; use it for testing (test_dataset={target}), not as a training "
                         "dataset")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name} root {root} is not a folder; pass the folder the dataset was extracted to")
    return root


def read_csv(path: Path, *, first: Sequence[str], hint: str) -> list[tuple[int, list[str]]]:
    """The rows of a CSV file after its header, with their line numbers, blank lines skipped.

    Args:
        path: the file.
        first: what the header's first columns must be.
        hint: what the file should be, for the error messages.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {hint}")
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not data
        rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if row]
    if not rows or rows[0][1][:len(first)] != list(first):
        got = rows[0][1][:len(first)] if rows else "an empty file"
        raise ValueError(f"{path}: expected a header starting with {list(first)}, got {got}; {hint}")
    return rows[1:]


def load_target(target: str, *, root: Path, files: Sequence[Path], labels: Sequence[int], class_names: Sequence[str],
                extra_sources: Sequence[Path], image_size: int, cache_dir: Path | None) -> FewShotDataset:
    """Decode ``files`` (class ``labels[i]`` of ``class_names`` each) into the cache once, and build the test split.

    Args:
        target: a key of :data:`TARGETS`.
        root: the folder the user named (the cache goes beside it unless ``cache_dir`` is given).
        files: the image files, grouped class by class.
        labels: (N,) the class index of each file.
        class_names: the names of the classes, in label order; each must have an image.
        extra_sources: other files the labels were read from (a CSV), part of the cache's fingerprint.
        image_size: side of the square images.
        cache_dir: where to write the decoded cache, or None.

    Returns:
        the ``test`` split: (N, 3, image_size, image_size) uint8 images with ImageNet mean and std.
    """
    counts = [0] * len(class_names)
    for label in labels:
        counts[label] += 1
    empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if empty:
        raise ValueError(f"{TARGETS[target]} in {root} has no image of {len(empty)} class(es) ({empty[:5]}); "
                         "copy the complete dataset")
    label_tensor = torch.tensor(list(labels), dtype=torch.int64)
    names = list(class_names)
    return load_cached_dataset(
        key={"loader": f"bscd-fsl-{target}", "version": _LOADER_VERSION, "split": SPLIT, "size": image_size,
             "classes": names},
        sources=[*files, *extra_sources], root=root, cache_dir=cache_dir, cache_name=f"{target}-{SPLIT}-{image_size}",
        build=functools.partial(decode_files, list(files), "RGB", image_size), classes=lambda _: (label_tensor, names),
        name=f"{target}/{SPLIT}", mean=IMAGENET_MEAN, std=IMAGENET_STD)
