"""What a backbone expects as input: kept beside its weights so inference normalises the same way."""

from __future__ import annotations

from dataclasses import dataclass, replace

from episodes import FewShotDataset

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """The input a backbone's weights were made for.

    Attributes:
        input_size: (H, W) the spatial size the backbone was built for.
        in_channels: C, the number of input channels.
        mean, std: per-channel statistics of the normalisation ``(x / 255 - mean) / std`` the
            weights were trained with (one value per channel).
    """

    input_size: tuple[int, int]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be two positive integers (H, W), got {self.input_size}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {self.in_channels}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(f"mean and std need one value per channel ({self.in_channels}), "
                             f"got mean={self.mean}, std={self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


def default_spec(input_size: int | tuple[int, int], in_channels: int, *, imagenet: bool) -> BackboneSpec:
    """A spec with ImageNet statistics (3 channels, ``imagenet=True``) or the identity
    normalisation (mean 0, std 1 per channel: the dataset's own ``to_float`` is used as is)."""
    size = as_size(input_size)
    if imagenet and in_channels == 3:
        return BackboneSpec(size, in_channels, IMAGENET_MEAN, IMAGENET_STD)
    return BackboneSpec(size, in_channels, (0.0,) * in_channels, (1.0,) * in_channels)


def per_channel(values: tuple[float, ...], in_channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_channels`` channels: ``values`` as they are when they have one per
    channel, else their average for each channel (RGB statistics for grey input, whose first convolution
    sums the RGB weights)."""
    if len(values) == in_channels:
        return tuple(values)
    return (sum(values) / len(values),) * in_channels


def as_size(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``28`` -> ``(28, 28)``; ``(84, 84)`` or ``[84, 84]`` -> ``(84, 84)``."""
    if isinstance(input_size, int):
        return (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be an int or (H, W), got {input_size!r}")
    return size  # type: ignore[return-value]


def normalise_for(dataset: FewShotDataset, spec: BackboneSpec) -> FewShotDataset:
    """``dataset`` fed the way the weights of a backbone with ``spec`` were trained: its ``to_float`` uses
    ``spec.mean``/``spec.std`` (one value per channel).

    Raises:
        ValueError: the images have another channel count or size than ``spec`` says (the message names the
            dataset keys to set).
    """
    channels, size = int(dataset.images.shape[1]), tuple(int(s) for s in dataset.images.shape[-2:])
    if channels != spec.in_channels or size != spec.input_size:
        raise ValueError(f"the backbone's weights were trained on {spec.in_channels}-channel {spec.input_size} images "
                         f"but {dataset.name} has {channels}-channel {size} images; set dataset.channels="
                         f"{spec.in_channels} dataset.loader.image_size={spec.input_size[0]}")
    return replace(dataset, mean=tuple(spec.mean), std=tuple(spec.std))
