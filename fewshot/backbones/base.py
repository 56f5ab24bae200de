"""The backbone contract: feature maps, their pooling into vectors, and what a method may rely on.

A method calls ``backbone(x)`` for (N, feature_dim) vectors and ``backbone.forward_features(x)``
for (N, C', h, w) feature maps (RelationNet, DN4, ...). A method that needs maps checks
``backbone.has_feature_maps`` (or calls :meth:`Backbone.feature_map_shape`, which raises
:class:`NoFeatureMapsError`) when it is built, not at its first episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from fewshot.backbones.spec import BackboneSpec, as_size


class NoFeatureMapsError(ValueError):
    """Raised by :meth:`Backbone.forward_features` (and ``pool``, ``feature_map_shape``) of a
    backbone whose features are not spatial maps, e.g. the tokens of a vision transformer."""


class Backbone(ABC, nn.Module):
    """A feature extractor: (N, C, H, W) images -> (N, C', h, w) maps -> (N, feature_dim) vectors.

    ``ABC`` comes before ``nn.Module`` in the bases, as in higher's ``_MonkeyPatchBase(ABC, Module)``: the
    other order leaves no consistent method resolution order for the class higher derives from a backbone
    (``higher.innerloop_ctx`` then fails with a TypeError).

    Attributes (set by every subclass's constructor):
        feature_dim: D, the size of the vectors of :meth:`forward`.
        spec: the input the backbone is built for (size, channels, normalisation).
        stages: names of the stage submodules (``get_submodule`` paths), input to output; the
            freezing policies freeze the first k of them.
        has_feature_maps: whether :meth:`forward_features` gives spatial maps (class default
            True; a backbone without maps sets it False, says why in ``_no_maps_reason``, and
            overrides :meth:`forward`).
        pretrained: whether the weights come from pretraining (class default False; True for a
            timm/torchvision wrapper built with pretrained weights and after
            :func:`~fewshot.backbones.weights.load_pretrained`): the data is then fed as ``spec``
            says (:func:`~fewshot.backbones.spec.normalise_for`).

    Contract: ``forward(x)`` equals ``pool(forward_features(x))`` exactly. Native backbones
    implement :meth:`forward_features` and :meth:`pool` and inherit :meth:`forward`; the timm and
    torchvision wrappers call their library's forward (the same computation), which also serves
    their models without maps.
    """

    feature_dim: int
    spec: BackboneSpec
    stages: list[str]
    has_feature_maps: bool = True
    pretrained: bool = False
    _no_maps_reason: str = ""
    #: name -> class of every subclass declared with ``class X(Backbone, name="x")``; read it through
    #: :func:`fewshot.backbones.create_backbone`, which also imports every module of this package first.
    registered: ClassVar[dict[str, type[Backbone]]] = {}

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in Backbone.registered and Backbone.registered[name] is not cls:
                raise ValueError(f"backbone name {name!r} is taken by {Backbone.registered[name].__qualname__}")
            Backbone.registered[name] = cls

    @abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, spec.in_channels, H, W) images -> (N, C', h, w) feature maps, before global pooling.

        Raises:
            NoFeatureMapsError: the backbone has no spatial maps (``has_feature_maps`` is False).
        """

    @abstractmethod
    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C', h, w) maps of :meth:`forward_features` -> (N, feature_dim) vectors (the
        backbone's own pooling: Conv4 flattens, the ResNets average over h and w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, spec.in_channels, H, W) images -> (N, feature_dim) vectors: ``pool(forward_features(x))``."""
        return self.pool(self.forward_features(x))

    def feature_map_shape(self, input_size: int | tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(C', h, w) of the maps :meth:`forward_features` gives for inputs of ``input_size``
        (default ``spec.input_size``), without running the model.

        Runs ``forward_features`` on the meta device (shapes only, no arithmetic) with meta copies
        of the parameters and buffers, so no state changes and the cost does not grow with the model.

        Raises:
            NoFeatureMapsError: the backbone has no spatial maps.
        """
        self.require_feature_maps("feature_map_shape")
        shape = self._meta_output_shape(self.forward_features, input_size)
        return (int(shape[1]), int(shape[2]), int(shape[3]))

    def _meta_output_shape(self, fn: Callable[[torch.Tensor], torch.Tensor],
                           input_size: int | tuple[int, int] | None = None) -> torch.Size:
        """Shape of ``fn(x)`` for a batch x of two meta images of ``input_size`` (default ``spec.input_size``),
        with every parameter and buffer of this module swapped for a meta copy during the call."""
        height, width = as_size(input_size if input_size is not None else self.spec.input_size)
        probe = _Probe(self, fn)
        tensors = {**dict(probe.named_parameters()), **dict(probe.named_buffers())}
        dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
        meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
        # two images: training-mode batch norm refuses one value per channel (1x1 maps of a batch of one)
        x = torch.empty(2, self.spec.in_channels, height, width, device="meta", dtype=dtype)
        with torch.no_grad():
            return torch.func.functional_call(probe, meta, (x,)).shape

    def require_feature_maps(self, user: str) -> None:
        """Raise :class:`NoFeatureMapsError` if the backbone has no spatial maps; ``user`` names
        what needs them (a method's class, say), for the message. Methods call it when built."""
        if not self.has_feature_maps:
            raise NoFeatureMapsError(
                f"{user} needs spatial feature maps, but this backbone gives none ({self._no_maps_reason}); "
                "use a CNN backbone (conv4, resnet12, resnet18, a timm/torchvision CNN, ...)")


class _Probe(nn.Module):
    """``forward`` = ``fn``, a function of ``owner``'s tensors, so ``functional_call`` can swap them."""

    def __init__(self, owner: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def feature_map_shape_for(backbone: object, user: str) -> tuple[int, int, int]:
    """(C, h, w) of ``backbone``'s feature maps, for a method (``user``, named in the messages) that compares
    maps.

    Raises:
        TypeError: ``backbone`` is not a :class:`Backbone` (no ``forward_features``).
        NoFeatureMapsError: the backbone has no spatial maps.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"{user} compares feature maps and needs a fewshot Backbone (forward_features, "
                        f"feature_map_shape), got {type(backbone).__name__}; build it with "
                        "fewshot.backbones.create_backbone")
    backbone.require_feature_maps(user)
    return backbone.feature_map_shape()
