"""Pillow decoding helpers shared by every loader: bytes or a file in, a uint8 array out."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["RESAMPLE", "decode_image", "resize_array"]

#: Resampling filter used whenever an image is resized: LANCZOS (windowed sinc). It gives
#: the sharpest anti-aliased downsampling Pillow offers (e.g. Omniglot 105 -> 28) and matches
#: what torchvision's PIL path does for ``antialias=True`` closely enough for few-shot work.
RESAMPLE = Image.Resampling.LANCZOS


def decode_image(
    data: bytes | Path,
    *,
    mode: str,
    size: tuple[int, int] | None,
    name: str,
) -> np.ndarray:
    """Decode one image fully, convert it to ``mode`` and optionally resize it.

    Args:
        data: the encoded file's bytes, or a path to it.
        mode: Pillow mode of the result: ``"L"`` (greyscale) or ``"RGB"``; ``"1"`` images are
            converted to ``"L"`` as 0/255.
        size: ``(height, width)`` to resize to with :data:`RESAMPLE`, or None to keep the size.
        name: how to name the image in error messages (e.g. its path inside a zip).

    Returns:
        (H, W) uint8 for ``mode="L"``, (H, W, C) uint8 for multi-channel modes.

    Raises:
        ValueError: the image is corrupt, truncated or not an image; the message names it.
            (Truncated files fail as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its
            default, False.)
        FileNotFoundError: ``data`` is a path that does not exist.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"decode_image: mode must be 'L' or 'RGB', got {mode!r}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"decode_image: size must be (height, width) with positive entries, got {size!r}")
    try:
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else Path(data)
        with Image.open(source) as image:
            image.load()  # force the full decode: a truncated file raises here instead of padding
            converted = image.convert(mode)
        array = np.asarray(converted, dtype=np.uint8)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"corrupt or truncated image {name}: {type(err).__name__}: {err}; delete or replace the file"
        ) from err
    array = array if array.flags.writeable else array.copy()
    return array if size is None else resize_array(array, size)


def resize_array(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a decoded uint8 image with :data:`RESAMPLE`.

    Args:
        array: (H, W) or (H, W, 3) uint8.
        size: ``(height, width)`` of the result.

    Returns:
        (height, width) or (height, width, 3) uint8; ``array`` itself if it already has that size.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"resize_array expects (H, W) or (H, W, C) uint8, got {array.dtype} {array.shape}")
    if array.shape[:2] == tuple(size):
        return array
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), RESAMPLE), dtype=np.uint8)
