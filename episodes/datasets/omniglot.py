"""Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015; MIT licence, github.com/brendenlake/omniglot).

1623 handwritten characters from 50 alphabets, 20 drawings each (32,460 binary 105x105 PNGs), in two
sets: ``images_background`` (30 alphabets) and ``images_evaluation`` (20 alphabets). Each set is
decoded once per image size into a memory-mapped cache (:mod:`episodes.datasets.cache`) as
(N, 1, S, S) uint8 with ink = 255 and background = 0, so ``FewShotDataset.to_float`` gives ink = 1.0.

Resizing uses Pillow LANCZOS (:data:`episodes.datasets.images.RESAMPLE`) on the 105x105 ink image.
Rotated classes (``rotDDD``) are built with ``torch.rot90(x, DDD // 90, dims=(-2, -1))`` on the
decoded uint8 tensor: DDD degrees counter-clockwise as displayed, the direction of Pillow's
``Image.rotate(DDD)`` that the Prototypical Networks code used for the Vinyals split. (That code
also transposed every image; a transpose changes no class, and it is not reproduced here.)
"""

from __future__ import annotations

import argparse
import logging
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets import omniglot_embedded as embedded
from episodes.datasets.cache import cache_dir_for, cached_arrays, source_fingerprint
from episodes.datasets.download import download_file
from episodes.datasets.images import decode_image, resize_array

__all__ = ["OMNIGLOT_BASE_URL", "OMNIGLOT_MD5", "PROTOCOLS", "SETS", "download_omniglot", "load_omniglot",
           "pack_omniglot"]

logger = logging.getLogger(__name__)

SETS = ("images_background", "images_evaluation")
#: Valid ``split`` values of each ``protocol`` ("alphabet" takes ``alphabets=`` instead of a split).
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "test", "trainval"),
    "lake": ("background", "evaluation"),
    "alphabet": (),
}
OMNIGLOT_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
#: MD5 of the official zips, as listed by torchvision's ``Omniglot`` dataset (not re-verified here:
#: these machines cannot reach the official site).
OMNIGLOT_MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
NATIVE_SIZE = 105
_LOADER_VERSION = 1
_EXPECTED_LAYOUT = ("images_background.zip and images_evaluation.zip (the official zips), or the unzipped folders "
                    "images_background/<Alphabet>/characterNN/*.png (also accepted under omniglot-py/, "
                    "torchvision's layout)")


def _find_source(root: Path, set_name: str) -> Path | None:
    """The zip or folder holding ``set_name`` under ``root``, or None."""
    for base in (root, root / "omniglot-py"):
        if (base / f"{set_name}.zip").is_file():
            return base / f"{set_name}.zip"
        if (base / set_name).is_dir():
            return base / set_name
    return None


