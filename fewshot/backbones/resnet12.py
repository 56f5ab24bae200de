"""ResNet-12, the standard deeper backbone of few-shot learning on Mini-ImageNet, with DropBlock."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.base import Backbone
from fewshot.backbones.spec import BackboneSpec, default_spec


class DropBlock(nn.Module):
    """DropBlock regularisation: zero out square blocks of a feature map, then rescale.

    Ghiasi, Lin & Le 2018, "DropBlock: A regularization method for convolutional networks".
    Active only in training mode and when ``drop_rate > 0``; draws its masks from torch's
    global generator, like ``nn.Dropout`` (seed it, or fork it, for reproducible runs; under
    ``torch.func.vmap`` pass ``randomness="different"``).

    Args:
        drop_rate: expected fraction of activations dropped, in [0, 1).
        block_size: side of each dropped square (clipped to the feature-map size).
    """

    def __init__(self, *, drop_rate: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.drop_rate = drop_rate
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), blocks dropped and the rest scaled up to keep the mean."""
        if not self.training or self.drop_rate == 0.0:
            return x
        n, c, h, w = x.shape
        block = min(self.block_size, h, w)
        valid_h, valid_w = h - block + 1, w - block + 1
        # Seed rate so that the expected dropped fraction is drop_rate (Ghiasi et al., eq. 1).
        gamma = self.drop_rate * h * w / (block * block * valid_h * valid_w)
        seeds = (torch.rand(n, c, valid_h, valid_w, device=x.device) < gamma).to(x.dtype)
        # Each seed is the top-left corner of a block: pad so every block lies inside the map,
        # then a stride-1 max-pool spreads each seed over its block.
        dropped = F.max_pool2d(F.pad(seeds, (block - 1,) * 4), kernel_size=block, stride=1)
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResNet12Block(nn.Module):
    """Three 3x3 conv -> BN (-> LeakyReLU(0.1)) layers, a 1x1 conv + BN shortcut, LeakyReLU,
    a 2x2 max-pool, then DropBlock. (N, C_in, H, W) -> (N, C_out, H // 2, W // 2)."""

    def __init__(self, *, in_channels: int, out_channels: int, drop_rate: float, block_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                                        nn.BatchNorm2d(out_channels))
        self.relu = nn.LeakyReLU(0.1, inplace=False)
        self.pool = nn.MaxPool2d(2)
        self.dropblock = DropBlock(drop_rate=drop_rate, block_size=block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.relu(out + self.downsample(x))
        return self.dropblock(self.pool(out))


class ResNet12(Backbone, name="resnet12"):
    """ResNet-12: four residual blocks of widths (64, 160, 320, 640), global average pooling.

    Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved few-shot learning";
    Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization" (MetaOptNet);
    Tian et al. 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need" (RFS).

    Stage ``layerK`` is an ``nn.Sequential`` holding one block, so parameter names read
    ``layer1.0.conv1.weight``, ``layer1.0.downsample.0.weight``, ... Convolutions have no bias
    (batch norm follows each). DropBlock (Ghiasi et al. 2018) acts after the last two blocks, as in
    MetaOptNet and RFS, only in training mode. The feature maps are the (N, widths[-1], H // 16, W // 16)
    output of ``layer4``; :meth:`pool` averages them.

    Args:
        in_channels: C of the input images.
        widths: output channels of the four blocks.
        drop_rate: DropBlock rate of the last two blocks (0 disables it).
        dropblock_size: DropBlock square side (5 in MetaOptNet/RFS at 84x84).
        input_size: H (= W) or (H, W) the model is meant for (recorded in ``spec``; any size of
            at least 16x16 works thanks to global pooling).
    """

    def __init__(self, *, in_channels: int = 3, widths: Sequence[int] = (64, 160, 320, 640), drop_rate: float = 0.0,
                 dropblock_size: int = 5, input_size: int | tuple[int, int] = 84) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be four positive channel counts, got {widths}")
        self.spec: BackboneSpec = default_spec(input_size, in_channels, imagenet=True)
        self.feature_dim: int = widths[-1]
        self.stages: list[str] = ["layer1", "layer2", "layer3", "layer4"]
        channels = in_channels
        for i, (name, width) in enumerate(zip(self.stages, widths, strict=True)):
            block = ResNet12Block(in_channels=channels, out_channels=width,
                                  drop_rate=drop_rate if i >= 2 else 0.0, block_size=dropblock_size)
            self.add_module(name, nn.Sequential(block))
            channels = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images, H and W at least 16 -> (N, widths[-1], H // 16, W // 16)
        maps of ``layer4``."""
        if x.shape[-2] < 16 or x.shape[-1] < 16:
            raise ValueError(f"ResNet12 needs inputs of at least 16x16 (four 2x2 max-pools), got {tuple(x.shape)}")
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C', h, w) maps -> (N, feature_dim) global averages over h and w."""
        return maps.mean(dim=(2, 3))
