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
