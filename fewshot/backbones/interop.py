"""Backbones from timm and torchvision behind the :class:`~fewshot.backbones.base.Backbone` contract.

Neither library is a dependency of fewshot: they are imported when one of these classes is
built, and a missing or broken install (e.g. a torchvision built for another torch) raises an
``ImportError`` saying what to install. Both wrappers' ``forward`` is the library model's own
forward; ``forward_features``/``pool`` split that same computation where the model has spatial
maps, and raise :class:`~fewshot.backbones.base.NoFeatureMapsError` where it has none.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import fx, nn

from fewshot.backbones.base import Backbone, NoFeatureMapsError
from fewshot.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, as_size, per_channel


def _import(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError too
        raise ImportError(
            f"the {module.split('.')[0]!r} backbones need {module} importable with your torch "
            f"({type(err).__name__}: {err}); install it with `pip install 'fewshot[{extra}]'` "
            f"(a build matching torch {torch.__version__})"
        ) from err


def _check_name(library: str, model_name: str, known: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the closest of ``known`` when ``model_name`` is not one of them."""
    if model_name in known:
        return
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"{library} has no model {model_name!r}; {hint}list them with "
                     f"{library}.{'list_models' if library == 'timm' else 'models.list_models'}()")


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _timm_stages(model: nn.Module) -> list[str]:
    """The top-level children holding parameters, in order, with the container that timm's
    ``feature_info`` points into (ConvNeXt ``stages``, ViT/EfficientNet ``blocks``) split into its
    children; e.g. resnet18: conv1, bn1, layer1, ..., layer4 (the names of the native ResNet)."""
    info = getattr(model, "feature_info", None) or []
    containers = {str(entry["module"]).split(".")[0] for entry in info
                  if isinstance(entry, dict) and "." in str(entry.get("module", ""))}
    stages = []
    for name, child in model.named_children():
        if name in containers:
            stages += [f"{name}.{sub}" for sub, grandchild in child.named_children() if _has_parameters(grandchild)]
        elif _has_parameters(child):
            stages.append(name)
    return stages


