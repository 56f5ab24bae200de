"""A decoded-array cache on disk: build once, then load memory-mapped in well under a second.

A cache file is a ``torch.save`` of ``{"key": <json string>, name: tensor, ...}``. The ``key``
records everything that makes the cached arrays valid (loader name and version, image size, a
fingerprint of the source files); a file whose key differs, or that cannot be read, is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from episodes.files import atomic_write

__all__ = ["cache_dir_for", "cached_arrays", "decode_names", "default_cache_dir", "encode_names",
           "source_fingerprint"]

logger = logging.getLogger(__name__)

_KEY = "key"


def default_cache_dir() -> Path:
    """``$FEWSHOT_CACHE`` if set, else ``~/.cache/fewshot``."""
    env = os.environ.get("FEWSHOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewshot"


def cache_dir_for(root: Path | None, cache_dir: Path | None = None) -> Path:
    """Where to cache arrays decoded from ``root``.

    An explicit ``cache_dir`` wins. Otherwise ``<root>/.fewshot_cache`` ("next to the data") when
    ``root`` is a writable folder, else :func:`default_cache_dir`. A folder whose mode has no write
    bit counts as read-only even for root, so shared read-only data is never written into.
    """
    if cache_dir is not None:
        return Path(cache_dir)
    if root is not None:
        beside = Path(root) / ".fewshot_cache"
        if _writable(beside) or (not beside.exists() and _writable(Path(root))):
            return beside
    return default_cache_dir()


def _writable(folder: Path) -> bool:
    """A folder we may write: accessible, and not marked read-only (no write bit), which even root respects."""
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK) and bool(folder.stat().st_mode & 0o222)


def source_fingerprint(paths: Iterable[Path]) -> str:
    """A cheap fingerprint of source files: sha256 over (name, size, mtime_ns) of each file.

    File contents are not read, so this costs one ``stat`` per file. Names are made relative to
    the files' common parent folder (so moving the whole data folder keeps the fingerprint) and
    sorted (so the order of ``paths`` does not matter). A file that is replaced, grows, shrinks
    or is touched changes the fingerprint.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    paths = [Path(p).resolve() for p in paths]
    if not paths:
        return hashlib.sha256(b"").hexdigest()
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.relative_to(common).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def encode_names(names: Sequence[str]) -> torch.Tensor:
    """Names as one (L,) uint8 tensor of newline-joined UTF-8 (a cache holds tensors only)."""
    return torch.frombuffer(bytearray("\n".join(names).encode()), dtype=torch.uint8)


def decode_names(encoded: torch.Tensor) -> list[str]:
    """The names :func:`encode_names` stored in the (L,) uint8 tensor ``encoded``."""
    return bytes(encoded.numpy()).decode().split("\n")


def _key_string(key: dict[str, object]) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise TypeError(f"cache key must be JSON-serialisable (str, int, float, bool, list, dict): {err}") from err


def _load_if_valid(path: Path, key_string: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors if ``path`` holds a readable cache for ``key_string``; else None."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except Exception as err:  # any unreadable file is rebuilt, with a warning
        logger.warning("cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None
    if not isinstance(stored, dict) or stored.get(_KEY) != key_string:
        logger.warning("cache %s was built from other sources or settings; rebuilding it", path)
        return None
    tensors = {name: value for name, value in stored.items() if name != _KEY}
    if not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        logger.warning("cache %s holds non-tensor entries; rebuilding it", path)
        return None
    return tensors


def cached_arrays(
    path: Path,
    *,
    key: dict[str, object],
    build: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Load the tensors cached at ``path``, or build and cache them.

    If ``path`` exists and its stored key equals ``key``, its tensors are loaded memory-mapped
    (``torch.load(mmap=True, weights_only=True)``): nothing is decoded and pages are read on
    demand. Otherwise ``build()`` is called and its result written with
    :func:`episodes.files.atomic_write`, so a crash never leaves a half-written cache.
    A stale or corrupt file is rebuilt with a logged warning, never trusted. If ``build()``
    raises, the exception propagates and nothing is written.

    Args:
        path: the cache file, e.g. ``<root>/.fewshot_cache/omniglot-28.pt``.
        key: JSON-serialisable description of what the arrays depend on (loader name and
            version, image size, :func:`source_fingerprint` of the sources).
        build: returns the arrays, e.g. ``{"images": (N, C, H, W) uint8, "labels": (N,) int64}``.

    Returns:
        The tensors by name (memory-mapped when loaded from disk; as built otherwise).
    """
    path = Path(path)
    key_string = _key_string(key)
    cached = _load_if_valid(path, key_string)
    if cached is not None:
        return cached
    tensors = build()
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise TypeError("build() must return a dict of str -> torch.Tensor")
    if _KEY in tensors:
        raise ValueError(f"build() must not return an array named {_KEY!r}: that name holds the cache key")
    payload = {_KEY: key_string, **tensors}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except OSError as err:
        logger.warning("could not write cache %s (%s); continuing without it", path, err)
    return tensors
