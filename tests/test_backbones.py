"""Backbones: shapes, registry errors, DropBlock, functional calls, freezing policies, parameter groups."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from fewshot.backbones import (
    BackboneSpec,
    Conv4,
    DropBlock,
    ResNet12,
    apply_freeze,
    create_backbone,
    frozen_names,
    list_backbones,
)


@pytest.mark.parametrize(("name", "kwargs", "size", "dim"), [
    ("conv4", {}, 28, 64),
    ("conv4", {"in_channels": 3, "input_size": 84}, 84, 1600),
    ("conv4", {"hidden": 8, "input_size": (32, 48)}, (32, 48), 8 * 2 * 3),
    ("resnet12", {}, 16, 640),
    ("resnet12", {"in_channels": 1, "widths": (4, 8, 8, 12)}, 20, 12),
    ("resnet18", {}, 32, 512),
    ("resnet18", {"small_input": True, "in_channels": 1}, 8, 512),
    ("resnet50", {}, 32, 2048),
    ("resnet50", {"small_input": True}, 8, 2048),
])
def test_output_shape_and_feature_dim(name, kwargs, size, dim):
    torch.manual_seed(0)
    model = create_backbone(name, **kwargs)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, model.spec.in_channels, h, w)
    assert model.feature_dim == dim
    assert model(x).shape == (2, dim)
    assert isinstance(model.spec, BackboneSpec)
    assert all(isinstance(model.get_submodule(stage), nn.Module) for stage in model.stages)


def test_specs():
    assert Conv4().spec == BackboneSpec((28, 28), 1, (0.0,), (1.0,))
    with torch.device("meta"):  # no weights needed
        assert create_backbone("resnet18").spec.input_size == (224, 224)
        assert create_backbone("resnet18", small_input=True).spec.input_size == (84, 84)
        assert create_backbone("resnet50").spec.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="one value per channel"):
        BackboneSpec((28, 28), 3, (0.0,), (1.0,))


def test_conv4_rejects_other_input_size():
    with pytest.raises(ValueError, match="input_size"):
        Conv4(input_size=28)(torch.randn(1, 1, 84, 84))
    with pytest.raises(ValueError, match="too small"):
        Conv4(input_size=8)


def test_stem_only_changes_with_small_input():
    with torch.device("meta"):
        big, small = create_backbone("resnet18"), create_backbone("resnet18", small_input=True)
    assert big.conv1.weight.shape == (64, 3, 7, 7) and small.conv1.weight.shape == (64, 3, 3, 3)
    assert isinstance(big.maxpool, nn.MaxPool2d) and isinstance(small.maxpool, nn.Identity)
    assert [k for k in big.state_dict()] == [k for k in small.state_dict()]


def test_registry_errors():
    assert {"conv4", "resnet12", "resnet18", "resnet50"} <= set(list_backbones())
    with pytest.raises(ValueError, match=r"unknown backbone 'conv5'.*conv4.*resnet50"):
        create_backbone("conv5")
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("keras:resnet50")
    with pytest.raises(TypeError, match=r"hiden.*accepts: in_channels, hidden, input_size"):
        create_backbone("conv4", hiden=32)
    with pytest.raises(TypeError, match="model_name"):
        create_backbone("timm:resnet18", model_name="resnet50")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


@pytest.mark.parametrize(("name", "module"), [("timm:resnet18", "timm"), ("torchvision:resnet18", "torchvision")])
def test_interop_without_library_says_what_to_install(name, module):
    if _importable(module):
        pytest.skip(f"{module} imports here; this test covers the missing-library message")
    with pytest.raises(ImportError, match=rf"pip install 'fewshot\[{module}\]'"):
        create_backbone(name)


@pytest.mark.interop
@pytest.mark.parametrize(("name", "module"), [("timm:resnet18", "timm"), ("torchvision:resnet18", "torchvision")])
def test_interop_backbone_features(name, module):
    if not _importable(module):
        pytest.skip(f"{module} does not import with this torch (e.g. a CUDA torchvision on a CPU torch)")
    model = create_backbone(name).eval()
    assert model.feature_dim == 512
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert model.stages and all(s.startswith("model.") for s in model.stages)


def test_dropblock_only_in_training():
    torch.manual_seed(0)
    block = DropBlock(drop_rate=0.2, block_size=3)
    x = torch.ones(8, 4, 20, 20)
    block.eval()
    assert torch.equal(block(x), x)
    block.train()
    y = block(x)
    dropped = (y == 0).float().mean().item()
    assert 0.1 < dropped < 0.3
    assert torch.allclose(y.mean(), torch.tensor(1.0))  # survivors scaled up to keep the mean


def test_dropblock_drops_whole_blocks():
    torch.manual_seed(0)
    y = DropBlock(drop_rate=0.05, block_size=4).train()(torch.ones(1, 1, 40, 40))[0, 0]
    zero = (y == 0).float()
    # every dropped pixel lies in some fully dropped 4x4 square
    full = (nn.functional.avg_pool2d(zero[None, None], 4, stride=1) == 1).float()
    covered = nn.functional.max_pool2d(nn.functional.pad(full, (3, 3, 3, 3)), 4, stride=1)[0, 0]
    assert zero.sum() > 0 and torch.equal(covered * zero, zero)


def test_resnet12_dropblock_in_last_two_stages():
    model = ResNet12(widths=(4, 4, 4, 4), drop_rate=0.1)
    rates = [getattr(model, s)[0].dropblock.drop_rate for s in model.stages]
    assert rates == [0.0, 0.0, 0.1, 0.1]
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("name", "kwargs"), [("conv4", {"hidden": 8}), ("resnet12", {"widths": (4, 8, 8, 8)})])
def test_functional_call_matches_module(name, kwargs):
    """The MAML inner loop runs backbones through torch.func.functional_call."""
    torch.manual_seed(0)
    model = create_backbone(name, **kwargs)
    x = torch.randn(3, model.spec.in_channels, 28, 28)
    params = {k: v * 1.0 for k, v in model.named_parameters()}
    out = torch.func.functional_call(model, params, (x,))
    assert torch.allclose(out, model(x))
    grads = torch.autograd.grad(out.sum(), list(params.values()))
    assert all(g is not None and g.shape == p.shape for g, p in zip(grads, params.values(), strict=True))


class _WithHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Conv4(hidden=4)
        self.head = nn.Linear(4, 5)


def _bn(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_freeze_all_keeps_batchnorm_in_eval_mode():
    model = Conv4(hidden=4)
    frozen = apply_freeze(model, "all")
    assert frozen == [n for n, _ in model.named_parameters()]
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    before = [bn.running_mean.clone() for bn in _bn(model)]
    model(torch.randn(4, 1, 28, 28))
    assert all(not bn.training for bn in _bn(model))
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(before, _bn(model), strict=True))
    clone = copy.deepcopy(model).train()
    clone(torch.randn(4, 1, 28, 28))
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(before, _bn(clone), strict=True))


def test_freeze_none_undoes_freezing():
    model = Conv4(hidden=4)
    apply_freeze(model, "all")
    assert apply_freeze(model, "none") == []
    model.train()
    before = _bn(model)[0].running_mean.clone()
    model(torch.randn(4, 1, 28, 28))
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in _bn(model))
    assert not torch.equal(before, _bn(model)[0].running_mean)


def test_freeze_first_k_on_a_wrapped_backbone():
    model = _WithHead()
    frozen = apply_freeze(model, "first_k", 2)
    assert frozen == [n for n, _ in model.named_parameters() if n.startswith(("backbone.block1.", "backbone.block2."))]
    assert len(frozen) == 8
    model.train()
    model.backbone(torch.randn(2, 1, 28, 28))
    assert [bn.training for bn in _bn(model)] == [False, False, True, True]
    assert model.head.weight.requires_grad and model.backbone.block3[0].weight.requires_grad


def test_freeze_first_k_resnet_stem_is_two_stages():
    model = create_backbone("resnet18", small_input=True)
    frozen = apply_freeze(model, "first_k", 2)
    assert set(frozen) == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert not model.bn1.training and model.layer1[0].bn1.training


def test_freeze_all_but_head():
    model = _WithHead()
    apply_freeze(model, "all_but_head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="no module named"):
        apply_freeze(Conv4(), "all_but_head")


def test_freeze_bad_arguments():
    with pytest.raises(ValueError, match="unknown freeze policy"):
        apply_freeze(Conv4(), "most")
    with pytest.raises(ValueError, match=r"0 <= k <= 4"):
        apply_freeze(Conv4(), "first_k", 5)
    with pytest.raises(ValueError, match="only meaningful"):
        apply_freeze(Conv4(), "all", 2)
    with pytest.raises(ValueError, match="stages"):
        apply_freeze(nn.Linear(2, 2), "first_k", 1)


def test_frozen_names_changes_nothing_and_matches_apply_freeze():
    model = _WithHead()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    names = frozen_names(model, "first_k", 1)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert names == apply_freeze(model, "first_k", 1)
    assert names and all(not p.requires_grad for n, p in model.named_parameters() if n in names)


def test_finetune_last_adapts_exactly_the_last_stage():
    from fewshot.learners import FineTune

    backbone = create_backbone("conv4", hidden=4)
    learner = FineTune(backbone, finetune_backbone="last", steps=1)
    assert learner.tuned == [n for n, _ in backbone.named_parameters() if n.startswith("block4.")]
    assert FineTune(create_backbone("resnet18", small_input=True), finetune_backbone="last").tuned[0].startswith(
        "layer4.")


def test_a_backbone_registers_itself_by_name_and_names_are_unique():
    from fewshot.backbones import Backbone
    from fewshot.backbones.spec import default_spec

    class Pixels(Backbone, name="test-pixels"):
        def __init__(self, *, size: int = 4) -> None:
            super().__init__()
            self.feature_dim, self.stages, self.spec = size * size, [], default_spec(size, 1, imagenet=False)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def pool(self, maps: torch.Tensor) -> torch.Tensor:
            return maps.flatten(1)

    assert "test-pixels" in list_backbones()
    assert isinstance(create_backbone("test-pixels", size=2), Pixels)
    with pytest.raises(ValueError, match="taken"):
        type("Other", (Backbone,), {}, name="test-pixels")
