"""Pretrained weights and the input they were trained on, without timm or torchvision: a Hugging Face style model
folder (config.json + model.safetensors, timm's layout) loads with a report and sets the backbone's spec, which
feeds the data; bad input through the CLI (a checkpoint of another architecture, a pretrained input size the data
does not have, a timm backbone without timm) is one line and exit status 2."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_bad_input import last_line
from test_cli import TINY, dataset_args, fewshot, folders  # noqa: F401 (fixture)

from episodes import FewShotDataset
from fewshot.backbones import BackboneSpec, create_backbone, load_pretrained, normalise_for
from fewshot.backbones.weights import WeightsMismatchError


def model_folder(root: Path, state: dict[str, torch.Tensor], *, input_size: list[int], mean: list[float],
                 std: list[float], weights: str = "model.safetensors") -> Path:
    """A folder as timm's save_for_hf writes it: config.json (architecture, pretrained_cfg) and the weights."""
    root.mkdir(parents=True)
    config = {"architecture": "resnet18", "num_classes": 10, "num_features": 512, "global_pool": "avg",
              "pretrained_cfg": {"input_size": input_size, "mean": mean, "std": std, "classifier": "fc"}}
    (root / "config.json").write_text(json.dumps(config))
    if weights.endswith(".safetensors"):
        save_file(state, root / weights)
    else:
        torch.save(state, root / weights)
    return root


def imagenet_resnet18() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A ResNet-18 with random weights and batch-norm statistics, and its state dict with a 10-class head."""
    torch.manual_seed(0)
    source = create_backbone("resnet18")
    for name, tensor in source.state_dict().items():
        if name.endswith(("running_mean", "running_var", "bn1.weight", "bn2.weight")):
            tensor.uniform_(0.5, 1.5)
    state = {**source.state_dict(), "fc.weight": torch.randn(10, 512), "fc.bias": torch.randn(10)}
    return source.eval(), state


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_a_model_folder_loads_with_its_input_spec(tmp_path: Path, weights: str) -> None:
    source, state = imagenet_resnet18()
    folder = model_folder(tmp_path / "r18", state, input_size=[3, 64, 64], mean=[0.4, 0.5, 0.6],
                          std=[0.2, 0.25, 0.3], weights=weights)
    target = create_backbone("resnet18")
    assert not target.pretrained and target.spec.input_size == (224, 224)
    report = load_pretrained(target, folder)
    assert report.ok and report.source == str(folder / weights)
    assert set(report.loaded) == set(source.state_dict()) and set(report.dropped) == {"fc.weight", "fc.bias"}
    assert target.pretrained
    assert target.spec == BackboneSpec((64, 64), 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source(x))
    grey = create_backbone("resnet18", in_channels=1)  # the RGB stem summed, the RGB statistics averaged
    assert load_pretrained(grey, folder).adapted == ("conv1.weight",)
    assert grey.spec == BackboneSpec((64, 64), 1, (0.5,), (0.25,))
    images = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    data = normalise_for(FewShotDataset.from_tensors(images, torch.tensor([0, 0, 1, 1]), ["a", "b"], name="rgb"),
                         target.spec)
    assert (data.mean, data.std) == ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


def test_a_model_folder_reports_missing_and_unexpected_keys(tmp_path: Path) -> None:
    _, state = imagenet_resnet18()
    state = {k: v for k, v in state.items() if k != "layer4.1.bn2.running_var"} | {"extra.weight": torch.ones(3)}
    folder = model_folder(tmp_path / "r18", state, input_size=[3, 224, 224], mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(WeightsMismatchError) as info:
        load_pretrained(create_backbone("resnet18"), folder)
    message = str(info.value)
    assert "1 missing from the file: layer4.1.bn2.running_var" in message
    assert "1 unexpected in the file: extra.weight" in message
    assert message.splitlines()[-1].startswith(f"  {folder / 'model.safetensors'} does not fit ResNet18 (the file "
                                               "looks like resnet18 (in_channels=3, small_input=False))")
    report = load_pretrained(create_backbone("resnet18"), folder, strict=False)
    assert (report.missing, report.unexpected) == (("layer4.1.bn2.running_var",), ("extra.weight",))


def test_a_broken_model_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"is a folder without model\.safetensors or pytorch_model\.bin"):
        load_pretrained(create_backbone("conv4"), tmp_path)
    save_file(create_backbone("conv4").state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"pretrained_cfg": {"input_size": "big"}}')
    with pytest.raises(ValueError, match=r"config.json is not a readable model config \(ValueError"):
        load_pretrained(create_backbone("conv4"), tmp_path)


def train_args(folder: Path, run: Path, *extra: str) -> list[str]:
    return ["train", *dataset_args(folder), *TINY, "trainer.steps=1", *extra, f"hydra.run.dir={run}"]


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_one_line(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    weights = tmp_path / "r18.safetensors"
    save_file(create_backbone("resnet18", in_channels=1, small_input=True).state_dict(), weights)
    done = fewshot(*train_args(folders[0], tmp_path / "run", f"backbone_weights={weights}"), check=False)
    assert done.returncode == 2, done.stdout[-2000:]
    assert (f"{weights} does not fit Conv4 (the file looks like resnet18 (in_channels=1, small_input=True)); fix the "
            "backbone configuration") in last_line(done)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_pretrained_input_size_the_data_does_not_have_is_one_line(folders: tuple[Path, Path],  # noqa: F811
                                                                    tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = model_folder(tmp_path / "conv4", create_backbone("conv4", hidden=8).state_dict(), input_size=[1, 84, 84],
                          mean=[0.5], std=[0.25])
    done = fewshot(*train_args(folders[0], tmp_path / "run", f"backbone_weights={folder}"), check=False)
    assert done.returncode == 2, done.stdout[-2000:]
    assert ("the backbone's weights were trained on 1-channel (84, 84) images but source/train has 1-channel (28, 28) "
            "images; set dataset.channels=1 dataset.loader.image_size=84") in last_line(done)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_timm_backbone_without_timm_says_what_to_install(folders: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    try:
        importlib.import_module("timm")
    except Exception:
        pass
    else:
        pytest.skip("timm imports here; tests/test_interop.py covers timm backbones")
    args = [a for a in train_args(folders[0], tmp_path / "run", "backbone=timm_resnet18") if "backbone.hidden" not in a]
    done = fewshot(*args, check=False)
    assert done.returncode == 2, done.stdout[-2000:]
    assert "ImportError: the 'timm' backbones need timm importable" in last_line(done)
    assert "pip install 'fewshot[timm]'" in last_line(done)
