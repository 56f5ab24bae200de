"""Pretrained weights: safe loading, prefixes, torchvision layouts, mismatch reports, channel adaptation,
saving with metadata and rebuilding."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import fewshot.backbones.weights as weights_module
from fewshot.backbones import create_backbone, load_backbone, load_pretrained, save_backbone
from fewshot.backbones.weights import WeightsMismatchError

SMALL = {
    "conv4": {"hidden": 8},
    "resnet12": {"widths": (4, 8, 8, 16)},
    "resnet18": {"small_input": True},
    "resnet50": {"in_channels": 1},
}


def _trained_stats(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Give batch-norm layers non-default running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, model.spec.in_channels, size, size) * 2 + 0.5)
    return model.eval()


def torchvision_resnet_state(block: str, layers: tuple[int, ...], *, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """A state dict laid out as torchvision.models.resnet writes it (ImageNet checkpoints have no
    ``num_batches_tracked``), written out from the architecture of He et al. 2016, not from our model."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inp, k, k, generator=gen) * (2.0 / (inp * k * k)) ** 0.5

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=gen)

    expansion = 1 if block == "basic" else 4
    conv("conv1", 64, in_channels, 7)
    bn("bn1", 64)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if block == "basic":
                conv(f"{p}.conv1", planes, inplanes, 3), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, inplanes, 1), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if j == 0 and (i > 0 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1), bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    state["fc.weight"] = 0.01 * torch.randn(1000, 512 * expansion, generator=gen)
    state["fc.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("name", list(SMALL))
def test_round_trip_safetensors_and_pth(name, tmp_path):
    torch.manual_seed(0)
    model = _trained_stats(create_backbone(name, **SMALL[name]), 16)
    model.spec = replace(model.spec, mean=(0.3,) * model.spec.in_channels, std=(0.2,) * model.spec.in_channels)
    x = torch.randn(2, 1, 28, 28) if name == "conv4" else torch.randn(2, model.spec.in_channels, 16, 16)
    expected = model(x)

    rebuilt = load_backbone(save_backbone(model, tmp_path / f"{name}.safetensors", name=name, kwargs=SMALL[name]))
    assert type(rebuilt) is type(model) and rebuilt.spec == model.spec
    assert torch.equal(rebuilt.eval()(x), expected)

    torch.save(model.state_dict(), tmp_path / f"{name}.pth")
    fresh = create_backbone(name, **SMALL[name])
    report = load_pretrained(fresh, tmp_path / f"{name}.pth")
    assert report.ok and len(report.loaded) == len(model.state_dict())
    assert torch.equal(fresh.eval()(x), expected)
    assert sorted(os.listdir(tmp_path)) == [f"{name}.pth", f"{name}.safetensors"]  # no temp files left


@pytest.mark.parametrize(("name", "block", "layers"), [
    ("resnet18", "basic", (2, 2, 2, 2)),
    ("resnet50", "bottleneck", (3, 4, 6, 3)),
])
def test_torchvision_layout_loads_as_is(name, block, layers, tmp_path):
    state = torchvision_resnet_state(block, layers)
    torch.save(state, tmp_path / "imagenet.pth")
    model = create_backbone(name)
    report = load_pretrained(model, tmp_path / "imagenet.pth")
    assert report.missing == () and report.unexpected == () and report.mismatched == ()
    assert report.dropped == ("fc.weight", "fc.bias")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, model.feature_dim)


def test_nested_and_prefixed_checkpoints(tmp_path):
    torch.manual_seed(0)
    source = create_backbone("conv4", hidden=4)
    checkpoint = {
        "epoch": 3,
        "state_dict": {**{f"module.backbone.{k}": v for k, v in source.state_dict().items()},
                       "module.head.weight": torch.zeros(5, 4)},
    }
    torch.save(checkpoint, tmp_path / "learner.pt")
    target = create_backbone("conv4", hidden=4)
    report = load_pretrained(target, tmp_path / "learner.pt")
    assert report.stripped_prefix == "module.backbone."
    assert report.dropped == ("module.head.weight",)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))


def test_mismatched_conv4_width_is_reported(tmp_path):
    save_file(create_backbone("conv4", hidden=32).state_dict(), tmp_path / "c32.safetensors")
    model = create_backbone("conv4", hidden=64)
    before = model.block1[0].weight.clone()
    with pytest.raises(WeightsMismatchError) as info:
        load_pretrained(model, tmp_path / "c32.safetensors")
    message = str(info.value)
    assert "block1.0.weight: file [32, 1, 3, 3] vs model [64, 1, 3, 3]" in message
    assert "conv4 (in_channels=1, hidden=32)" in message
    assert torch.equal(model.block1[0].weight, before)  # nothing loaded on failure


