"""The official Omniglot files (github.com/brendenlake/omniglot): find, read, decode, download and pack them.

Each of the two sets, ``images_background`` and ``images_evaluation``, is read from its official zip
or its unzipped folder ``<set>/<Alphabet>/characterNN/*.png`` (also under ``omniglot-py/``,
torchvision's layout). :mod:`episodes.datasets.omniglot` turns the decoded sets into datasets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from episodes.datasets import omniglot_embedded as embedded
from episodes.datasets.cache import encode_names
from episodes.datasets.download import download_file, open_zip
from episodes.datasets.images import decode_image, resize_array

__all__ = ["EXPECTED_LAYOUT", "NATIVE_SIZE", "OMNIGLOT_BASE_URL", "OMNIGLOT_MD5", "SETS", "decode_ink",
           "decode_source", "download_omniglot", "find_source", "pack_omniglot", "read_source", "source_files"]

logger = logging.getLogger(__name__)

SETS = ("images_background", "images_evaluation")
OMNIGLOT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
#: MD5 of the official zips, as listed by torchvision's ``Omniglot`` dataset (not re-verified here:
#: these machines cannot reach the official site).
OMNIGLOT_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
NATIVE_SIZE = 105
EXPECTED_LAYOUT = ("images_background.zip and images_evaluation.zip (the official zips), or the unzipped folders "
                   "images_background/<Alphabet>/characterNN/*.png (also accepted under omniglot-py/, "
                   "torchvision's layout)")


def find_source(root: Path, set_name: str) -> Path | None:
    """The zip or folder holding ``set_name`` under ``root``, or None."""
    for base in (root, root / "omniglot-py"):
        if (base / f"{set_name}.zip").is_file():
            return base / f"{set_name}.zip"
        if (base / set_name).is_dir():
            return base / set_name
    return None


def read_source(source: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``("Alphabet/characterNN/XXXX_YY", png bytes)`` of every image of a set's zip or folder, sorted
    by name."""
    if source.suffix == ".zip":
        with open_zip(source) as archive:
            names = {}
            for name in archive.namelist():
                parts = PurePosixPath(name).parts
                if name.endswith(".png") and len(parts) >= 3 and "__MACOSX" not in parts:
                    names["/".join(parts[-3:])[: -len(".png")]] = name
            for record in sorted(names):
                yield record, archive.read(names[record])
    else:
        files = {"/".join(p.relative_to(source).parts)[: -len(".png")]: p for p in source.glob("*/*/*.png")}
        for record in sorted(files):
            yield record, files[record].read_bytes()


def source_files(source: Path) -> list[Path]:
    """The files a set's zip or folder consists of (for its cache fingerprint)."""
    return [source] if source.suffix == ".zip" else sorted(source.glob("*/*/*.png"))


def decode_ink(data: bytes, *, name: str) -> np.ndarray:
    """(105, 105) uint8 ink image of one Omniglot PNG: ink = 255, background = 0."""
    pixels = decode_image(data, mode="L", size=None, name=name)
    if pixels.shape != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"Omniglot image {name} is {pixels.shape}, expected {NATIVE_SIZE}x{NATIVE_SIZE}; "
                         "replace it with the original file")
    return 255 - pixels


def decode_source(source: Path, size: int) -> dict[str, torch.Tensor]:
    """Every image of a set's zip or folder, as the loader caches it.

    Returns:
        ``images``: (N, 1, size, size) uint8, ink = 255, sorted by name; ``records``: the
        ``Alphabet/characterNN/drawing`` names, as :func:`episodes.datasets.cache.encode_names` stores them.
    """
    records, images = [], []
    for record, data in read_source(source):
        ink = decode_ink(data, name=f"{source}:{record}.png")
        images.append(resize_array(ink, (size, size)))
        records.append(record)
    if not records:
        raise FileNotFoundError(f"{source} holds no Omniglot PNGs; expected {EXPECTED_LAYOUT}")
    logger.info("decoded %d Omniglot images from %s at %dx%d", len(records), source, size, size)
    return {"images": torch.from_numpy(np.stack(images))[:, None], "records": encode_names(records)}


def download_omniglot(root: Path, *, sets: Sequence[str] = SETS, base_url: str | None = None,
                      md5: dict[str, str] | None = None, timeout: float = 60.0) -> list[Path]:
    """Fetch the zips of ``sets`` that ``root`` lacks (as zip or folder), verifying each MD5.

    Args:
        root: folder to download into (created if needed).
        base_url: folder URL holding ``<set>.zip``; default :data:`OMNIGLOT_BASE_URL`.
        md5: expected MD5 per set name; default :data:`OMNIGLOT_MD5`.

    Returns:
        The zips downloaded (sets already present are skipped).
    """
    base_url = (base_url or OMNIGLOT_BASE_URL).rstrip("/")
    md5 = OMNIGLOT_MD5 if md5 is None else md5
    fetched = []
    for set_name in sets:
        if set_name not in SETS:
            raise ValueError(f"unknown Omniglot set {set_name!r}; valid: {SETS}")
        if find_source(Path(root), set_name) is None:
            fetched.append(download_file(f"{base_url}/{set_name}.zip", Path(root) / f"{set_name}.zip",
                                         md5=md5[set_name], timeout=timeout))
    return fetched


def pack_omniglot(src_root: Path, out: Path) -> int:
    """Read every image of both sets under ``src_root`` at 105x105 and write the embedded-copy file.

    Returns:
        The number of images packed (32,460 for the full dataset).
    """
    names: dict[str, list[str]] = {"sets": [], "alphabets": [], "characters": [], "drawings": []}
    inks = []
    for set_name in SETS:
        source = find_source(Path(src_root), set_name)
        if source is None:
            raise FileNotFoundError(f"{src_root} has no {set_name}: expected {EXPECTED_LAYOUT}")
        for record, data in read_source(source):
            ink = decode_ink(data, name=f"{source}:{record}.png")
            if not np.isin(ink, (0, 255)).all():
                raise ValueError(f"{source}:{record}.png is not a 1-bit image; the packer stores ink as one bit")
            inks.append(ink == 255)
            for key, value in zip(("alphabets", "characters", "drawings"), record.split("/"), strict=True):
                names[key].append(value)
            names["sets"].append(set_name)
    embedded.write_packed(Path(out), np.stack(inks), names)
    return len(inks)
