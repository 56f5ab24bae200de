"""Backbones from timm and torchvision behind the same interface (``feature_dim``, ``spec``, ``stages``).

Neither library is a dependency of fewshot: they are imported when one of these classes is
built, and a missing or broken install (e.g. a torchvision built for another torch) raises an
``ImportError`` saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from fewshot.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec


def _import(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError too
        raise ImportError(
            f"the {module.split('.')[0]!r} backbones need {module} importable with your torch "
            f"({type(err).__name__}: {err}); install it with `pip install 'fewshot[{extra}]'` "
            f"(a build matching torch {torch.__version__})"
        ) from err


def _channel_stats(values: tuple[float, ...], in_channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_channels``: averaged to one value for grey input."""
    if len(values) == in_channels:
        return values
    return (sum(values) / len(values),) * in_channels


class TimmBackbone(nn.Module):
    """Any timm model as a feature extractor (its classifier removed with ``num_classes=0``).

    Args:
        model_name: a timm model name, e.g. ``"resnet18"`` or ``"vit_small_patch16_224"``.
        pretrained: download timm's pretrained weights.
        in_channels: input channels (timm adapts the stem weights itself).
    """

    def __init__(self, *, model_name: str, pretrained: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        timm = _import("timm", "timm")
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
        self.feature_dim: int = int(self.model.num_features)
        cfg = dict(getattr(self.model, "pretrained_cfg", None) or {})
        height, width = tuple(cfg.get("input_size", (in_channels, 224, 224)))[-2:]
        self.spec: BackboneSpec = BackboneSpec(
            (int(height), int(width)), in_channels,
            _channel_stats(tuple(cfg.get("mean", IMAGENET_MEAN)), in_channels),
            _channel_stats(tuple(cfg.get("std", IMAGENET_STD)), in_channels),
        )
        info = getattr(self.model, "feature_info", None) or []
        names = [entry["module"] for entry in info if isinstance(entry, dict) and entry.get("module")]
        if not names:
            names = [name for name, child in self.model.named_children() if any(True for _ in child.parameters())]
        self.stages: list[str] = [f"model.{name}" for name in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images -> (N, feature_dim) pooled features."""
        return self.model(x)


class TorchvisionBackbone(nn.Module):
    """A torchvision classification model with its last linear classifier replaced by the identity.

    Args:
        model_name: a name for ``torchvision.models.get_model``, e.g. ``"resnet18"``.
        weights: a weights name for ``torchvision.models.get_weight``, e.g.
            ``"ResNet18_Weights.IMAGENET1K_V1"``; ``None`` for random initialisation.
    """

    def __init__(self, *, model_name: str, weights: str | None = None) -> None:
        super().__init__()
        models = _import("torchvision.models", "torchvision")
        self.model = models.get_model(model_name, weights=weights)
        head_name, linear_path = self._find_classifier()
        linear = self.model.get_submodule(linear_path)
        self.feature_dim: int = int(linear.in_features)
        parent_path, _, leaf = linear_path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        setattr(parent, leaf, nn.Identity())
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
        if weights is not None:
            transforms = models.get_weight(weights).transforms()
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            size = int(transforms.crop_size[0])
        self.spec: BackboneSpec = BackboneSpec((size, size), 3, mean, std)
        self.stages: list[str] = [f"model.{name}" for name, child in self.model.named_children()
                                  if name != head_name and any(True for _ in child.parameters())]

    def _find_classifier(self) -> tuple[str, str]:
        """(top-level head name, dotted path of its last ``nn.Linear``)."""
        for head_name in ("fc", "classifier", "heads", "head"):
            head = getattr(self.model, head_name, None)
            if isinstance(head, nn.Linear):
                return head_name, head_name
            if isinstance(head, nn.Module):
                linears = [name for name, m in head.named_modules() if isinstance(m, nn.Linear)]
                if linears:
                    return head_name, f"{head_name}.{linears[-1]}"
        raise ValueError(f"cannot find the classifier of torchvision model {type(self.model).__name__} "
                         "(looked for fc, classifier, heads, head ending in nn.Linear); use a timm: backbone")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images -> (N, feature_dim) features."""
        return self.model(x)
