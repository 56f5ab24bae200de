"""Feature extractors for few-shot learning: the Backbone contract, a registry, weights, freezing policies."""

from fewshot.backbones.base import Backbone, NoFeatureMapsError
from fewshot.backbones.conv4 import Conv4
from fewshot.backbones.freeze import apply_freeze, frozen_names
from fewshot.backbones.interop import TimmBackbone, TorchvisionBackbone
from fewshot.backbones.registry import create_backbone, list_backbones
from fewshot.backbones.resnet import ResNet, ResNet18, ResNet50
from fewshot.backbones.resnet12 import DropBlock, ResNet12
from fewshot.backbones.spec import BackboneSpec, normalise_for
from fewshot.backbones.weights import LoadReport, load_backbone, load_pretrained, save_backbone

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Conv4",
    "DropBlock",
    "LoadReport",
    "NoFeatureMapsError",
    "ResNet",
    "ResNet12",
    "ResNet18",
    "ResNet50",
    "TimmBackbone",
    "TorchvisionBackbone",
    "apply_freeze",
    "create_backbone",
    "frozen_names",
    "list_backbones",
    "load_backbone",
    "load_pretrained",
    "normalise_for",
    "save_backbone",
]
