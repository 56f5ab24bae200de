"""The decoded, in-memory form of every dataset: one tensor of images grouped by class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_PIXEL_VALUES: dict[torch.device, torch.Tensor] = {}


def pixel_values(device: torch.device) -> torch.Tensor:
    """(256,) float32 ``v / 255`` for every uint8 value ``v``, divided on the CPU and cached on ``device``, so that
    pixels scale to the same bits on every device (CUDA divides by a Python scalar as a multiplication by its
    reciprocal, which differs from the CPU's quotient in the last bit for about half of the 256 values)."""
    device = torch.device(device)
    if device not in _PIXEL_VALUES:
        _PIXEL_VALUES[device] = (torch.arange(256, dtype=torch.float32) / 255.0).to(device)
    return _PIXEL_VALUES[device]


@dataclass(frozen=True)
class FewShotDataset:
    """Images of a set of classes, stored contiguously class after class.

    Build one with :meth:`from_tensors`; loaders in :mod:`episodes.datasets` return this type.

    Attributes:
        images: (N, C, H, W) uint8 pixels (0..255), or (N, ...) float features (see
            :meth:`with_images`). Images of class ``c`` are ``images[offsets[c]:offsets[c + 1]]``.
        offsets: (num_classes + 1,) int64 start of each class in ``images``; ``offsets[-1] == N``.
        class_names: name of each class, e.g. ``"Greek/character01/rot090"`` or a WordNet id.
        name: a human-readable identifier, e.g. ``"omniglot/vinyals/test"``.
        mean, std: per-channel statistics applied by :meth:`to_float` after scaling to [0, 1].
    """

    images: torch.Tensor
    offsets: torch.Tensor
    class_names: tuple[str, ...]
    name: str
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) != len(self.class_names) + 1:
            raise ValueError(
                f"{self.name}: offsets must have num_classes + 1 = {len(self.class_names) + 1} "
                f"entries, got shape {tuple(self.offsets.shape)}"
            )
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != len(self.images):
            raise ValueError(f"{self.name}: offsets must start at 0 and end at len(images)={len(self.images)}")
        if len(self.class_names) and bool((self.offsets[1:] <= self.offsets[:-1]).any()):
            raise ValueError(f"{self.name}: every class needs at least one image")
        if len(set(self.class_names)) != len(self.class_names):
            twice = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
            raise ValueError(f"{self.name}: class names must be unique, {twice[:3]} appear more than once")
        if len(self.mean) != len(self.std) or not all(s > 0 and s != float("inf") for s in self.std):
            raise ValueError(f"{self.name}: need one finite std > 0 per mean, got mean={self.mean}, std={self.std}")
        channels = self.images.shape[1] if self.images.dtype == torch.uint8 and self.images.ndim == 4 else None
        if channels is not None and len(self.mean) not in (1, channels):
            allowed = "1" if channels == 1 else f"1 or {channels}"
            raise ValueError(f"{self.name}: {len(self.mean)} normalisation values for {channels}-channel images; give "
                             f"{allowed}")

    @staticmethod
    def from_tensors(
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: Sequence[str],
        *,
        name: str,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> FewShotDataset:
        """Group ``images`` by class.

        Args:
            images: (N, C, H, W) uint8.
            labels: (N,) integer class index of each image, in [0, len(class_names)).
            class_names: name of each class; every class must have at least one image.
        """
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
            raise ValueError(f"{name}: labels must lie in [0, {len(class_names)})")
        counts = torch.bincount(labels, minlength=len(class_names))
        empty = [class_names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        if empty:
            raise ValueError(f"{name}: classes with no images: {empty[:5]}{' ...' if len(empty) > 5 else ''}")
        order = torch.argsort(labels, stable=True)
        if not bool((order == torch.arange(len(order))).all()):
            images = images[order]
        offsets = torch.zeros(len(class_names) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)
        return FewShotDataset(images, offsets, tuple(class_names), name, tuple(mean), tuple(std))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_sizes(self) -> torch.Tensor:
        """(num_classes,) int64 number of images of each class."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 class index of every image."""
        return torch.repeat_interleave(torch.arange(self.num_classes, device=self.offsets.device), self.class_sizes)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, classes: Sequence[int] | torch.Tensor, *, name: str | None = None) -> FewShotDataset:
        """A dataset holding only ``classes`` (indices into this one), in the given order."""
        classes = torch.as_tensor(classes, dtype=torch.int64).cpu()
        if classes.ndim != 1 or bool(((classes < 0) | (classes >= self.num_classes)).any()):
            raise ValueError(f"{self.name}: subset needs a list of class indices in [0, {self.num_classes}), got "
                             f"{classes.tolist()}")
        offsets = self.offsets.cpu()
        index = torch.cat([torch.arange(int(offsets[c]), int(offsets[c + 1])) for c in classes.tolist()])
        sizes = (offsets[classes + 1] - offsets[classes])
        new_offsets = torch.zeros(len(classes) + 1, dtype=torch.int64)
        new_offsets[1:] = torch.cumsum(sizes, 0)
        return FewShotDataset(
            self.images[index.to(self.images.device)],
            new_offsets.to(self.offsets.device),
            tuple(self.class_names[c] for c in classes.tolist()),
            name or self.name,
            self.mean,
            self.std,
        )

    def with_images(self, images: torch.Tensor, *, name: str | None = None) -> FewShotDataset:
        """The same classes over new per-image data (e.g. (N, D) float embeddings)."""
        if len(images) != len(self.images):
            raise ValueError(f"expected {len(self.images)} rows, got {len(images)}")
        return FewShotDataset(images, self.offsets.to(images.device), self.class_names,
                              name or self.name, self.mean, self.std)

    def to(self, device: torch.device | str) -> FewShotDataset:
        """The dataset with its tensors on ``device`` (e.g. the GPU, for on-device sampling)."""
        return FewShotDataset(self.images.to(device), self.offsets.to(device), self.class_names,
                              self.name, self.mean, self.std)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """Turn gathered rows into model input.

        Args:
            x: (..., C, H, W) uint8 pixels, or float features (returned unchanged).
        Returns:
            (..., C, H, W) float32 ``(x / 255 - mean) / std``.
        """
        if x.dtype != torch.uint8:
            return x
        # CPU: in place on the fresh float copy (one allocation). Elsewhere the CPU's quotients, looked up: a CUDA
        # division by a scalar rounds differently for half the values.
        y = x.float().div_(255.0) if x.device.type == "cpu" else pixel_values(x.device)[x.long()]
        if any(m != 0.0 for m in self.mean):
            y.sub_(torch.tensor(self.mean, device=x.device).view(-1, 1, 1))
        if any(s != 1.0 for s in self.std):
            y.div_(torch.tensor(self.std, device=x.device).view(-1, 1, 1))
        return y
