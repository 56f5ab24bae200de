"""The four-block convolutional backbone of Matching Networks, Prototypical Networks and MAML."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.backbones.base import Backbone
from fewshot.backbones.spec import BackboneSpec, as_size, default_spec


class Conv4(Backbone, name="conv4"):
    """Conv4: four blocks of conv3x3(hidden, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2), flattened.

    Vinyals et al. 2016, "Matching Networks for One Shot Learning"; used by Snell et al. 2017
    (Prototypical Networks) and Finn et al. 2017 (MAML).

    The flattened feature size depends on the input size: every max-pool halves (and floors)
    H and W, so ``feature_dim = hidden * (H // 16) * (W // 16)`` for sizes that stay even, e.g.
    64 at 28x28 (28 -> 14 -> 7 -> 3 -> 1) and 1600 at 84x84 (84 -> 42 -> 21 -> 10 -> 5). The
    feature maps are the (N, hidden, H // 16, W // 16) output of ``block4``; :meth:`pool` flattens them.

    ``pooled_blocks=2`` keeps the max-pool of the first two blocks only: the larger maps (64x7x7 at 28x28,
    64x21x21 at 84x84) that Relation Networks (Sung et al. 2018) and DN4 (Li et al. 2019, "Conv-64F") compare.

    Args:
        in_channels: C of the input images (1 for Omniglot, 3 for colour).
        hidden: channels of every convolution.
        input_size: H (= W) or (H, W) of the inputs; fixes ``feature_dim``.
        pooled_blocks: how many blocks, from the first, end with a 2x2 max-pool (0 to 4).
    """

    def __init__(self, *, in_channels: int = 1, hidden: int = 64, input_size: int | tuple[int, int] = 28,
                 pooled_blocks: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1:
            raise ValueError(f"in_channels and hidden must be positive, got {in_channels} and {hidden}")
        if not 0 <= pooled_blocks <= 4:
            raise ValueError(f"pooled_blocks must lie in 0..4, got {pooled_blocks}")
        height, width = as_size(input_size)
        for _ in range(pooled_blocks):
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"input_size {as_size(input_size)} is too small for Conv4's {pooled_blocks} 2x2 "
                             f"max-pools; use at least {2 ** pooled_blocks}x{2 ** pooled_blocks}")
        self.spec: BackboneSpec = default_spec(input_size, in_channels, imagenet=False)
        self.feature_dim: int = hidden * height * width
        self.stages: list[str] = ["block1", "block2", "block3", "block4"]
        channels = in_channels
        for i, name in enumerate(self.stages):
            pool = [nn.MaxPool2d(2)] if i < pooled_blocks else []
            self.add_module(name, nn.Sequential(
                nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=False),
                *pool,
            ))
            channels = hidden

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images -> (N, hidden, h, w) maps of ``block4`` (h = H // 16 with the
        default four pools)."""
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, hidden, h, w) maps -> (N, feature_dim) flattened features.

        Raises:
            ValueError: the maps come from inputs of another size than the one built for.
        """
        x = maps.flatten(1)
        if x.shape[1] != self.feature_dim:
            raise ValueError(f"Conv4 built for {self.spec.input_size} inputs (feature_dim {self.feature_dim}) "
                             f"got an input giving {x.shape[1]} features; build it with input_size=(H, W) "
                             "of your images")
        return x
