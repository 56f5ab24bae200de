"""EuroSAT (Helber et al. 2019, "EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and Land Cover
Classification"), a BSCD-FSL target (Guo et al. 2020; see :mod:`episodes.datasets.bscd_fsl`): 27,000 Sentinel-2
satellite images, 64x64, of 10 land-use classes.

Layout: the RGB release ``EuroSAT.zip`` extracted, i.e. ``root/2750/<class>/<class>_<n>.jpg`` (or ``root`` being
``2750/`` itself), which the benchmark reads with torchvision's ``ImageFolder``: the 10 classes in sorted order, their
names checked against ``_data/bscd-fsl-classes.json``; images sorted by file name within a class.
"""

from __future__ import annotations

from pathlib import Path

from episodes.dataset import FewShotDataset
from episodes.datasets.bscd_fsl import check_options, load_target, target_classes
from episodes.datasets.folder import list_classes

__all__ = ["FOLDER", "load_eurosat"]

FOLDER = "2750"


def load_eurosat(root: Path | str, *, split: str, image_size: int = 84, cache_dir: Path | None = None,
                 ) -> FewShotDataset:
    """Load EuroSAT (RGB) as a BSCD-FSL test target, decoding it into the cache on first use.

    Args:
        root: the folder holding ``2750/`` (or that folder itself).
        split: ``"test"``, the only class split: every class is novel.
        image_size: side of the square images.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        the 10 classes as a :class:`FewShotDataset` of (N, 3, image_size, image_size) uint8 images with ImageNet
        mean and std.
    """
    root = check_options("eurosat", root, split, image_size)
    base = root / FOLDER if (root / FOLDER).is_dir() else root
    found = list_classes(base)
    _, classes = target_classes("eurosat")
    missing, extra = [c for c in classes if c not in found], sorted(set(found) - set(classes))
    if missing or extra:
        raise ValueError(f"{base} is not EuroSAT's 2750/ folder of 10 class folders: missing {missing}, not EuroSAT's "
                         f"{extra[:5]}; extract the complete RGB release (EuroSAT.zip) and pass the folder holding "
                         "2750/")
    files = [path for name in classes for path in found[name]]
    labels = [i for i, name in enumerate(classes) for _ in found[name]]
    return load_target("eurosat", root=root, files=files, labels=labels, class_names=classes, extra_sources=[],
                       image_size=image_size, cache_dir=cache_dir)
