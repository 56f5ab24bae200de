"""CropDiseases (Mohanty et al. 2016, "Using Deep Learning for Image-Based Plant Disease Detection"), a BSCD-FSL
target (Guo et al. 2020; see :mod:`episodes.datasets.bscd_fsl`): photographs of healthy and diseased leaves of 38
plant-disease classes (PlantVillage).

Layout: the Kaggle "plant-disease" copy the benchmark names, extracted, i.e. ``root/dataset/train/<class>/*.jpg`` (or
``root`` being that ``train/`` folder itself). The benchmark reads ``dataset/train/`` with torchvision's
``ImageFolder`` and 38 labels: every class folder, in sorted order, images sorted by file name within a class. The
benchmark fixes the number of classes, not their folder names, so only their number (38) is checked; ``dataset/test/``
is not used.
"""

from __future__ import annotations

from pathlib import Path

from episodes.dataset import FewShotDataset
from episodes.datasets.bscd_fsl import check_options, load_target, target_classes
from episodes.datasets.folder import list_classes

__all__ = ["FOLDER", "load_crop_diseases"]

FOLDER = Path("dataset", "train")


def load_crop_diseases(root: Path | str, *, split: str, image_size: int = 84, cache_dir: Path | None = None,
                       ) -> FewShotDataset:
    """Load CropDiseases as a BSCD-FSL test target, decoding it into the cache on first use.

    Args:
        root: the folder holding ``dataset/train/`` (or that ``train/`` folder itself).
        split: ``"test"``, the only class split: every class is novel.
        image_size: side of the square images.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        the 38 classes, named by their folders, as a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8
        images with ImageNet mean and std.
    """
    root = check_options("crop_diseases", root, split, image_size)
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    found = list_classes(base)
    count, _ = target_classes("crop_diseases")
    if len(found) != count:
        raise ValueError(f"{base} holds {len(found)} class folders, but CropDiseases has {count} (the dataset/train/ "
                         "folder of the Kaggle plant-disease copy); extract the complete copy and pass the folder "
                         "holding dataset/train/")
    classes = list(found)
    files = [path for name in classes for path in found[name]]
    labels = [i for i, name in enumerate(classes) for _ in found[name]]
    return load_target("crop_diseases", root=root, files=files, labels=labels, class_names=classes, extra_sources=[],
                       image_size=image_size, cache_dir=cache_dir)
