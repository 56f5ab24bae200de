"""Batched, seeded training augmentations for episodes (torch only, no per-image Python loop).

An augmentation receives float images ``x`` of shape (B, K, C, H, W) (B episodes of K images)
and two int64 key tensors of shape (B, K) from :class:`episodes.sampler.EpisodeSampler`:
``image_keys`` (one per image, derived from the seed, the episode id and the image's position)
and ``class_keys`` (one per episode class, shared by all its support and query images). All
randomness is drawn from these keys with :mod:`episodes.rng`, so an augmented episode is a pure
function of ``(seed, episode id)`` and identical on CPU and GPU.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

from episodes import rng


class Augment(abc.ABC):
    """A random transform of a batch of episode images, driven only by the keys it is given."""

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor, *, image_keys: torch.Tensor, class_keys: torch.Tensor) -> torch.Tensor:
        """Transform ``x``.

        Args:
            x: (B, K, C, H, W) float images.
            image_keys: (B, K) int64, one key per image.
            class_keys: (B, K) int64, equal for images of the same episode class.
        Returns:
            (B, K, C, H, W) float images.
        """


def _check_images(x: torch.Tensor, image_keys: torch.Tensor) -> None:
    if x.ndim != 5 or image_keys.shape != x.shape[:2]:
        raise ValueError(f"expected images (B, K, C, H, W) and keys (B, K), got {tuple(x.shape)} "
                         f"and {tuple(image_keys.shape)}")


class RandomCropFlip(Augment):
    """Random crop after zero padding, then a random horizontal flip, independently per image.

    The standard Mini-ImageNet training augmentation (e.g. Tian et al. 2020, "Rethinking Few-Shot
    Image Classification: a Good Embedding Is All You Need?"). The crop keeps the image size: the
    image is shifted by up to ``padding`` pixels in each direction and the uncovered border is
    filled with 0, which is the dataset's mean colour after ``FewShotDataset.to_float``.

    Args:
        padding: maximum shift in pixels (>= 0).
        flip: also flip each image horizontally with probability 1/2.
    """

    def __init__(self, *, padding: int = 8, flip: bool = True) -> None:
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = padding
        self.flip = flip

    def __call__(self, x: torch.Tensor, *, image_keys: torch.Tensor, class_keys: torch.Tensor) -> torch.Tensor:
        _check_images(x, image_keys)
        b, k, c, h, w = x.shape
        keys = image_keys.reshape(-1, 1).to(x.device)  # (N, 1)
        shift_y = rng.uniform_int(keys, 0, 2 * self.padding + 1) - self.padding
        shift_x = rng.uniform_int(keys, 1, 2 * self.padding + 1) - self.padding
        cols = torch.arange(w, device=x.device).expand(len(keys), w)
        if self.flip:
            cols = torch.where(rng.uniform_int(keys, 2, 2) == 1, w - 1 - cols, cols)
        rows = torch.arange(h, device=x.device) + shift_y  # (N, H): source row of each output row
        cols = cols + shift_x  # (N, W)
        inside = ((rows >= 0) & (rows < h)).unsqueeze(-1) & ((cols >= 0) & (cols < w)).unsqueeze(-2)  # (N, H, W)
        source = rows.clamp(0, h - 1).unsqueeze(-1) * w + cols.clamp(0, w - 1).unsqueeze(-2)
        flat = x.reshape(b * k, c, h * w)
        out = flat.gather(2, source.reshape(b * k, 1, h * w).expand(b * k, c, h * w))
        out = out * inside.reshape(b * k, 1, h * w).to(out.dtype)
        return out.reshape(b, k, c, h, w)


class RandomRot90Classes(Augment):
    """Rotate every image of an episode class by the same random multiple of 90 degrees.

    Rotations as new classes, as in Santoro et al. 2016 ("Meta-Learning with Memory-Augmented
    Neural Networks") and Vinyals et al. 2016 for Omniglot. Only for datasets that do not already
    hold the rotated classes (the Vinyals Omniglot split does). Needs square images.
    """

    def __call__(self, x: torch.Tensor, *, image_keys: torch.Tensor, class_keys: torch.Tensor) -> torch.Tensor:
        _check_images(x, image_keys)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RandomRot90Classes needs square images, got {x.shape[-2]}x{x.shape[-1]}")
        quarter_turns = rng.uniform_int(class_keys.to(x.device), 0, 4)
        out = x.clone()
        for turns in (1, 2, 3):
            chosen = quarter_turns == turns
            out[chosen] = torch.rot90(x[chosen], turns, dims=(-2, -1))
        return out


class Compose(Augment):
    """Apply ``augments`` in order, each with its own independent keys."""

    def __init__(self, augments: Sequence[Augment]) -> None:
        self.augments = tuple(augments)
        if not all(isinstance(a, Augment) for a in self.augments):
            raise TypeError("Compose takes a sequence of Augment instances")

    def __call__(self, x: torch.Tensor, *, image_keys: torch.Tensor, class_keys: torch.Tensor) -> torch.Tensor:
        for i, augment in enumerate(self.augments):
            x = augment(x, image_keys=rng.derive(image_keys, i), class_keys=rng.derive(class_keys, i))
        return x
