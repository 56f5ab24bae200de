"""Load pickled dataset files without running code from them.

Third-party Mini-ImageNet caches (learn2learn, RFS/MetaOptNet) are pickles of numpy arrays in
builtin containers. A plain ``pickle.load`` would call any function the file names; this
unpickler resolves only the few globals such files need (numpy array and scalar
reconstruction, a handful of builtin types) and refuses everything else.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import importlib
import pickle
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "load_pickle"]


def _numpy_core(module: str, name: str) -> object:
    """``numpy._core.<module>.<name>`` (numpy >= 2), else ``numpy.core.<module>.<name>``."""
    try:
        core = importlib.import_module(f"numpy._core.{module}")
    except ImportError:  # numpy 1.x
        core = importlib.import_module(f"numpy.core.{module}")
    return getattr(core, name)


#: (module, name) -> the object it resolves to (Python 3 names; Python 2 names are mapped first).
#: Pickles written with numpy 1 and 2 and by Python 2 are covered.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    **{(f"{package}.{module}", name): _numpy_core(module, name)
       for package in ("numpy.core", "numpy._core")
       for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles store bytes
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        # Python 2 names (e.g. __builtin__.set), mapped as pickle's own find_class does with fix_imports.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            if module == "numpy.dtypes" and name.endswith("DType"):  # numpy >= 2 pickles dtype classes
                return getattr(np.dtypes, name)
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: this file may run code when unpickled; only numpy "
                "arrays in builtin containers are accepted. If you trust the file, convert it to .npz yourself"
            ) from None


def load_pickle(source: Path | IO[bytes]) -> object:
    """Unpickle a file of numpy arrays, lists, dicts, strings and numbers.

    Python 2 pickles (as RFS/MetaOptNet ship) are read with ``encoding="latin1"``, which
    restores numpy arrays byte for byte and str fields as text.

    Args:
        source: a path or a binary file object.

    Raises:
        pickle.UnpicklingError: the file names any other global (e.g. ``posix.system``); nothing of
            it is executed.
        ValueError: the file ends before the pickle does (truncated), naming it.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            return _load(handle, str(source))
    return _load(source, getattr(source, "name", "the pickle stream"))


def _load(handle: IO[bytes], name: str) -> object:
    try:
        return _RestrictedUnpickler(handle, encoding="latin1").load()
    except (EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, pickle.UnpicklingError) and "truncated" not in str(err):
            raise  # a refused global: its own message
        raise ValueError(f"{name} ends before its pickle does: the file is truncated (an interrupted download or "
                         "copy); fetch or copy it again") from err
