"""ISIC 2018 task 3 (Codella et al. 2019; Tschandl et al. 2018, HAM10000), a BSCD-FSL target (Guo et al. 2020; see
:mod:`episodes.datasets.bscd_fsl`): 10,015 dermoscopic images of 7 kinds of skin lesion.

Layout: the challenge's training input and ground truth extracted side by side in ``root``:
``ISIC2018_Task3_Training_Input/<image>.jpg`` and
``ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``, whose header is
``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC`` and whose rows give each image one-hot (``1.0`` in its class's column,
``0.0`` elsewhere). The benchmark numbers the classes by column, so the classes keep the columns' order and names
(checked against ``_data/bscd-fsl-classes.json``); images keep the CSV's order within a class. A row that is not
one-hot, or names an image twice, is refused: the file is then not the challenge's.
"""

from __future__ import annotations

from pathlib import Path

from episodes.dataset import FewShotDataset
from episodes.datasets.bscd_fsl import check_options, load_target, read_csv, target_classes

__all__ = ["GROUND_TRUTH", "INPUT", "isic_labels", "load_isic"]

INPUT = "ISIC2018_Task3_Training_Input"
GROUND_TRUTH = Path("ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_GroundTruth.csv")
_HINT = (f"root must hold the extracted ISIC 2018 task 3 training data: {INPUT}/ and "
         f"{GROUND_TRUTH.as_posix()}")


def isic_labels(path: Path) -> list[tuple[str, int]]:
    """The (image id, class index) of every row of the ground-truth CSV ``path``, in file order."""
    _, classes = target_classes("isic")
    labelled, seen = [], set()
    for number, row in read_csv(path, first=["image", *classes], hint=_HINT):
        if len(row) != 1 + len(classes):
            raise ValueError(f"{path} line {number}: expected {1 + len(classes)} fields (image and 7 labels), got "
                             f"{len(row)}")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError as err:
            raise ValueError(f"{path} line {number}: a label is not a number ({err})") from err
        hot = [i for i, v in enumerate(values) if v != 0]
        if len(hot) != 1 or values[hot[0]] != 1:
            raise ValueError(f"{path} line {number}: image {row[0]} is not labelled one-hot (one 1.0 among 0.0s): "
                             f"{row[1:]}; the ground truth file was edited or is not the challenge's")
        if row[0] in seen:
            raise ValueError(f"{path} line {number}: image {row[0]} is listed twice")
        seen.add(row[0])
        labelled.append((row[0], hot[0]))
    return labelled


def load_isic(root: Path | str, *, split: str, image_size: int = 84, cache_dir: Path | None = None,
              ) -> FewShotDataset:
    """Load ISIC 2018 task 3 (training data) as a BSCD-FSL test target, decoding it into the cache on first use.

    Args:
        root: the folder holding ``ISIC2018_Task3_Training_Input/`` and ``ISIC2018_Task3_Training_GroundTruth/``.
        split: ``"test"``, the only class split: every class is novel.
        image_size: side of the square images.
        cache_dir: where to write the decoded cache (default: beside the data, else ~/.cache/fewshot).

    Returns:
        the 7 classes (MEL, NV, BCC, AKIEC, BKL, DF, VASC) as a :class:`FewShotDataset` of
        (N, 3, image_size, image_size) uint8 images with ImageNet mean and std.
    """
    root = check_options("isic", root, split, image_size)
    _, classes = target_classes("isic")
    truth = root / GROUND_TRUTH
    labelled = sorted(isic_labels(truth), key=lambda item: item[1])  # stable: the CSV's order within a class
    files = [root / INPUT / f"{image}.jpg" for image, _ in labelled]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{truth} names {len(missing)} image(s) absent from {root / INPUT} (e.g. "
                                f"{missing[:3]}); extract the complete training input")
    return load_target("isic", root=root, files=files, labels=[label for _, label in labelled], class_names=classes,
                       extra_sources=[truth], image_size=image_size, cache_dir=cache_dir)
