"""Read one array of an ``.npz`` file without pickle, memory-mapped when the file stores it uncompressed.

``np.savez`` writes each array as an uncompressed (stored) zip member holding a ``.npy`` file; such a member is
mapped straight from the file (a 10 GB image array costs no memory until its rows are read). Compressed members
(``np.savez_compressed``) are read whole with ``np.load``. Object arrays, which only pickle can restore, are refused.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["read_npz_array"]

_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def _stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(_LOCAL_HEADER)
        if len(local) < _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad zip header of member {info.filename}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + _LOCAL_HEADER + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        offset = handle.tell()
    if dtype.hasobject:
        raise ValueError("an object array (restoring it would need pickle)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def read_npz_array(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of the ``.npz`` file ``path``: a read-only memmap if stored uncompressed, else in memory.

    Raises:
        ValueError: the file has no array ``key``, is truncated or not an .npz, or holds an object array; the
            message names the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            info = archive.getinfo(f"{key}.npy") if f"{key}.npy" in names else None
        if info is not None and info.compress_type == zipfile.ZIP_STORED:
            return _stored_member(path, info)
        if info is not None:
            with np.load(path, allow_pickle=False) as data:
                return data[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as err:
        raise ValueError(f"{path} is truncated or not an .npz of arrays ({type(err).__name__}: {err}); copy it "
                         "again") from err
    raise ValueError(f"{path}: no array {key!r} (found {[n.removesuffix('.npy') for n in names][:5]})")