def test_resnet18_into_resnet50_is_reported(tmp_path):
    torch.save(torchvision_resnet_state("basic", (2, 2, 2, 2)), tmp_path / "r18.pth")
    with pytest.raises(WeightsMismatchError) as info:
        load_pretrained(create_backbone("resnet50"), tmp_path / "r18.pth")
    message = str(info.value)
    assert "missing from the file" in message and "layer1.0.conv3.weight" in message
    assert "layer1.0.conv1.weight: file [64, 64, 3, 3] vs model [64, 64, 1, 1]" in message
    assert "resnet18 (in_channels=3, small_input=False)" in message and "ResNet50" in message


def test_non_strict_loads_what_fits(tmp_path, caplog):
    source = create_backbone("conv4", hidden=8)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("block4.")}
    state["block1.0.weight"] = torch.zeros(8, 1, 5, 5)
    torch.save(state, tmp_path / "partial.pth")
    target = create_backbone("conv4", hidden=8)
    report = load_pretrained(target, tmp_path / "partial.pth", strict=False)
    assert not report.ok and report.mismatched == (("block1.0.weight", (8, 1, 5, 5), (8, 1, 3, 3)),)
    assert {k.split(".")[0] for k in report.missing} == {"block4"}
    assert torch.equal(target.block2[0].weight, source.block2[0].weight)
    assert "partial load" in caplog.text


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"weight": torch.zeros(1), "x": _Payload(str(marker))}, f, protocol=2)
    with open(tmp_path / "raw.pkl", "rb") as f:  # the payload is real: plain pickle runs it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()

    torch.save({"conv.weight": torch.zeros(1), "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    for name in ("evil.pth", "raw.pkl"):
        with pytest.raises(ValueError, match="refusing to load"):
            load_pretrained(create_backbone("conv4", hidden=4), tmp_path / name)
    assert not marker.exists()


def test_files_without_tensors_or_missing(tmp_path):
    torch.save({"epoch": 1, "config": {"lr": 0.1}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no state dict of tensors"):
        load_pretrained(create_backbone("conv4"), tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_pretrained(create_backbone("conv4"), tmp_path / "absent.pt")


@pytest.mark.parametrize(("name", "size"), [("conv4", 28), ("resnet18", 8)])
def test_channel_adaptation(name, size, tmp_path):
    """3 -> 1 channels: grey x gives what [x, x, x] gave; 1 -> 3: [x, x, x] gives what x gave."""
    torch.manual_seed(0)
    kwargs = SMALL[name]
    rgb = _trained_stats(create_backbone(name, in_channels=3, **kwargs), size)
    save_file(rgb.state_dict(), tmp_path / "rgb.safetensors")
    grey = create_backbone(name, in_channels=1, **kwargs)
    report = load_pretrained(grey, tmp_path / "rgb.safetensors")
    first = "block1.0.weight" if name == "conv4" else "conv1.weight"
    assert report.adapted == (first,)
    x = torch.randn(2, 1, size, size)
    assert torch.allclose(grey.eval()(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)

    save_file(grey.state_dict(), tmp_path / "grey.safetensors")
    back = create_backbone(name, in_channels=3, **kwargs)
    load_pretrained(back, tmp_path / "grey.safetensors")
    assert torch.allclose(back.eval()(x.repeat(1, 3, 1, 1)), grey(x), atol=1e-5)

    with pytest.raises(WeightsMismatchError, match=first):
        load_pretrained(create_backbone(name, in_channels=1, **kwargs), tmp_path / "rgb.safetensors",
                        in_channels_adapt=False)


def test_save_backbone_validates_and_leaves_nothing_behind(tmp_path, monkeypatch):
    model = create_backbone("conv4", hidden=8)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_backbone(model, tmp_path / "m.pth", name="conv4", kwargs={"hidden": 8})
    with pytest.raises(ValueError, match="does not match"):
        save_backbone(model, tmp_path / "m.safetensors", name="conv4", kwargs={"hidden": 16})
    with pytest.raises(ValueError, match="JSON"):
        save_backbone(model, tmp_path / "m.safetensors", name="conv4", kwargs={"hidden": object()})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(weights_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_backbone(model, tmp_path / "m.safetensors", name="conv4", kwargs={"hidden": 8})
    assert os.listdir(tmp_path) == []


def test_load_backbone_needs_metadata(tmp_path):
    save_file(create_backbone("conv4").state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not written by save_backbone"):
        load_backbone(tmp_path / "plain.safetensors")
    torch.save(create_backbone("conv4").state_dict(), tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_backbone(tmp_path / "plain.pth")
