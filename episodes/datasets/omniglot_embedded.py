"""The Omniglot copy embedded in this package (``_data/omniglot-v1.npz``), and its packer's writer.

The file is an ``np.savez_compressed`` archive (no pickles: read with ``allow_pickle=False``):

- ``bits``: uint8 bytes, xz (lzma preset 9 | EXTREME) compression of ``np.packbits`` of the
  (N, 105, 105) bool ink images (ink = 1), N = 32,460, in the order of the name arrays;
- ``bits_sha256``: hex sha256 of the packed bits before compression, checked on every unpack;
- ``sets``, ``alphabets``, ``characters``, ``drawings``: unicode (N,) names of every image
  (e.g. ``images_background``, ``Greek``, ``character01``, ``0394_01``), sorted within each set.

``_data/omniglot-vinyals-splits.npz`` holds the Vinyals split (unicode arrays ``train``, ``val``,
``test``, ``trainval`` of ``Alphabet/characterNN/rotDDD`` lines) and ``_data/omniglot-LICENSE.txt``
the dataset's MIT licence notice.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
from pathlib import Path

import numpy as np
import torch

from episodes.datasets.cache import encode_names
from episodes.datasets.images import resize_array
from episodes.files import atomic_write

__all__ = ["EMBEDDED_FILE", "SPLITS_FILE", "alphabet_sets", "decode_embedded", "embedded_sha256", "vinyals_split",
           "write_packed", "write_splits"]

DATA_DIR = Path(__file__).resolve().parent / "_data"
EMBEDDED_FILE = DATA_DIR / "omniglot-v1.npz"
SPLITS_FILE = DATA_DIR / "omniglot-vinyals-splits.npz"
SPLIT_NAMES = ("train", "val", "test", "trainval")
_NAME_KEYS = ("sets", "alphabets", "characters", "drawings")
_SIZE = 105


def _open(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise FileNotFoundError(f"the embedded Omniglot file {path} is missing; reinstall the package, or pass "
                                "root= pointing at the official zips")
    return np.load(path, allow_pickle=False)


@functools.lru_cache(maxsize=1)
def alphabet_sets() -> dict[str, str]:
    """Alphabet name -> the official set holding it (``images_background`` or ``images_evaluation``)."""
    with _open(EMBEDDED_FILE) as archive:
        pairs = np.unique(np.stack([archive["alphabets"], archive["sets"]]), axis=1)
    return {str(alphabet): str(set_name) for alphabet, set_name in pairs.T}


@functools.lru_cache(maxsize=1)
def embedded_sha256() -> str:
    """The sha256 of the embedded pixels, as recorded in the file: the same for every install of the same
    data wherever it lies (decoding checks it against the pixels)."""
    with _open(EMBEDDED_FILE) as archive:
        return str(archive["bits_sha256"])


def vinyals_split(split: str) -> list[str]:
    """The class lines (``Alphabet/characterNN/rotDDD``) of one Vinyals split, in file order."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown Vinyals split {split!r}; valid splits: {list(SPLIT_NAMES)}")
    with _open(SPLITS_FILE) as archive:
        return [str(line) for line in archive[split]]


def _unpack_ink() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N, 105, 105) uint8 ink images (ink = 255) and the name arrays, checksum-verified."""
    with _open(EMBEDDED_FILE) as archive:
        names = {key: archive[key] for key in _NAME_KEYS}
        compressed, expected = archive["bits"].tobytes(), str(archive["bits_sha256"])
    try:
        packed = lzma.decompress(compressed)
    except lzma.LZMAError as err:
        raise ValueError(f"{EMBEDDED_FILE} is corrupt ({err}); reinstall the package") from err
    if hashlib.sha256(packed).hexdigest() != expected:
        raise ValueError(f"{EMBEDDED_FILE} is corrupt (sha256 of its pixels does not match); reinstall the package")
    count = len(names["sets"]) * _SIZE * _SIZE
    ink = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=count).reshape(-1, _SIZE, _SIZE)
    ink *= np.uint8(255)
    return ink, names


def decode_embedded(set_name: str, size: int) -> dict[str, torch.Tensor]:
    """One set of the embedded copy, as the loader caches it.

    Returns:
        ``images``: (N, 1, size, size) uint8, ink = 255; ``records``: the ``Alphabet/characterNN/drawing``
        names, as :func:`episodes.datasets.cache.encode_names` stores them.
    """
    ink, names = _unpack_ink()
    chosen = np.flatnonzero(names["sets"] == set_name)
    if not len(chosen):
        raise ValueError(f"the embedded Omniglot copy has no set {set_name!r}")
    images = np.stack([resize_array(ink[i], (size, size)) for i in chosen])
    records = [f"{names['alphabets'][i]}/{names['characters'][i]}/{names['drawings'][i]}" for i in chosen]
    return {"images": torch.from_numpy(images)[:, None], "records": encode_names(records)}


def _savez_atomic(out: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` of ``arrays`` into ``out``, through :func:`episodes.files.atomic_write`."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a handle: given a path, numpy would append ".npz" to the name
            np.savez_compressed(handle, **arrays)

    atomic_write(out, write)


def write_packed(out: Path, ink: np.ndarray, names: dict[str, list[str]]) -> None:
    """Write the embedded-copy file.

    Args:
        out: the ``.npz`` to write (atomically).
        ink: (N, 105, 105) bool, True where there is ink.
        names: ``sets``, ``alphabets``, ``characters``, ``drawings``: N names each.
    """
    if ink.dtype != np.bool_ or ink.shape[1:] != (_SIZE, _SIZE):
        raise ValueError(f"ink must be (N, {_SIZE}, {_SIZE}) bool, got {ink.dtype} {ink.shape}")
    if sorted(names) != sorted(_NAME_KEYS) or any(len(v) != len(ink) for v in names.values()):
        raise ValueError(f"names must hold {_NAME_KEYS}, {len(ink)} entries each")
    packed = np.packbits(ink.reshape(-1)).tobytes()
    bits = lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)
    _savez_atomic(out, {"bits": np.frombuffer(bits, dtype=np.uint8),
                        "bits_sha256": np.array(hashlib.sha256(packed).hexdigest()),
                        **{key: np.array(value, dtype=str) for key, value in names.items()}})


def write_splits(split_dir: Path, out: Path) -> None:
    """Pack ``split_dir/{train,val,test,trainval}.txt`` (one class per line) into ``out`` (.npz)."""
    arrays = {}
    for split in SPLIT_NAMES:
        path = Path(split_dir) / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"missing split file {path}; expected {', '.join(SPLIT_NAMES)} .txt files")
        arrays[split] = np.array(path.read_text().split(), dtype=str)
    _savez_atomic(out, arrays)
