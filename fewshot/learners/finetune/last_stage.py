"""Fine-tuning the last stage of a backbone on frozen feature maps of the stages before it."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from episodes import EpisodeBatch
from fewshot.backbones.spec import as_size
from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.finetune.baseline import BackboneFineTune, HeadKind

__all__ = ["LastStageFineTune"]


class _LastStage(nn.Module):
    """The last stage of ``backbone`` and its pooling: (N, C, h, w) maps of the stage before -> (N, feature_dim).
    Shares the stage's parameters with ``backbone``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.stage = getattr(backbone, backbone.stages[-1])
        self.feature_dim: int = backbone.feature_dim
        self._pool = backbone.pool

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self._pool(self.stage(maps))


class LastStageFineTune(EmbeddingLearner):
    """:class:`BackboneFineTune` with ``finetune_backbone="last"``, computed on cached feature maps.

    Fine-tuning only the last stage leaves every earlier stage frozen (and its batch norm on the pretrained running
    statistics, as :class:`BackboneFineTune` does), so each image's maps before the last stage are a fixed function
    of the image: this learner embeds them once per image (:meth:`embed`, which the evaluation harness calls once per
    test image) and runs the fine-tuning of the last stage and a new head on them. The logits equal those of
    ``BackboneFineTune(backbone, finetune_backbone="last", ...)`` on the images up to float rounding, for a fraction
    of the cost (for Conv4 at 28x28 the last block is about 3% of the network's multiply-adds).

    Args:
        backbone: a :class:`~fewshot.backbones.Backbone` whose ``forward_features`` applies its ``stages`` in order
            (Conv4; checked on a probe input) and whose ``pool`` has no parameters.
        head, steps, lr, weight_decay, scale, backbone_lr_mult, batched: as :class:`BackboneFineTune`; the last
            stage learns at ``lr * backbone_lr_mult``.
    """

    def __init__(self, backbone: nn.Module, *, head: HeadKind = "linear", steps: int = 100, lr: float = 0.01,
                 weight_decay: float = 0.001, scale: float = 10.0, backbone_lr_mult: float = 0.1,
                 batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__()
        stages = getattr(backbone, "stages", None)
        if not isinstance(stages, list) or len(stages) < 2 or not hasattr(backbone, "spec"):
            raise ValueError(f"LastStageFineTune needs a fewshot Backbone with at least two `stages` (e.g. Conv4); "
                             f"{type(backbone).__name__} has stages {stages!r}")
        self.backbone = backbone
        self._settings = {"head": head, "steps": steps, "lr": lr, "weight_decay": weight_decay, "scale": scale,
                          "backbone_lr_mult": backbone_lr_mult, "batched": batched}
        self._tuner()  # validates the settings
        self.map_shape = self._check_sequential()

    def _tuner(self) -> BackboneFineTune:
        return BackboneFineTune(_LastStage(self.backbone), finetune_backbone="all", **self._settings)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.backbone.stages[:-1]:
            x = getattr(self.backbone, name)(x)
        return x

    def _check_sequential(self) -> tuple[int, ...]:
        """The (C, h, w) shape of the maps before the last stage; ``ValueError`` if the stages in order do not give
        the backbone's features (a backbone whose forward is more than its stages, e.g. a residual stem)."""
        height, width = as_size(self.backbone.spec.input_size)
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, self.backbone.spec.in_channels, height, width, generator=generator)
        reference = next(self.backbone.parameters())
        probe = probe.to(device=reference.device, dtype=reference.dtype)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                maps = self._trunk(probe)
                same = torch.allclose(_LastStage(self.backbone)(maps), self.backbone(probe), rtol=1e-5, atol=1e-6)
        finally:
            self.backbone.train(was_training)
        if not same:
            raise ValueError(f"{type(self.backbone).__name__}'s features are not its stages {self.backbone.stages} "
                             "applied in order, so its last stage cannot be fine-tuned on cached maps; use "
                             "BackboneFineTune(backbone, finetune_backbone='last')")
        return tuple(maps.shape[1:])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) images -> (N, C * h * w) flattened maps of the stages before the last one."""
        return self._trunk(x).flatten(1)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Fine-tune a copy of the last stage and a new head on each support set's maps; score the query maps.

        Args:
            support: (B, S, C*h*w) flattened maps from :meth:`embed`; support_y: (B, S) labels in [0, n_way);
                query: (B, Q, C*h*w).
        Returns:
            (B, Q, n_way) detached logits.
        """
        b, s, q = support.shape[0], support.shape[1], query.shape[1]
        device = support.device
        batch = EpisodeBatch(  # query labels are never read by a learner: zeros stand in for them
            support_x=support.reshape(b, s, *self.map_shape), support_y=support_y,
            query_x=query.reshape(b, q, *self.map_shape), query_y=torch.zeros(b, q, dtype=torch.int64, device=device),
            classes=torch.arange(n_way, device=device).expand(b, -1), episode_ids=torch.arange(b, device=device))
        return self._tuner().predict(batch)
