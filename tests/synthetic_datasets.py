"""Small synthetic copies of datasets in their real file layouts (tiny images, every published class), for the
loaders' tests and tests/test_configs.py (``SYNTHETIC_COPIES``: loader target -> writer of a root for its config)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from episodes.datasets.cub import _official_classes
from episodes.datasets.tiered_imagenet import SPLITS, read_tiered_split

#: how long the release's label_general_str names are at most (they were read with a fixed-width parser, which cut
#: "protective covering, protective cover, protection" to "protective covering, protective cover, protect")
SUPER_NAME_WIDTH = 46


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def tiered_labels(split: str, per_class: int, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """A ``{split}_labels.pkl`` dict as the release has it (classes in no particular order, images shuffled) and the
    loader's class name of each image."""
    published = read_tiered_split(split)
    classes = [published[k] for k in rng.permutation(len(published))]
    supers = list(dict.fromkeys(c.super_wnid for c in classes))
    super_name = {c.super_wnid: c.super_name[:SUPER_NAME_WIDTH] for c in classes}
    specific = rng.permutation(np.repeat(np.arange(len(classes)), per_class)).astype(np.int32)
    labels = {"label_specific": specific,
              "label_general": np.array([supers.index(classes[k].super_wnid) for k in specific], dtype=np.int32),
              "label_specific_str": [c.name for c in classes],
              "label_general_str": [super_name[s] for s in supers]}
    return labels, [classes[k].class_name for k in specific]


