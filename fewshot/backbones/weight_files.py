"""Reading pretrained weights safely: a safetensors or PyTorch file, or a Hugging Face style model folder
(``config.json`` beside ``model.safetensors`` or ``pytorch_model.bin``, as timm's ``save_for_hf`` /
``push_to_hf_hub`` write them and a download from the Hub stores them); and recognising the architecture a state
dict was saved from.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)`` only, so a checkpoint cannot run code. A
folder's ``config.json`` with timm's ``pretrained_cfg`` (``input_size``, ``mean``, ``std``) says the input the
weights were trained on: :func:`~fewshot.backbones.weights.load_pretrained` sets the backbone's ``spec`` to it, and
the app feeds the data that way (:func:`~fewshot.backbones.spec.normalise_for`).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from fewshot.backbones.spec import BackboneSpec, per_channel

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "backbone", "net", "params")
#: Metadata keys of a backbone file written by :func:`~fewshot.backbones.weights.save_backbone`.
META_NAME, META_KWARGS, META_SPEC = "fewshot.backbone", "fewshot.kwargs", "fewshot.spec"

#: The weights files of a model folder, in the order they are looked for.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class FolderConfig:
    """What a model folder's ``config.json`` says about its weights (all None without one).

    Attributes:
        architecture: the model they were saved from (timm's ``architecture``, or the first of ``architectures``).
        input_size: (H, W) of the images they were trained on.
        mean, std: the per-channel normalisation of those images.
    """

    architecture: str | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def spec(self, in_channels: int) -> BackboneSpec | None:
        """The input the weights were trained on, for a model taking ``in_channels`` channels (RGB statistics
        averaged for grey input); None unless the config gives the size, the mean and the std."""
        if self.input_size is None or self.mean is None or self.std is None:
            return None
        return BackboneSpec(self.input_size, in_channels, per_channel(self.mean, in_channels),
                            per_channel(self.std, in_channels))


def read_folder(path: Path) -> tuple[Path, FolderConfig]:
    """(the weights file of the model folder ``path``, what its ``config.json`` says).

    Raises:
        FileNotFoundError: the folder holds none of :data:`WEIGHT_FILES`.
        ValueError: its ``config.json`` is not JSON, or its ``pretrained_cfg`` has malformed fields.
    """
    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{path} is a folder without {' or '.join(WEIGHT_FILES)}; pass a weights file or a "
                                "Hugging Face style model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        return weights, FolderConfig()
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        pretrained = config.get("pretrained_cfg") or {}
        size, mean, std = pretrained.get("input_size"), pretrained.get("mean"), pretrained.get("std")
        return weights, FolderConfig(
            architecture=config.get("architecture") or (config.get("architectures") or [None])[0],
            input_size=None if size is None else (int(size[-2]), int(size[-1])),
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{config_file} is not a readable model config ({type(err).__name__}: {err}); fix it, or "
                         "remove it to load the weights without their input size and normalisation") from err


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors or PyTorch file (unwrapping ``{"state_dict": ...}`` and
    similar nesting) and the safetensors metadata (empty for PyTorch files).

    Raises:
        FileNotFoundError: no such file. ValueError: the file holds no tensors, or a PyTorch
        pickle holds arbitrary Python objects (refused: loading it could run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(str(path)), metadata
        except SafetensorError as err:
            raise ValueError(f"{path} is a damaged safetensors file: {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = (str(err).splitlines() or [""])[0]
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint (torch.load with weights_only=True "
            f"rejected it: {reason}). Loading it could run arbitrary code. If you trust its source, re-save "
            "just the state dict (torch.save(model.state_dict(), ...)) or convert it to safetensors."
        ) from err
    except Exception as err:  # torch raises RuntimeError/EOFError/... for truncated or foreign files
        raise ValueError(f"{path} cannot be read as weights ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "it is truncated or not a safetensors/PyTorch weights file") from err
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} holds no state dict of tensors (found {found}); expected a state dict, "
                         f"possibly under one of the keys {list(_NESTED_KEYS)}")
    return tensors, {}


def guess_architecture(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str | None:
    """A description of the backbone a state dict (prefixes already stripped) was saved from."""
    if metadata and META_NAME in metadata:
        return f"{metadata[META_NAME]} with {metadata.get(META_KWARGS, '{}')} (saved by fewshot)"
    if "block1.0.weight" in state:
        w = state["block1.0.weight"]
        return f"conv4 (in_channels={w.shape[1]}, hidden={w.shape[0]})"
    if "layer1.0.conv1.weight" not in state:
        return None
    if "conv1.weight" not in state:  # no stem convolution: ResNet-12
        widths = tuple(state[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)
                       if f"layer{i}.0.conv1.weight" in state)
        return f"resnet12 (in_channels={state['layer1.0.conv1.weight'].shape[1]}, widths={widths})"
    in_channels = state["conv1.weight"].shape[1]
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    known = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34", (True, (3, 4, 6, 3)): "resnet50",
             (True, (3, 4, 23, 3)): "resnet101", (True, (3, 8, 36, 3)): "resnet152"}
    name = known.get((bottleneck, blocks), f"a ResNet with {'bottleneck' if bottleneck else 'basic'} blocks {blocks}")
    small = state["conv1.weight"].shape[-1] == 3
    return f"{name} (in_channels={in_channels}, small_input={small})"
