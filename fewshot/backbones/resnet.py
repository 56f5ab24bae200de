"""ResNet-18 and ResNet-50 with torchvision's parameter names, so ImageNet checkpoints load as is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from fewshot.backbones.base import Backbone
from fewshot.backbones.spec import BackboneSpec, default_spec


class BasicBlock(nn.Module):
    """Two 3x3 conv -> BN layers and an identity (or 1x1 conv + BN) shortcut; expansion 1."""

    expansion = 1

    def __init__(self, *, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride here, as torchvision's "ResNet v1.5") -> 1x1 (expand x4) conv -> BN
    layers and an identity (or 1x1 conv + BN) shortcut."""

    expansion = 4

    def __init__(self, *, in_channels: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = _shortcut(in_channels, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class ResNet(Backbone):
    """A ResNet feature extractor laid out exactly like torchvision's (no ``fc`` classifier).

    He et al. 2016, "Deep Residual Learning for Image Recognition".

    Parameter and buffer names match ``torchvision.models.resnet*`` (``conv1``, ``bn1``,
    ``layer1.0.conv1``, ``layer2.0.downsample.0``, ...), so an ImageNet state dict from
    torchvision or timm loads directly (its ``fc.*`` keys are the classifier and are dropped
    by :func:`fewshot.backbones.weights.load_pretrained`). The feature maps are the output of
    ``layer4``: (N, feature_dim, H / 32, W / 32) with the ImageNet stem, (N, feature_dim, H / 8,
    W / 8) with ``small_input`` (sizes rounded up); :meth:`pool` averages them.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
        layers: number of blocks in each of the four stages.
        in_channels: C of the input images.
        small_input: for 28x28 / 84x84 few-shot images: a 3x3 stride-1 stem and no max-pool
            instead of the 7x7 stride-2 stem and 3x3 stride-2 max-pool (the ``conv1`` weight
            then has shape (64, C, 3, 3), so ImageNet stems do not load into it).
        input_size: H (= W) or (H, W) recorded in ``spec``; defaults to 224, or 84 with
            ``small_input``. Any size works thanks to global average pooling.
    """

    def __init__(self, *, block: Literal["basic", "bottleneck"], layers: Sequence[int], in_channels: int = 3,
                 small_input: bool = False, input_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        block_type = {"basic": BasicBlock, "bottleneck": Bottleneck}.get(block)
        if block_type is None:
            raise ValueError(f"unknown ResNet block {block!r}; use 'basic' or 'bottleneck'")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if input_size is None:
            input_size = 84 if small_input else 224
        self.spec: BackboneSpec = default_spec(input_size, in_channels, imagenet=True)
        self.feature_dim: int = 512 * block_type.expansion
        if small_input:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool: nn.Module = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = []
            for j in range(blocks):
                stage.append(block_type(in_channels=channels, planes=planes, stride=2 if i > 0 and j == 0 else 1))
                channels = planes * block_type.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        # The stem is two modules (torchvision's names); it counts as two stages for freezing.
        self.stages: list[str] = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images -> (N, feature_dim, h, w) maps of ``layer4``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim, h, w) maps -> (N, feature_dim) global averages (512 for ResNet-18,
        2048 for ResNet-50)."""
        return maps.mean(dim=(2, 3))


class ResNet18(ResNet, name="resnet18"):
    """ResNet-18 (He et al. 2016): basic blocks (2, 2, 2, 2), feature_dim 512. See :class:`ResNet`."""

    def __init__(self, *, in_channels: int = 3, small_input: bool = False,
                 input_size: int | tuple[int, int] | None = None) -> None:
        super().__init__(block="basic", layers=(2, 2, 2, 2), in_channels=in_channels, small_input=small_input,
                         input_size=input_size)


class ResNet50(ResNet, name="resnet50"):
    """ResNet-50 (He et al. 2016): bottleneck blocks (3, 4, 6, 3), feature_dim 2048. See :class:`ResNet`."""

    def __init__(self, *, in_channels: int = 3, small_input: bool = False,
                 input_size: int | tuple[int, int] | None = None) -> None:
        super().__init__(block="bottleneck", layers=(3, 4, 6, 3), in_channels=in_channels, small_input=small_input,
                         input_size=input_size)
