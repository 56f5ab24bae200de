"""The Backbone contract, checked on every backbone YAML option and on timm/torchvision models.

For each backbone: it is a ``Backbone``; ``forward_features`` gives 4-D maps of the declared
``feature_map_shape``; ``pool(maps)`` is ``forward(x)`` exactly (eval and training mode);
vectors are (N, feature_dim); ``stages`` name parameter-holding submodules in the order the
forward runs them; ``spec`` matches the config; in eval mode an image's vector does not depend
on the other images of its batch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from fewshot.backbones import Backbone, NoFeatureMapsError, TimmBackbone, TorchvisionBackbone, create_backbone
from fewshot.backbones.spec import as_size
from fewshot.learners.gradient.functional import NormPolicy, batch_stat_overrides

BACKBONE_CONFIGS = Path(__file__).resolve().parent.parent / "fewshot" / "configs" / "backbone"
BATCH = 3


def _require(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError
        pytest.skip(f"{module} does not import here ({type(err).__name__}: {err})")


def _library(name: str) -> str | None:
    """The library a backbone name needs (``timm:<model>`` -> timm), or None for a native one."""
    prefix, sep, _ = name.partition(":")
    return prefix if sep else None


def _from_yaml(option: str) -> Callable[[], tuple[Backbone, tuple[int, int]]]:
    """Compose ``train`` with ``backbone=<option>`` (default dataset: Omniglot, 1x28x28), check the
    spec against the composed keys, and test at the spec's input size (skipped where the library of a
    timm/torchvision YAML does not import)."""
    def build() -> tuple[Backbone, tuple[int, int]]:
        with initialize_config_module("fewshot.configs", version_base="1.3"):
            cfg = compose("train", overrides=[f"backbone={option}"])
        if _library(cfg.backbone.name):
            _require(_library(cfg.backbone.name))
        torch.manual_seed(0)
        backbone = instantiate(cfg.backbone)
        assert backbone.spec.in_channels == cfg.backbone.in_channels
        assert backbone.spec.input_size == as_size(cfg.backbone.input_size)
        return backbone, backbone.spec.input_size
    return build


def _from_library(name: str, module: str) -> Callable[[], tuple[Backbone, tuple[int, int]]]:
    """A timm/torchvision model at 64x64 (any size works for these CNNs); skips without the library."""
    def build() -> tuple[Backbone, tuple[int, int]]:
        _require(module)
        torch.manual_seed(0)
        backbone = create_backbone(name)
        assert backbone.spec.in_channels == 3
        return backbone, (64, 64)
    return build


CASES = {f"yaml:{p.stem}": _from_yaml(p.stem) for p in sorted(BACKBONE_CONFIGS.glob("*.yaml"))} | {
    "timm:resnet18": _from_library("timm:resnet18", "timm"),
    "timm:mobilenetv3_small_100": _from_library("timm:mobilenetv3_small_100", "timm"),  # head after pooling
    "timm:mambaout_femto": _from_library("timm:mambaout_femto", "timm"),  # NHWC forward_features
    "torchvision:resnet18": _from_library("torchvision:resnet18", "torchvision"),
    "torchvision:mobilenet_v3_small": _from_library("torchvision:mobilenet_v3_small", "torchvision"),
}


def _needs_library(case: str) -> bool:
    name = case if not case.startswith("yaml:") else str(OmegaConf.load(BACKBONE_CONFIGS / f"{case[5:]}.yaml").name)
    return _library(name) is not None


@pytest.fixture(scope="module", params=[pytest.param(c, marks=pytest.mark.interop) if _needs_library(c) else c
                                        for c in sorted(CASES)])
def case(request: pytest.FixtureRequest) -> tuple[Backbone, torch.Tensor]:
    """(backbone, (BATCH, in_channels, H, W) images)."""
    backbone, (height, width) = CASES[request.param]()
    generator = torch.Generator().manual_seed(1)
    return backbone, torch.randn(BATCH, backbone.spec.in_channels, height, width, generator=generator)


def test_every_backbone_yaml_is_a_case() -> None:
    assert sum(name.startswith("yaml:") for name in CASES) == len(list(BACKBONE_CONFIGS.glob("*.yaml"))) >= 4


def test_maps_have_the_declared_shape_and_pool_to_the_vectors(case: tuple[Backbone, torch.Tensor]) -> None:
    backbone, x = case
    assert isinstance(backbone, Backbone) and backbone.has_feature_maps
    backbone.eval()
    with torch.no_grad():
        maps = backbone.forward_features(x)
        vectors = backbone(x)
        assert maps.dim() == 4
        assert tuple(maps.shape) == (BATCH, *backbone.feature_map_shape(tuple(x.shape[-2:])))
        assert vectors.shape == (BATCH, backbone.feature_dim)
        assert torch.equal(backbone.pool(maps), vectors)


def test_pool_of_maps_is_forward_in_training_mode(case: tuple[Backbone, torch.Tensor]) -> None:
    backbone, x = case
    backbone.train()
    with torch.no_grad():  # the same seed, so dropout / DropBlock draw the same masks
        torch.manual_seed(2)
        vectors = backbone(x)
        torch.manual_seed(2)
        assert torch.equal(backbone.pool(backbone.forward_features(x)), vectors)


def test_stages_are_parameter_holding_submodules_in_forward_order(case: tuple[Backbone, torch.Tensor]) -> None:
    backbone, x = case
    assert backbone.stages and len(set(backbone.stages)) == len(backbone.stages)
    called: list[str] = []
    handles = []
    for name in backbone.stages:
        module = backbone.get_submodule(name)
        assert isinstance(module, nn.Module) and any(True for _ in module.parameters()), name
        handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: called.append(name)))
    try:
        with torch.no_grad():
            backbone.eval()(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    assert list(dict.fromkeys(called)) == backbone.stages


def test_eval_vectors_do_not_depend_on_the_rest_of_the_batch(case: tuple[Backbone, torch.Tensor]) -> None:
    backbone, x = case
    others = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    others[0] = x[0]
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(others)[0], backbone(x)[0])
        torch.testing.assert_close(backbone(x[:1])[0], backbone(x)[0])


class _Tokens(Backbone):
    """A stand-in for a token model (a ViT): vectors, no maps."""

    has_feature_maps = False
    _no_maps_reason = "its features are (N, tokens, D)"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)
        self.feature_dim, self.stages = 2, ["proj"]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.require_feature_maps("forward_features")
        raise AssertionError("unreachable")

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        self.require_feature_maps("pool")
        raise AssertionError("unreachable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def test_a_backbone_without_maps_says_so() -> None:
    backbone = _Tokens()
    for call in (lambda: backbone.forward_features(torch.zeros(1, 4, 8, 8)), backbone.feature_map_shape,
                 lambda: backbone.require_feature_maps("RelationNet")):
        with pytest.raises(NoFeatureMapsError, match=r"gives none \(its features are \(N, tokens, D\)\).*conv4"):
            call()
    assert backbone(torch.zeros(1, 4, 8, 8)).shape == (1, 2)
    with pytest.raises(TypeError, match="abstract"):
        type("Incomplete", (Backbone,), {})()


@pytest.mark.interop
def test_timm_token_model_has_no_maps() -> None:
    _require("timm")
    backbone = create_backbone("timm:vit_tiny_patch16_224").eval()
    assert not backbone.has_feature_maps
    with pytest.raises(NoFeatureMapsError, match="tokens"):
        backbone.forward_features(torch.zeros(1, 3, 224, 224))
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, backbone.feature_dim)


def test_feature_map_shape_changes_no_state() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("resnet12", widths=(4, 4, 4, 8), drop_rate=0.1).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert backbone.feature_map_shape(84) == (8, 5, 5)
    assert backbone.feature_map_shape((32, 48)) == (8, 2, 3)
    assert backbone.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_a_class_can_derive_from_a_backbone_and_an_abc_module(case: tuple[Backbone, torch.Tensor]) -> None:
    """higher's ``innerloop_ctx`` derives ``class MonkeyPatched(type(module), _MonkeyPatchBase)`` with
    ``_MonkeyPatchBase(ABC, nn.Module)``: that needs a consistent method resolution order."""
    from abc import ABC

    class PatchBase(ABC, nn.Module):  # higher's base, without higher
        pass

    backbone, _ = case
    patched = type("MonkeyPatched", (type(backbone), PatchBase), {})
    assert issubclass(patched, Backbone) and issubclass(patched, PatchBase)


class _BatchNormCalls(TorchFunctionMode):
    """Counts ``F.batch_norm`` calls, and those made inside the forward of a stock torch batch-norm layer."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.calls, self.inside_stock, self.depth = 0, 0, 0
        stock = [m for m in backbone.modules()
                 if isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward]
        self.handles = [h for m in stock for h in (
            m.register_forward_pre_hook(lambda *_: setattr(self, "depth", self.depth + 1)),
            m.register_forward_hook(lambda *_: setattr(self, "depth", self.depth - 1)))]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.batch_norm:
            self.calls += 1
            self.inside_stock += self.depth > 0
        return func(*args, **(kwargs or {}))


def test_batch_norm_runs_through_stock_layers_only_and_needs_no_mode(case: tuple[Backbone, torch.Tensor]) -> None:
    """MAML's task-by-task loop skips NormPolicy's torch-function mode where batch_stat_overrides vouches for a
    backbone: every class from torch.nn or fewshot.backbones. So a fewshot backbone may call batch norm only through
    stock torch layers (never F.batch_norm itself), and then the mode-free forward equals the policy's exactly."""
    backbone, x = case
    overrides = batch_stat_overrides(backbone)
    if not isinstance(backbone, (TimmBackbone, TorchvisionBackbone)):  # fewshot's own
        counter = _BatchNormCalls(backbone)
        try:
            with counter, torch.no_grad():
                backbone.eval()(x)
        finally:
            for handle in counter.handles:
                handle.remove()
        assert counter.calls == counter.inside_stock >= any(isinstance(m, _BatchNorm) for m in backbone.modules())
        assert overrides is not None
    if overrides is None:  # timm/torchvision classes: the policy's mode is kept
        return
    backbone.eval()
    with torch.no_grad(), NormPolicy(stats="batch", primitives=False):
        expected = backbone(x)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(torch.func.functional_call(backbone, overrides, (x,)), expected)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
