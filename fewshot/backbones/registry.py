"""One factory: ``create_backbone("conv4", hidden=32)``, ``create_backbone("timm:resnet18")``.

Native backbones register themselves by name where they are defined (``class Conv4(Backbone, name="conv4")``);
the factory imports every module of :mod:`fewshot.backbones` first, so a new backbone module needs no edit here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import fewshot.backbones
from fewshot.backbones.base import Backbone
from fewshot.backbones.interop import TimmBackbone, TorchvisionBackbone

# "<prefix>:<model>" names: the model name is passed to the wrapper as ``model_name``.
_WRAPPERS: dict[str, Callable[..., Backbone]] = {
    "timm": TimmBackbone,
    "torchvision": TorchvisionBackbone,
}


def _native() -> dict[str, type[Backbone]]:
    """Every registered backbone class by name, after importing each module of the package (once)."""
    for module in pkgutil.iter_modules(fewshot.backbones.__path__):
        importlib.import_module(f"fewshot.backbones.{module.name}")
    return Backbone.registered


def list_backbones() -> list[str]:
    """The registered names, plus the ``timm:<model>`` and ``torchvision:<model>`` patterns."""
    return sorted(_native()) + [f"{prefix}:<model>" for prefix in sorted(_WRAPPERS)]


def _accepted_keywords(builder: Callable[..., Backbone]) -> list[str]:
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def create_backbone(name: str, **kwargs: object) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :func:`list_backbones` (``"conv4"``, ``"resnet12"``, ``"resnet18"``,
            ``"resnet50"``), or ``"timm:<model>"`` / ``"torchvision:<model>"``.
        **kwargs: the backbone's constructor keywords, checked against its signature.
    Returns:
        A :class:`~fewshot.backbones.base.Backbone`: ``backbone(x)`` maps (N, C, H, W) images to
        (N, feature_dim) vectors, ``backbone.forward_features(x)`` to (N, C', h, w) maps.
    Raises:
        ValueError: unknown name. TypeError: a keyword the backbone does not accept.
    """
    prefix, sep, model_name = name.partition(":")
    builder = _WRAPPERS.get(prefix) if sep else _native().get(name)
    if builder is None or (sep and not model_name):
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}")
    accepted = [k for k in _accepted_keywords(builder) if not (sep and k == "model_name")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"backbone {name!r} got unexpected keyword(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or '(none)'}")
    if sep:
        return builder(model_name=model_name, **kwargs)
    return builder(**kwargs)
