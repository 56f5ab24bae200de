"""Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic
program induction", Science 2015; MIT licence, github.com/brendenlake/omniglot).

1623 handwritten characters from 50 alphabets, 20 drawings each (32,460 binary 105x105 PNGs), in two
sets: ``images_background`` (30 alphabets) and ``images_evaluation`` (20 alphabets), read from the
official files (:mod:`episodes.datasets.omniglot_source`) or the embedded copy. Each set is decoded once
per image size into a memory-mapped cache (:mod:`episodes.datasets.loading`) as (N, 1, S, S) uint8 with
ink = 255 and background = 0, so ``FewShotDataset.to_float`` gives ink = 1.0.

Resizing uses Pillow LANCZOS (:data:`episodes.datasets.images.RESAMPLE`) on the 105x105 ink image.
Rotated classes (``rotDDD``) are built with ``torch.rot90(x, DDD // 90, dims=(-2, -1))`` on the
decoded uint8 tensor: DDD degrees counter-clockwise as displayed, the direction of Pillow's
``Image.rotate(DDD)`` that the Prototypical Networks code used for the Vinyals split. (That code
also transposed every image; a transpose changes no class, and it is not reproduced here.)
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from episodes.dataset import FewShotDataset
from episodes.datasets import omniglot_embedded as embedded
from episodes.datasets.cache import decode_names
from episodes.datasets.loading import load_cached_dataset
from episodes.datasets.omniglot_source import (
    EXPECTED_LAYOUT,
    SETS,
    decode_source,
    download_omniglot,
    find_source,
    pack_omniglot,
    source_files,
)

__all__ = ["PROTOCOLS", "SETS", "load_omniglot"]

logger = logging.getLogger(__name__)

#: Valid ``split`` values of each ``protocol`` ("alphabet" takes ``alphabets=`` instead of a split).
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "test", "trainval"),
    "lake": ("background", "evaluation"),
    "alphabet": (),
}
_LOADER_VERSION = 1


def _characters(arrays: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """The (N,) character index of each cached image, and the characters (``Alphabet/characterNN``) in order."""
    characters = [record.rsplit("/", 1)[0] for record in decode_names(arrays["records"])]
    names = list(dict.fromkeys(characters))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[character] for character in characters]), names


def _load_set(root: Path | None, set_name: str, size: int, cache_dir: Path | None) -> FewShotDataset:
    """One set (from ``root``, or the embedded copy when None) as (N, 1, size, size) uint8 images whose
    classes are its characters, ``"Alphabet/characterNN"``, in name order."""
    if root is None:  # keyed by content, not path or mtime: one cache for every install
        loader, sources = "omniglot-embedded", embedded.embedded_sha256()
        build = functools.partial(embedded.decode_embedded, set_name, size)
    else:
        source = find_source(root, set_name)
        if source is None:
            raise FileNotFoundError(f"{root} has no {set_name}: expected {EXPECTED_LAYOUT}; "
                                    "pass download=True to fetch the official zips into it")
        loader, sources = "omniglot", source_files(source)
        build = functools.partial(decode_source, source, size)
    return load_cached_dataset(
        key={"loader": loader, "version": _LOADER_VERSION, "set": set_name, "size": size}, sources=sources,
        root=root, cache_dir=cache_dir, cache_name=f"{loader}-{set_name}-{size}", build=build, classes=_characters,
        name=f"omniglot/{set_name}", mean=(0.0,), std=(1.0,))


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
            raise FileNotFoundError(f"Omniglot root {root} does not exist; pass the folder holding {EXPECTED_LAYOUT}, "
                                    "root=None for the embedded copy, or download=True to fetch the official zips")
        if not any(find_source(root, s) for s in SETS):
            raise FileNotFoundError(f"{root} holds no Omniglot data: expected {EXPECTED_LAYOUT}; "
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
    sets = [(s, _load_set(root, s, image_size, cache_dir)) for s in SETS if s in needed]
    where = _index_characters(sets)
    if protocol != "vinyals":
        lines = [f"{c}/rot{r:03d}" for a in chosen for c in where if c.split("/")[0] == a for r in degrees]
    return _assemble(lines, sets, where, image_size, f"omniglot/{protocol}/{split}")


def _index_characters(sets: list[tuple[str, FewShotDataset]]) -> dict[str, tuple[int, int, int]]:
    """Character -> (index into ``sets``, first row, end row) of its images."""
    where: dict[str, tuple[int, int, int]] = {}
    for index, (_, characters) in enumerate(sets):
        bounds = characters.offsets.tolist()
        for c, character in enumerate(characters.class_names):
            where[character] = (index, bounds[c], bounds[c + 1])
    return where


def _assemble(classes: list[str], sets: list[tuple[str, FewShotDataset]],
              where: dict[str, tuple[int, int, int]], size: int, name: str) -> FewShotDataset:
    """Gather, rotate and group the images of ``classes`` from the decoded sets."""
    if not classes:
        raise ValueError(f"{name}: no classes selected")
    spans, quarters = [], []
    for line in classes:
        character, quarter = _parse_class(line)
        if character not in where:
            raise ValueError(f"{name}: class {line} names character {character}, which is not in the data "
                             f"({', '.join(s for s, _ in sets)}); check the split file or the data folder")
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
        block = sets[key // 4][1].images.index_select(0, torch.from_numpy(source_row[target.numpy()]))
        images.index_copy_(0, target, torch.rot90(block, key % 4, dims=(-2, -1)).contiguous() if key % 4 else block)
    offsets = torch.from_numpy(offsets)
    return FewShotDataset(images, offsets, tuple(classes), name, (0.0,), (1.0,))


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
