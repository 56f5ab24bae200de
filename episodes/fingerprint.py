"""The content fingerprint of a dataset: which copy of the data a result was computed on.

:func:`~episodes.datasets.cache.source_fingerprint` says whether a cache is stale (file names, sizes and times:
cheap, but different for two copies of the same files). :func:`content_fingerprint` says whether two datasets hold
the same data wherever they were loaded from: a sha256 over

1. a header, the compact JSON ``{"classes": [...], "class_sizes": [...], "dtype": "uint8", "shape": [C, H, W]}``
   (keys sorted; ``classes`` the class names in the dataset's order, ``class_sizes`` the image count of each), then
2. the raw bytes of ``images`` in the dataset's order (class after class, C-contiguous).

The normalisation (``mean``, ``std``) and the dataset's ``name`` are not part of it: they say how the pixels are
fed, not which pixels they are. Two copies of a benchmark match when they decode to the same pixels in the same
order: the same files read by the same loader at the same image size (Pillow's resampling is part of the decode).
"""

from __future__ import annotations

import hashlib
import json

import torch

from episodes.dataset import FewShotDataset

__all__ = ["content_fingerprint", "short"]

#: Rows of images hashed per step (bounds the temporary CPU copy of a dataset held on a GPU).
_ROWS_PER_STEP = 4096


def content_fingerprint(dataset: FewShotDataset) -> str:
    """The 64 hex digits of the sha256 described in this module's docstring.

    Args:
        dataset: any :class:`FewShotDataset` (images (N, C, H, W) uint8, or (N, ...) features of any dtype), on
            any device; a memory-mapped cache is read once, page by page.
    """
    images = dataset.images
    header = {"classes": list(dataset.class_names), "class_sizes": dataset.class_sizes.tolist(),
              "dtype": str(images.dtype).removeprefix("torch."), "shape": list(images.shape[1:])}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for start in range(0, len(images), _ROWS_PER_STEP):
        block = images[start:start + _ROWS_PER_STEP].detach().cpu().contiguous()
        digest.update(memoryview(block.view(torch.uint8).numpy()).cast("B"))
    return digest.hexdigest()


def short(fingerprint: str | None) -> str:
    """The first 12 hex digits, for messages (``"unknown"`` for None)."""
    return "unknown" if fingerprint is None else fingerprint[:12]
