"""ChestX (ChestX-ray8: Wang et al. 2017, "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases"), a BSCD-FSL target (Guo et al. 2020;
see :mod:`episodes.datasets.bscd_fsl`): frontal chest X-rays (1024x1024 greyscale PNG) of 7 findings.

Layout: the NIH release in ``root``: ``Data_Entry_2017.csv`` (columns ``Image Index``, ``Finding Labels``, ...;
findings joined by ``|``) and the images in ``images/`` (or spread over Kaggle's ``images_001/images/`` ...
``images_012/images/``, also read).

The benchmark's rule (the authors' ``datasets/Chest_few_shot.py``): keep a row only if its ``Finding Labels`` is a
single finding among Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule and Pneumothorax; rows with
several findings, ``No Finding``, Pneumonia (which the authors drop explicitly) and the other findings are dropped.
The 7 classes keep that order (``_data/bscd-fsl-classes.json``), images the CSV's order within a class. Only the
kept rows' images must be present.
"""

from __future__ import annotations

from pathlib import Path

from episodes.dataset import FewShotDataset
from episodes.datasets.bscd_fsl import check_options, load_target, read_csv, target_classes

__all__ = ["ENTRIES", "chestx_labels", "load_chestx"]

ENTRIES = "Data_Entry_2017.csv"
_HINT = f"root must hold the ChestX-ray8 release: {ENTRIES} and images/"


def chestx_labels(path: Path) -> list[tuple[str, int]]:
    """The (image file name, class index) of the rows of ``Data_Entry_2017.csv`` the benchmark keeps, in file
    order."""
    _, classes = target_classes("chestx")
    index = {name: i for i, name in enumerate(classes)}
    kept, seen = [], set()
    for number, row in read_csv(path, first=["Image Index", "Finding Labels"], hint=_HINT):
        if len(row) < 2 or not row[0]:
            raise ValueError(f"{path} line {number}: expected an image name and its findings, got {row}")
        if row[0] in seen:
            raise ValueError(f"{path} line {number}: image {row[0]} is listed twice")
        seen.add(row[0])
        findings = row[1].split("|")
        if len(findings) == 1 and findings[0] in index:
            kept.append((row[0], index[findings[0]]))
    return kept


def _image_folders(root: Path) -> list[Path]:
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p for p in root.glob("images_*/images") if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"no images/ folder in {root} (nor Kaggle's images_001/images/ ...); {_HINT}")
    return folders


def load_chestx(root: Path | str, *, split: str, image_size: int = 84, cache_dir: Path | None = None,
                ) -> FewShotDataset:
    """Load ChestX as a BSCD-FSL test target, decoding it into the cache on first use.

    Args:
        root: the folder holding ``Data_Entry_2017.csv`` and ``images/`` (or ``images_001/images/`` ...).
        split: ``"test"``, the only class split: every class is novel.
        image_size: side of the square images.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        the 7 classes as a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8 images (three equal
        channels) with ImageNet mean and std.
    """
    root = check_options("chestx", root, split, image_size)
    _, classes = target_classes("chestx")
    entries = root / ENTRIES
    kept = sorted(chestx_labels(entries), key=lambda item: item[1])  # stable: the CSV's order within a class
    where: dict[str, Path] = {}
    for folder in _image_folders(root):
        for path in folder.iterdir():
            where.setdefault(path.name, path)
    missing = [image for image, _ in kept if image not in where]
    if missing:
        raise FileNotFoundError(f"{entries} names {len(missing)} image(s) of the 7 classes absent from the image "
                                f"folders of {root} (e.g. {missing[:3]}); extract the complete release")
    return load_target("chestx", root=root, files=[where[image] for image, _ in kept],
                       labels=[label for _, label in kept], class_names=classes, extra_sources=[entries],
                       image_size=image_size, cache_dir=cache_dir)