def _read_source(source: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``("Alphabet/characterNN/XXXX_YY", png bytes)`` of every image, sorted by name."""
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as archive:
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


def _source_files(source: Path) -> list[Path]:
    return [source] if source.suffix == ".zip" else sorted(source.glob("*/*/*.png"))


def decode_ink(data: bytes, *, name: str) -> np.ndarray:
    """(105, 105) uint8 ink image of one Omniglot PNG: ink = 255, background = 0."""
    pixels = decode_image(data, mode="L", size=None, name=name)
    if pixels.shape != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"Omniglot image {name} is {pixels.shape}, expected {NATIVE_SIZE}x{NATIVE_SIZE}; "
                         "replace it with the original file")
    return 255 - pixels


def _encode_records(records: Sequence[str]) -> torch.Tensor:
    """Names as one uint8 tensor of newline-joined UTF-8 (the cache holds tensors only)."""
    return torch.frombuffer(bytearray("\n".join(records).encode()), dtype=torch.uint8)


def _decode_source(source: Path, size: int) -> dict[str, torch.Tensor]:
    records, images = [], []
    for record, data in _read_source(source):
        ink = decode_ink(data, name=f"{source}:{record}.png")
        images.append(resize_array(ink, (size, size)))
        records.append(record)
    if not records:
        raise FileNotFoundError(f"{source} holds no Omniglot PNGs; expected {_EXPECTED_LAYOUT}")
    logger.info("decoded %d Omniglot images from %s at %dx%d", len(records), source, size, size)
    return {"images": torch.from_numpy(np.stack(images))[:, None], "records": _encode_records(records)}


def _load_set(root: Path | None, set_name: str, size: int, cache_dir: Path | None) -> tuple[torch.Tensor, list[str]]:
    """(N, 1, size, size) uint8 images of one set, and their "Alphabet/characterNN/drawing" names."""
    if root is None:
        key = {"loader": "omniglot-embedded", "version": _LOADER_VERSION, "set": set_name, "size": size,
               "source": embedded.embedded_sha256()}  # content, not path or mtime: one cache for every install
        path = cache_dir_for(None, cache_dir) / f"omniglot-embedded-{set_name}-{size}.pt"
        arrays = cached_arrays(path, key=key, build=lambda: embedded.decode_embedded(set_name, size))
    else:
        source = _find_source(root, set_name)
        if source is None:
            raise FileNotFoundError(f"{root} has no {set_name}: expected {_EXPECTED_LAYOUT}; "
                                    "pass download=True to fetch the official zips into it")
        key = {"loader": "omniglot", "version": _LOADER_VERSION, "set": set_name, "size": size,
               "source": source_fingerprint(_source_files(source))}
        path = cache_dir_for(root, cache_dir) / f"omniglot-{set_name}-{size}.pt"
        arrays = cached_arrays(path, key=key, build=lambda: _decode_source(source, size))
    return arrays["images"], bytes(arrays["records"].numpy()).decode().split("\n")


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
        if _find_source(Path(root), set_name) is None:
            fetched.append(download_file(f"{base_url}/{set_name}.zip", Path(root) / f"{set_name}.zip",
                                         md5=md5[set_name], timeout=timeout))
    return fetched


def _parse_class(line: str) -> tuple[str, int]:
    """``"Alphabet/characterNN/rotDDD"`` -> (``"Alphabet/characterNN"``, quarter turns)."""
    parts = line.split("/")
    if len(parts) != 3 or parts[2] not in ("rot000", "rot090", "rot180", "rot270"):
        raise ValueError(f"bad Omniglot class {line!r}: expected 'Alphabet/characterNN/rotDDD' with DDD in "
                         "000, 090, 180, 270")
    return f"{parts[0]}/{parts[1]}", int(parts[2][3:]) // 90


def _check_arguments(protocol: str, split: str, rotations: Sequence[int] | None, alphabets: Sequence[str] | None,
                     split_file: Path | None) -> tuple[int, ...]:
    """Validate the protocol's arguments; return the rotations in degrees (lake and alphabet)."""
    valid = PROTOCOLS.get(protocol)
    if valid is None:
        raise ValueError(f"unknown Omniglot protocol {protocol!r}; valid protocols: {sorted(PROTOCOLS)}")
    if protocol != "alphabet" and alphabets is not None:
        raise ValueError("alphabets= is only used with protocol='alphabet'")
    if protocol == "alphabet" and not alphabets:
        raise ValueError("protocol='alphabet' needs alphabets=[...], e.g. ['Greek', 'Latin']")
    if protocol != "vinyals" and split_file is not None:
        raise ValueError("split_file= is only used with protocol='vinyals'")
    if protocol == "vinyals" and rotations is not None:
        raise ValueError("protocol='vinyals' takes its rotations from the split; do not pass rotations=")
    if valid and split not in valid and not (protocol == "vinyals" and split_file is not None):
        raise ValueError(f"unknown split {split!r} for protocol {protocol!r}; valid splits: {list(valid)}")
    degrees = tuple(sorted(set(rotations or (0,))))
    if any(r not in (0, 90, 180, 270) for r in degrees):
        raise ValueError(f"rotations must be a non-empty subset of (0, 90, 180, 270), got {rotations}")
    return degrees


def load_omniglot(*, split: str = "test", protocol: str = "vinyals", root: Path | None = None, image_size: int = 28,
                  cache_dir: Path | None = None, download: bool = False, rotations: Sequence[int] | None = None,
                  alphabets: Sequence[str] | None = None, split_file: Path | None = None) -> FewShotDataset:
    """Load Omniglot classes as a :class:`FewShotDataset` of (N, 1, S, S) uint8 images, ink = 255.

    Args:
        split: for ``protocol="vinyals"``: train, val, test or trainval (1028/172/423/1200
            characters, each of the 4 rotations its own class); for ``"lake"``: background or
            evaluation (the official alphabet split). Ignored with ``protocol="alphabet"``.
        protocol: "vinyals", "lake" or "alphabet" (every character of ``alphabets``).
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip`` (read in place)
            or the unzipped folders (also under ``omniglot-py/``); None loads the embedded copy.
        image_size: S; 105 keeps the original resolution, smaller sizes are LANCZOS-resized.
        cache_dir: where to cache decoded arrays; default ``<root>/.fewshot_cache`` when writable,
            else ``$FEWSHOT_CACHE`` or ``~/.cache/fewshot``.
        download: fetch the official zips into ``root`` when they are missing (MD5-checked).
        rotations: degrees (subset of 0, 90, 180, 270) for "lake"/"alphabet"; default (0,).
        alphabets: alphabet folder names for ``protocol="alphabet"``, in the order wanted.
        split_file: with "vinyals", a text file of ``Alphabet/characterNN/rotDDD`` lines used
            instead of the embedded split files.

    Returns:
        Classes named ``"Alphabet/characterNN/rotDDD"`` in split-file order (vinyals) or by
        alphabet, character and rotation; named ``"omniglot/<protocol>/<split>"``; mean 0, std 1.
    """
    degrees = _check_arguments(protocol, split, rotations, alphabets, split_file)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if root is not None:
        root = Path(root).expanduser()
        if download:
            download_omniglot(root)
        elif not root.is_dir():
            raise FileNotFoundError(f"Omniglot root {root} does not exist; pass the folder holding {_EXPECTED_LAYOUT}, "
                                    "root=None for the embedded copy, or download=True to fetch the official zips")
        if not any(_find_source(root, s) for s in SETS):
            raise FileNotFoundError(f"{root} holds no Omniglot data: expected {_EXPECTED_LAYOUT}; "
                                    "pass download=True to fetch the official zips into it")
    elif download:
        raise ValueError("download=True needs root= (the folder to download into)")
    if protocol == "vinyals":
        lines = Path(split_file).read_text().split() if split_file is not None else embedded.vinyals_split(split)
        needed = set(SETS)
        if split_file is not None:
            split = Path(split_file).stem
    else:
        where_alphabet = embedded.alphabet_sets()
        chosen = list(alphabets) if protocol == "alphabet" else sorted(
            a for a, s in where_alphabet.items() if s == f"images_{split}")
        unknown = [a for a in chosen if a not in where_alphabet]
        if unknown:
            raise ValueError(f"unknown Omniglot alphabets {unknown}; valid: {sorted(where_alphabet)}")
        needed = {where_alphabet[a] for a in chosen}
        split = split if protocol == "lake" else "+".join(chosen)
    sets = [(s, *_load_set(root, s, image_size, cache_dir)) for s in SETS if s in needed]
    where = _index_characters(sets)
    if protocol != "vinyals":
        lines = [f"{c}/rot{r:03d}" for a in chosen for c in where if c.split("/")[0] == a for r in degrees]
    return _assemble(lines, sets, where, image_size, f"omniglot/{protocol}/{split}")


def _index_characters(sets: list[tuple[str, torch.Tensor, list[str]]]) -> dict[str, tuple[int, int, int]]:
    """Character -> (index into ``sets``, first row, end row); rows of a character are contiguous."""
    where: dict[str, tuple[int, int, int]] = {}
    for index, (_, _, records) in enumerate(sets):
        for row, record in enumerate(records):
            character = record.rsplit("/", 1)[0]
            first = where.get(character, (index, row, row))[1]
            where[character] = (index, first, row + 1)
    return where


def _assemble(classes: list[str], sets: list[tuple[str, torch.Tensor, list[str]]],
              where: dict[str, tuple[int, int, int]], size: int, name: str) -> FewShotDataset:
    """Gather, rotate and group the images of ``classes`` from the decoded sets."""
    if not classes:
        raise ValueError(f"{name}: no classes selected")
    spans, quarters = [], []
    for line in classes:
        character, quarter = _parse_class(line)
        if character not in where:
            raise ValueError(f"{name}: class {line} names character {character}, which is not in the data "
                             f"({', '.join(s for s, _, _ in sets)}); check the split file or the data folder")
        spans.append(where[character])
        quarters.append(quarter)
    set_index, first, end = (np.array(column, dtype=np.int64) for column in zip(*spans, strict=True))
    sizes = end - first
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    # Row r of the result is image first[c] + (r - offsets[c]) of class c's set, turned quarters[c] times.
    source_row = np.repeat(first - offsets[:-1], sizes) + np.arange(offsets[-1])
    group = set_index * 4 + np.array(quarters)
    images = torch.empty((int(offsets[-1]), 1, size, size), dtype=torch.uint8)
    for key in np.unique(group).tolist():
        target = torch.from_numpy(np.flatnonzero(np.repeat(group == key, sizes)))
        block = sets[key // 4][1].index_select(0, torch.from_numpy(source_row[target.numpy()]))
        images.index_copy_(0, target, torch.rot90(block, key % 4, dims=(-2, -1)).contiguous() if key % 4 else block)
    offsets = torch.from_numpy(offsets)
    return FewShotDataset(images, offsets, tuple(classes), name, (0.0,), (1.0,))


def pack_omniglot(src_root: Path, out: Path) -> int:
    """Read every image of both sets under ``src_root`` at 105x105 and write the embedded-copy file.

    Returns:
        The number of images packed (32,460 for the full dataset).
    """
    names: dict[str, list[str]] = {"sets": [], "alphabets": [], "characters": [], "drawings": []}
    inks = []
    for set_name in SETS:
        source = _find_source(Path(src_root), set_name)
        if source is None:
            raise FileNotFoundError(f"{src_root} has no {set_name}: expected {_EXPECTED_LAYOUT}")
        for record, data in _read_source(source):
            ink = decode_ink(data, name=f"{source}:{record}.png")
            if not np.isin(ink, (0, 255)).all():
                raise ValueError(f"{source}:{record}.png is not a 1-bit image; the packer stores ink as one bit")
            inks.append(ink == 255)
            for key, value in zip(("alphabets", "characters", "drawings"), record.split("/"), strict=True):
                names[key].append(value)
            names["sets"].append(set_name)
    embedded.write_packed(Path(out), np.stack(inks), names)
    return len(inks)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m episodes.datasets.omniglot pack SRC OUT`` or ``... splits SPLIT_DIR OUT``."""
    parser = argparse.ArgumentParser(prog="python -m episodes.datasets.omniglot", description=main.__doc__)
    parser.add_argument("command", choices=("pack", "splits"))
    parser.add_argument("source", type=Path, help="Omniglot root (pack) or folder of vinyals *.txt (splits)")
    parser.add_argument("out", type=Path, help="the .npz to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "pack":
        logger.info("packed %d images into %s", pack_omniglot(args.source, args.out), args.out)
    else:
        embedded.write_splits(args.source, args.out)
        logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