def write_tiered_original(root: Path, *, splits: tuple[str, ...] = SPLITS, per_class: int = 1, side: int = 12,
                          seed: int = 0) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{split}_images_png.pkl`` (a list of PNG files as 1-D uint8 arrays, as cv2.imencode gives them) and
    ``{split}_labels.pkl`` in ``root``; per split the (N, side, side, 3) RGB images in file order and their class
    names (``<super wnid>/<wnid>``)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for split in splits:
        labels, names = tiered_labels(split, per_class, rng)
        images = rng.integers(0, 256, (len(names), side, side, 3), dtype=np.uint8)
        pngs = [np.frombuffer(png_bytes(image), dtype=np.uint8).reshape(-1, 1) for image in images]
        (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
        written[split] = (images, names)
    return written


def write_cub(root: Path, *, per_class: int = 1, side: int = 12, seed: int = 0,
              make_image: Callable[[int, int], tuple[np.ndarray, tuple[float, ...]]] | None = None) -> list[Path]:
    """The extracted CUB_200_2011 archive under ``root``: all 200 classes, ``per_class`` JPEGs each (random pixels,
    or ``make_image(class_id, j) -> (image, box)``); the image files in images.txt order."""
    base = root / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    classes = _official_classes()
    lines: dict[str, list[str]] = {"classes": [], "images": [], "image_class_labels": [], "bounding_boxes": []}
    files = []
    image_id = 0
    for class_id, name in enumerate(classes, start=1):
        lines["classes"].append(f"{class_id} {name}")
        (base / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            image_id += 1
            if make_image is None:
                image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                x, y = rng.integers(0, side // 2, size=2)
                box: tuple[float, ...] = (float(x), float(y), float(side // 2), float(side // 2))
            else:
                image, box = make_image(class_id, j)
            relative = f"{name}/{name.split('.', 1)[1]}_{j + 1:04d}_{image_id}.jpg"
            Image.fromarray(image).save(base / "images" / relative, quality=95)
            files.append(base / "images" / relative)
            lines["images"].append(f"{image_id} {relative}")
            lines["image_class_labels"].append(f"{image_id} {class_id}")
            lines["bounding_boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
    for stem, rows in lines.items():
        (base / f"{stem}.txt").write_text("\n".join(rows) + "\n")
    return files


def _once(folder: str, write: Callable[[Path], object]) -> Callable[[Path], Path]:
    def root_in(base: Path) -> Path:
        root = base / folder
        if not (root / ".written").is_file():
            write(root)
            (root / ".written").touch()
        return root

    return root_in


#: loader ``_target_`` -> a function writing (once) a small copy under a folder and returning its root; the copies'
#: images are 12x12 (CIFAR's 32x32, resized), so configs using them set ``image_size=12``.
def write_cifar100(root: Path) -> None:
    """CIFAR-100's python archive (tests/test_cifar.py writes it: every class, 3 images each, 32x32)."""
    from test_cifar import write_cifar100_archive

    root.mkdir(parents=True, exist_ok=True)
    write_cifar100_archive(root)


SYNTHETIC_COPIES: dict[str, Callable[[Path], Path]] = {
    "episodes.datasets.load_tiered_imagenet": _once("tiered-imagenet-original", write_tiered_original),
    "episodes.datasets.load_cub": _once("cub-200-2011", write_cub),
    "episodes.datasets.load_cifar_fs": _once("cifar-100", write_cifar100),
    "episodes.datasets.load_fc100": _once("cifar-100", write_cifar100),
}


# BSCD-FSL targets (episodes/datasets/{crop_diseases,eurosat,isic,chestx}.py): flat-coloured 12x12 images whose colour
# says what they are, so a test can check each loaded image's class and place from its pixels alone.
def bscd_colour(class_index: int, j: int) -> tuple[int, int, int]:
    """The RGB colour of image ``j`` of class ``class_index`` (in the benchmark's label order) in the BSCD-FSL copies:
    red = 10 + 6 * class, green = 20 + 40 * j, blue 128 (ChestX's greyscale images: 10 + 30 * class + 3 * j)."""
    return 10 + 6 * class_index, 20 + 40 * j, 128


def _flat_jpeg(path: Path, colour: tuple[int, int, int], side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), colour, dtype=np.uint8)).save(path, quality=95)


def write_crop_diseases(root: Path, *, per_class: int = 2, side: int = 12) -> dict[str, list[Path]]:
    """The Kaggle plant-disease copy: ``dataset/train/<class>/*.jpg`` (38 classes; one file name ends in .JPG, as
    PlantVillage's do) and a ``dataset/test/`` the benchmark does not read; per class in sorted order, its files."""
    classes = sorted(f"Plant{c:02d}___{'healthy' if c % 3 == 0 else f'disease_{c}'}" for c in range(38))
    written = {}
    for c, name in enumerate(classes):
        files = [root / "dataset" / "train" / name / f"{j:04d}{'.JPG' if (c, j) == (1, 0) else '.jpg'}"
                 for j in range(per_class)]
        for j, path in enumerate(files):
            _flat_jpeg(path, bscd_colour(c, j), side)
        written[name] = files
    _flat_jpeg(root / "dataset" / "test" / classes[0] / "unused.jpg", (255, 255, 255), side)
    return written


def write_eurosat(root: Path, *, per_class: int = 3, side: int = 12) -> dict[str, list[Path]]:
    """EuroSAT.zip (RGB) extracted: ``2750/<class>/<class>_<n>.jpg``, the 10 classes; per class, its files in
    file-name order (``_1``, ``_10``, ``_2``, ... once there are 10)."""
    from episodes.datasets.bscd_fsl import target_classes

    written = {}
    for c, name in enumerate(target_classes("eurosat")[1]):
        files = sorted(root / "2750" / name / f"{name}_{n + 1}.jpg" for n in range(per_class))
        for j, path in enumerate(files):
            _flat_jpeg(path, bscd_colour(c, j), side)
        written[name] = files
    return written


def write_isic(root: Path, *, per_class: int = 3, side: int = 12) -> dict[str, list[Path]]:
    """The ISIC 2018 task 3 training data: ``ISIC2018_Task3_Training_Input/ISIC_<id>.jpg`` (with the archive's
    LICENSE.txt) and the ground-truth CSV (one-hot rows, classes interleaved); per class, its files in CSV order."""
    from episodes.datasets.bscd_fsl import target_classes
    from episodes.datasets.isic import GROUND_TRUTH, INPUT

    classes = target_classes("isic")[1]
    written: dict[str, list[Path]] = {name: [] for name in classes}
    rows = ["image," + ",".join(classes)]
    for k in range(per_class * len(classes)):
        c, j = (3 * k + 1) % len(classes), k // len(classes)  # a class order unlike the columns'
        image = f"ISIC_{24306 + k:07d}"
        _flat_jpeg(root / INPUT / f"{image}.jpg", bscd_colour(c, j), side)
        written[classes[c]].append(root / INPUT / f"{image}.jpg")
        rows.append(image + "," + ",".join("1.0" if i == c else "0.0" for i in range(len(classes))))
    (root / INPUT / "LICENSE.txt").write_text("licence\n")
    (root / GROUND_TRUTH).parent.mkdir(parents=True, exist_ok=True)
    (root / GROUND_TRUTH).write_text("\n".join(rows) + "\n")
    return written


#: rows of the ChestX copy the benchmark drops, with their findings
CHESTX_DROPPED = ("No Finding", "Cardiomegaly|Emphysema", "Pneumonia", "Hernia", "Effusion|Infiltration|Mass")


def write_chestx(root: Path, *, per_class: int = 3, side: int = 12, kaggle: bool = False) -> dict[str, list[Path]]:
    """The ChestX-ray8 release: ``Data_Entry_2017.csv`` (its real header; kept and :data:`CHESTX_DROPPED` rows
    interleaved) and greyscale PNGs in ``images/`` (with ``kaggle``, spread over ``images_001/images/`` and
    ``images_002/images/``); per kept class, its files in CSV order. Dropped rows' images are white."""
    from episodes.datasets.bscd_fsl import target_classes

    classes = target_classes("chestx")[1]
    written: dict[str, list[Path]] = {name: [] for name in classes}
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    items = [(classes[(k + 2) % len(classes)], k // len(classes)) for k in range(per_class * len(classes))]
    items[1:1] = [(finding, None) for finding in CHESTX_DROPPED]
    for k, (finding, j) in enumerate(items):
        name = f"{k + 1:08d}_000.png"
        folder = root / (f"images_{1 + k % 2:03d}/images" if kaggle else "images")
        folder.mkdir(parents=True, exist_ok=True)
        value = 255 if j is None else 10 + 30 * classes.index(finding) + 3 * j
        Image.fromarray(np.full((side, side), value, dtype=np.uint8), "L").save(folder / name)
        if j is not None:
            written[finding].append(folder / name)
        rows.append(f"{name},{finding},0,{k + 1},58,M,PA,2682,2749,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    return written


SYNTHETIC_COPIES.update({
    "episodes.datasets.load_crop_diseases": _once("crop-diseases", write_crop_diseases),
    "episodes.datasets.load_eurosat": _once("eurosat", write_eurosat),
    "episodes.datasets.load_isic": _once("isic-2018", write_isic),
    "episodes.datasets.load_chestx": _once("chestx", write_chestx),
})