class TimmBackbone(Backbone):
    """Any timm model as a feature extractor (its classifier removed with ``num_classes=0``).

    Maps are ``model.forward_features(x)`` when that is 4-D: (N, C, h, w), or (N, h, w, C)
    for models whose ``output_fmt`` is ``"NHWC"`` (Swin, MambaOut, ...), which are permuted to
    (N, C, h, w); :meth:`pool` is ``model.forward_head(maps, pre_logits=True)`` (permuted back).
    Token models (ViT, DeiT, ...: (N, tokens, D)) have no maps: ``has_feature_maps`` is False,
    ``forward_features`` and ``pool`` raise :class:`NoFeatureMapsError`, ``forward`` works.

    The ``spec`` is timm's pretrained config of the model (``pretrained_cfg``: mean, std, input
    size), with ``input_size`` in place of its size when given; with ``pretrained`` the app feeds
    the data that way (:func:`~fewshot.backbones.spec.normalise_for`, which refuses images of
    another size than the spec's).

    Args:
        model_name: a timm model name, e.g. ``"resnet18"`` or ``"vit_small_patch16_224"``
            (``hf-hub:<repo>`` and other timm schemes are passed on unchecked).
        pretrained: download timm's pretrained weights.
        in_channels: input channels (timm adapts the stem weights itself).
        input_size: H (= W) or (H, W) the data is fed at; ``None``: the pretrained config's. A model
            built for one size only (``fixed_input_size``: a ViT) is built for this size.
    """

    def __init__(self, *, model_name: str, pretrained: bool = False, in_channels: int = 3,
                 input_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        timm = _import("timm", "timm")
        if ":" not in model_name:
            _check_name("timm", model_name.partition(".")[0], timm.list_models())
        size = None if input_size is None else as_size(input_size)
        extra = {}
        if size is not None and getattr(timm.models.get_pretrained_cfg(model_name), "fixed_input_size", False):
            extra["img_size"] = size
        self.model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels,
                                       **extra)
        self.pretrained = pretrained
        # head_hidden_size (timm >= 1.0): the pre-logits width when a head layer follows num_features.
        self.feature_dim: int = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)
        cfg = dict(getattr(self.model, "pretrained_cfg", None) or {})
        height, width = size or tuple(cfg.get("input_size", (in_channels, 224, 224)))[-2:]
        self.spec: BackboneSpec = BackboneSpec(
            (int(height), int(width)), in_channels,
            per_channel(tuple(cfg.get("mean", IMAGENET_MEAN)), in_channels),
            per_channel(tuple(cfg.get("std", IMAGENET_STD)), in_channels),
        )
        self.stages: list[str] = [f"model.{name}" for name in _timm_stages(self.model)]
        self._channels_last: bool = str(getattr(self.model, "output_fmt", "NCHW")) == "NHWC"
        shape = self._meta_output_shape(self.model.forward_features)
        if len(shape) != 4:
            self.has_feature_maps = False
            self._no_maps_reason = (f"timm {model_name!r} forward_features gives {len(shape)}-D output "
                                    f"{tuple(shape)}, tokens rather than (N, C, h, w) maps")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images -> (N, C, h, w) maps of ``model.forward_features``."""
        self.require_feature_maps("forward_features")
        maps = self.model.forward_features(x)
        return maps.permute(0, 3, 1, 2) if self._channels_last else maps

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps -> (N, feature_dim) by the model's own head, without a classifier."""
        self.require_feature_maps("pool")
        return self.model.forward_head(maps.permute(0, 2, 3, 1) if self._channels_last else maps, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) float images -> (N, feature_dim) pooled features."""
        return self.model(x)


class TorchvisionBackbone(Backbone):
    """A torchvision classification model with its last linear classifier replaced by the identity.

    Maps are the input of the last global average pooling (an ``AdaptiveAvgPool2d`` to 1x1,
    ``F.adaptive_avg_pool2d(x, 1)`` or ``x.mean([2, 3])``) in the model's forward traced by
    ``torch.fx``; :meth:`pool` runs the rest of that traced forward (pooling, flatten, head), so
    ``pool(forward_features(x))`` is ``forward(x)`` op for op. This covers ResNet, ResNeXt,
    Wide ResNet, RegNet, EfficientNet, MobileNet, MNASNet, ShuffleNet, DenseNet and ConvNeXt.
    ``has_feature_maps`` is False for models with no such pool (ViT: a class token; VGG,
    AlexNet: 7x7 / 6x6 pools) or whose traced forward depends on the training mode outside its
    layers (Swin, MaxViT, GoogLeNet, Inception; timm's Swin does give maps).

    Args:
        model_name: a name for ``torchvision.models.get_model``, e.g. ``"resnet18"``.
        weights: a weights name for ``torchvision.models.get_weight``, e.g.
            ``"ResNet18_Weights.IMAGENET1K_V1"``; ``None`` for random initialisation.
    """

    def __init__(self, *, model_name: str, weights: str | None = None) -> None:
        super().__init__()
        models = _import("torchvision.models", "torchvision")
        _check_name("torchvision", model_name.lower(), models.list_models())  # get_model ignores case
        self.model = models.get_model(model_name, weights=weights)
        self.pretrained = weights is not None
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
                                  if name != head_name and _has_parameters(child)]
        # Graphs, not modules: they run on self.model's live submodules, so state_dict, .to() and
        # functional_call see one set of tensors.
        self._graphs: tuple[fx.Graph, fx.Graph] | None = None
        try:
            self._graphs = _split_at_global_pool(self.model)
        except NoFeatureMapsError as err:
            self.has_feature_maps = False
            self._no_maps_reason = f"torchvision {model_name!r}: {err}"

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images -> (N, C, h, w) maps, the input of the global pooling."""
        self.require_feature_maps("forward_features")
        return fx.Interpreter(self.model, graph=self._graphs[0]).run(x)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps -> (N, feature_dim): the model's forward from its global pooling on."""
        self.require_feature_maps("pool")
        return fx.Interpreter(self.model, graph=self._graphs[1]).run(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float images -> (N, feature_dim) features."""
        return self.model(x)


class _LeafTracer(fx.Tracer):
    """Traces containers only: a module without children stays one call, run at call time, so
    its training-mode behaviour (dropout, stochastic depth, batch norm) is not frozen into the graph."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(m.children(), None) is None or super().is_leaf_module(m, module_qualified_name)


def _is_global_average_pool(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1), [1, 1])
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op, node.target) in (("call_method", "mean"), ("call_function", torch.mean)):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1])
    return False


def _split_at_global_pool(model: nn.Module) -> tuple[fx.Graph, fx.Graph]:
    """(graph: images -> input of the global pooling, graph: that input -> the model's output).

    Raises:
        NoFeatureMapsError: the forward does not trace, depends on the training mode outside
            its layers, has no global average pooling, or uses earlier values after the last one.
    """
    training = model.training
    try:
        graphs = [_LeafTracer().trace(model.train(mode)) for mode in (True, False)]
    except Exception as err:  # torch.fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise NoFeatureMapsError(f"torch.fx cannot trace its forward ({type(err).__name__}: {err})") from err
    finally:
        model.train(training)
    if str(graphs[0]) != str(graphs[1]):
        raise NoFeatureMapsError("its forward differs between training and eval mode")
    graph = graphs[0]
    pools = [node for node in graph.nodes if _is_global_average_pool(node, model)]
    if not pools:
        raise NoFeatureMapsError("its forward has no global average pooling to 1x1")
    maps_node = pools[-1].args[0]  # the last one: earlier ones sit in blocks (squeeze-excitation)
    features, env = fx.Graph(owning_module=model), {}
    for node in graph.nodes:
        env[node] = features.node_copy(node, env.__getitem__)
        if node is maps_node:
            break
    features.output(env[maps_node])
    features.eliminate_dead_code()
    head = fx.Graph(owning_module=model)
    env = {maps_node: head.placeholder("maps")}
    for node in graph.nodes:
        if node is not maps_node:
            env[node] = head.node_copy(node, env.__getitem__)
    head.eliminate_dead_code(is_impure_node=lambda node: node.op != "placeholder" and node.is_impure())
    if any(node.op == "placeholder" for node in head.nodes if node is not env[maps_node]):
        raise NoFeatureMapsError("the part of its forward after the global pooling uses more than the pooled maps")
    return features, head
