"""The real timm and torchvision (run by .ci/interop in a second environment: torch 2.14.1, torchvision 0.29.1,
timm; skipped where they do not import): their backbones train with ProtoNet; state dicts saved by the libraries
load into the native ResNet-18/50 and into the wrappers with the same features; a timm model folder loads with its
pretrained config, which reaches the data; bad model names and input sizes through the CLI are one line, exit 2.
The backbone contract over timm/torchvision models and the timm YAMLs is in test_backbone_contract.py and
test_configs.py (marked ``interop`` too)."""

from __future__ import annotations

import copy
import importlib
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file
from test_bad_input import last_line
from test_cli import dataset_args, fewshot, make_folder
from torch import nn

from episodes import EpisodeSampler, FewShotDataset
from fewshot.backbones import BackboneSpec, create_backbone, load_pretrained, normalise_for
from fewshot.backbones.weights import WeightsMismatchError
from fewshot.learners import OuterOptimizer, ProtoNet
from fewshot.training.meta_train import TrainSettings, meta_train

pytestmark = pytest.mark.interop


def library(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as err:  # a torchvision built for another torch fails with RuntimeError/OSError
        pytest.skip(f"{name} does not import here ({type(err).__name__}: {err}); .ci/interop installs it")


def synthetic_rgb(classes: int = 5, per_class: int = 6, size: int = 32) -> FewShotDataset:
    """Close class templates under strong noise, so that a random network does not separate them at once."""
    g = torch.Generator().manual_seed(0)
    templates = 128 + torch.randint(-8, 9, (classes, 3, size, size), generator=g)
    noise = torch.randint(-60, 61, (classes * per_class, 3, size, size), generator=g)
    images = (templates.repeat_interleave(per_class, 0) + noise).clamp(0, 255).to(torch.uint8)
    return FewShotDataset.from_tensors(images, torch.arange(classes).repeat_interleave(per_class),
                                       [f"c{i}" for i in range(classes)], name="rgb", mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("name", ["timm:resnet18", "torchvision:resnet18", "timm:convnext_atto"])
def test_library_backbones_meta_train_with_protonet(name: str) -> None:
    library(name.partition(":")[0])
    torch.manual_seed(0)
    learner = ProtoNet(create_backbone(name))
    learner.configure_optimizer(OuterOptimizer(name="adam", lr=1e-3))
    before = {k: p.detach().clone() for k, p in learner.named_parameters()}
    sampler = EpisodeSampler(synthetic_rgb(), n_way=3, n_shot=1, n_query=2, seed=0)
    result = meta_train(learner, sampler, settings=TrainSettings(steps=3, meta_batch=2, log_every=1), progress=False)
    assert [row["step"] for row in result.history] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) and row["grad_norm"] > 0 for row in result.history)
    unchanged = [k for k, p in learner.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged  # the gradient reaches every stage, through the feature maps and the pooling


def randomised(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with random batch-norm statistics and affine weights (not the identity of a new
    model), so that loading them wrongly changes the features."""
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
            module.bias.data.copy_(torch.rand(module.bias.shape, generator=g) - 0.5)
    return model.eval()


def library_resnet(source: str, arch: str) -> tuple[nn.Module, nn.Module]:
    """(the library's ImageNet classifier with random weights, a copy with the identity as its classifier)."""
    torch.manual_seed(0)
    if source == "torchvision":
        model = randomised(library("torchvision").models.get_model(arch))
        features = copy.deepcopy(model)
        features.fc = nn.Identity()
    else:
        model = randomised(library("timm").create_model(arch))
        features = copy.deepcopy(model)
        features.reset_classifier(0)
    return model, features


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_library_state_dicts_load_into_the_native_resnets_with_the_same_features(tmp_path: Path, source: str,
                                                                                 arch: str) -> None:
    model, features = library_resnet(source, arch)
    state = model.state_dict()
    torch.save(state, tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = features(x)
    for file in ("weights.pth", "weights.safetensors"):
        for target in (arch, f"{source}:{arch}"):  # the native ResNet, and the wrapper of the same library
            backbone = create_backbone(target)
            report = load_pretrained(backbone, tmp_path / file)
            assert report.ok and set(report.dropped) == {"fc.weight", "fc.bias"}, (target, str(report))
            with torch.no_grad():
                torch.testing.assert_close(backbone.eval()(x), reference, atol=1e-5, rtol=0)


def test_a_checkpoint_of_another_architecture_is_refused_by_the_wrapper(tmp_path: Path) -> None:
    model, _ = library_resnet("torchvision", "resnet50")
    torch.save(model.state_dict(), tmp_path / "r50.pth")
    with pytest.raises(WeightsMismatchError, match=r"does not fit TimmBackbone \(the file looks like resnet50"):
        load_pretrained(create_backbone("timm:resnet18"), tmp_path / "r50.pth")


def timm_folder(root: Path, *, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Path:
    """A random timm resnet18 saved by timm's own save_for_hf (config.json + model.safetensors), its pretrained
    config set to ``input_size``, ``mean`` and ``std``."""
    timm = library("timm")
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = randomised(timm.create_model("resnet18", num_classes=10))
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, input_size, input_size), "mean": mean,
                           "std": std}
    save_for_hf(model, str(root), safe_serialization=True)
    return root


def test_a_timm_model_folder_loads_with_its_pretrained_config(tmp_path: Path) -> None:
    folder = timm_folder(tmp_path / "hf", input_size=48, mean=(0.3, 0.4, 0.5), std=(0.2, 0.3, 0.4))
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["mean"] == [0.3, 0.4, 0.5]
    for name in ("resnet18", "timm:resnet18"):
        backbone = create_backbone(name)
        report = load_pretrained(backbone, folder)
        assert report.ok and len(report.loaded) == len(create_backbone("resnet18").state_dict())
        assert backbone.pretrained and backbone.spec == BackboneSpec((48, 48), 3, (0.3, 0.4, 0.5), (0.2, 0.3, 0.4))
    data = normalise_for(synthetic_rgb(size=48), backbone.spec)
    assert (data.mean, data.std) == ((0.3, 0.4, 0.5), (0.2, 0.3, 0.4))


def test_a_timm_pretrained_config_is_the_backbone_spec() -> None:
    library("timm")
    vit = create_backbone("timm:vit_tiny_patch16_224", input_size=32)  # a fixed-size model built for 32x32
    assert vit.spec == BackboneSpec((32, 32), 3, (0.5,) * 3, (0.5,) * 3) and not vit.pretrained
    with torch.no_grad():
        assert vit.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 192)
    grey = create_backbone("timm:resnet18", in_channels=1)  # the size of the pretrained config; statistics averaged
    assert grey.spec.input_size == (224, 224)
    torch.testing.assert_close(grey.spec.mean, (sum((0.485, 0.456, 0.406)) / 3,))


def test_unknown_model_names_name_the_closest() -> None:
    library("timm")
    with pytest.raises(ValueError, match=r"timm has no model 'resnet181'; did you mean resnet18"):
        create_backbone("timm:resnet181")
    library("torchvision")
    with pytest.raises(ValueError, match=r"torchvision has no model 'resnet51'; did you mean resnet50"):
        create_backbone("torchvision:resnet51")


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """dataset overrides for 12 classes of 32x32 images read as RGB (ImageNet statistics), 3-way tiny episodes."""
    root = make_folder(tmp_path_factory.mktemp("images") / "rgb", 12, size=32, seed=0)
    return [*dataset_args(root)[:2], "dataset.channels=3", "dataset.loader.image_size=32",
            "dataset.loader.fractions={train:0.5,val:0.25,test:0.25}", "episode.n_way=3", "episode.train_n_way=3",
            "episode.n_query=3", "episode.train_n_query=3", "evaluation.episodes=4", "evaluation.n_query=3",
            "evaluation.batch_size=4", "progress=false"]


def test_the_cli_trains_a_timm_yaml_from_a_model_folder_and_refuses_bad_input(rgb_folder: list[str],
                                                                              tmp_path: Path) -> None:
    library("timm")
    matching = timm_folder(tmp_path / "hf32", input_size=32, mean=(0.3, 0.4, 0.5), std=(0.2, 0.3, 0.4))
    run = tmp_path / "run"
    fewshot("train", *rgb_folder, "backbone=timm_resnet18", f"backbone_weights={matching}", "trainer.steps=2",
            f"hydra.run.dir={run}")
    log = (run / "cli.log").read_text()
    assert f"weights {matching / 'model.safetensors'}: 120 tensors fit the model" in log
    assert (run / "results.json").is_file()

    too_big = timm_folder(tmp_path / "hf224", input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    done = fewshot("train", *rgb_folder, "backbone=timm_resnet18", f"backbone_weights={too_big}",
                   f"hydra.run.dir={tmp_path / 'big'}", check=False)
    assert done.returncode == 2
    assert ("the backbone's weights were trained on 3-channel (224, 224) images but rgb/train has 3-channel (32, 32) "
            "images; set dataset.channels=3 dataset.loader.image_size=224") in last_line(done)
    assert not (tmp_path / "big").exists()

    done = fewshot("train", *rgb_folder, "backbone=timm_resnet18", "backbone.name=timm:resnet181",
                   f"hydra.run.dir={tmp_path / 'unknown'}", check=False)
    assert done.returncode == 2
    assert "ValueError: timm has no model 'resnet181'; did you mean resnet18" in last_line(done)
    assert not (tmp_path / "unknown").exists()
