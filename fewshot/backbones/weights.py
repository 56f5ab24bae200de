"""Pretrained weights: load any common checkpoint layout safely, save a backbone with its recipe.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)`` only, so a checkpoint
cannot run code. :func:`save_backbone` writes safetensors with the backbone name, constructor
keywords and input spec (size, mean, std) as metadata; :func:`load_backbone` rebuilds from it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from episodes.files import atomic_write
from fewshot.backbones.base import Backbone
from fewshot.backbones.registry import create_backbone
from fewshot.backbones.spec import BackboneSpec
from fewshot.backbones.weight_files import (
    META_KWARGS,
    META_NAME,
    META_SPEC,
    FolderConfig,
    guess_architecture,
    read_checkpoint,
    read_folder,
)

logger = logging.getLogger(__name__)

_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model; the message is the :class:`LoadReport`."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did with each key of a checkpoint.

    Attributes:
        source: the file read.
        loaded: model keys filled from the file.
        missing: model keys the file lacks (BatchNorm ``num_batches_tracked`` is not counted).
        unexpected: file keys the model does not have (classifier heads excluded).
        mismatched: (key, file shape, model shape) for keys present in both with different shapes.
        dropped: file keys deliberately ignored: a classifier head (``fc.*``, ``classifier.*``,
            ...) and keys outside the prefix that was stripped (e.g. a learner's other modules).
        adapted: first-conv weights converted between 3-channel and 1-channel input.
        stripped_prefix: the prefix removed from file keys (``"module.backbone."``, ...), or ``""``.
        guess: the backbone the file seems to belong to, when recognisable.
    """

    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    dropped: tuple[str, ...]
    adapted: tuple[str, ...]
    stripped_prefix: str
    guess: str | None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def some(keys: tuple[str, ...]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        lines = [f"weights {self.source}: {len(self.loaded)} tensors fit the model"
                 + (f" after stripping prefix {self.stripped_prefix!r}" if self.stripped_prefix else "")]
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} with a different shape:")
            lines += [f"    {k}: file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:8]]
            if len(self.mismatched) > 8:
                lines.append(f"    ... (+{len(self.mismatched) - 8} more)")
        if self.missing:
            lines.append(f"  {len(self.missing)} missing from the file: {some(self.missing)}")
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected in the file: {some(self.unexpected)}")
        if self.adapted:
            lines.append(f"  input channels adapted: {some(self.adapted)}")
        if self.dropped:
            lines.append(f"  {len(self.dropped)} ignored (classifier head, or outside the backbone): "
                         f"{some(self.dropped)}")
        if self.guess:
            lines.append(f"  the file looks like: {self.guess}")
        return "\n".join(lines)


def _best_prefix(state: dict[str, torch.Tensor],
                 model_keys: set[str]) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """Strip the run of known prefixes (e.g. ``module.backbone.``) that matches the most model keys;
    keys outside that prefix are returned as dropped."""
    candidates = {""}
    for key in state:
        prefix = ""
        while (nxt := next((p for p in _PREFIXES if key.startswith(prefix + p)), None)) is not None:
            prefix += nxt
            candidates.add(prefix)

    def matches(prefix: str) -> int:
        return sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in model_keys)

    best = max(sorted(candidates, key=len), key=matches)
    if not best:
        return state, "", []
    dropped = [k for k in state if not k.startswith(best)]
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}, best, dropped


def _model_prefix(keys: list[str]) -> str:
    """The known prefix every key of a model has (``model.`` of the timm/torchvision wrappers), or ``""``."""
    return next((p for p in _PREFIXES if keys and all(k.startswith(p) for k in keys)), "")


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                    in_channels_adapt: bool = True) -> LoadReport:
    """Load a checkpoint into ``model`` in place. A file written by :func:`save_backbone`, or a Hugging Face
    style folder whose ``config.json`` has timm's ``pretrained_cfg`` (:mod:`fewshot.backbones.weight_files`), also sets
    ``model.spec`` to the input its weights were trained on; a :class:`Backbone` is marked ``pretrained`` (the
    app then feeds the data with :func:`fewshot.backbones.spec.normalise_for`).

    Keys are matched after stripping ``module.``, ``backbone.``, ``encoder.`` and ``model.``
    prefixes (in any nesting) and dropping classifier heads (``fc.*``, ``classifier.*``, ...); a
    timm/torchvision wrapper's own ``model.`` prefix is matched too, so the library's files load into it.

    Channel adaptation (``in_channels_adapt``): when the model's first convolution takes 1
    channel and the file's takes 3, its weights are summed over the input channels, so grey
    input ``x`` gives what the original network gave for ``[x, x, x]``; from 1 channel to 3, the
    weights are repeated and divided by 3, so ``[x, x, x]`` gives what ``x`` gave. (Normalise
    the grey input as the original network normalised each channel.)

    Args:
        model: the backbone (or any module) to fill.
        path: a ``.safetensors`` file, a PyTorch file (read with ``weights_only=True``), or a model
            folder (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``).
        strict: raise :class:`WeightsMismatchError` (a ``ValueError``) with the report unless every
            model key is filled and every file key used; otherwise load what fits and log a warning.
        in_channels_adapt: convert the first convolution between 1 and 3 input channels.
    Returns:
        The :class:`LoadReport`.
    """
    folder = FolderConfig()
    if Path(path).is_dir():
        path, folder = read_folder(Path(path))
    raw, metadata = read_checkpoint(path)
    inner = _model_prefix(list(model.state_dict()))
    target = {k[len(inner):]: v for k, v in model.state_dict().items()}
    state, prefix, dropped = _best_prefix(raw, set(target))
    first_conv = next((k for k, v in target.items() if v.ndim == 4), None)
    loaded, unexpected, mismatched, adapted = {}, [], [], []
    for key, value in state.items():
        if key not in target:
            is_head = any(part in _HEAD_NAMES for part in key.split(".")[:2])
            (dropped if is_head else unexpected).append(prefix + key)
            continue
        want = target[key]
        if value.shape != want.shape and in_channels_adapt and key == first_conv and value.ndim == 4 \
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:] \
                and (value.shape[1], want.shape[1]) in ((3, 1), (1, 3)):
            value = value.sum(1, keepdim=True) if value.shape[1] == 3 else value.repeat(1, 3, 1, 1) / 3
            adapted.append(key)
        if value.shape != want.shape:
            mismatched.append((key, tuple(value.shape), tuple(want.shape)))
        else:
            loaded[key] = value
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    report = LoadReport(
        source=str(path), loaded=tuple(loaded), missing=tuple(missing), unexpected=tuple(unexpected),
        mismatched=tuple(mismatched), dropped=tuple(dropped), adapted=tuple(adapted), stripped_prefix=prefix,
        guess=guess_architecture(state, metadata) or (folder.architecture and f"{folder.architecture} (config.json)"),
    )
    if not report.ok:
        if strict:
            looks = f" (the file looks like {report.guess})" if report.guess else ""
            raise WeightsMismatchError(f"{report}\n  {path} does not fit {type(model).__name__}{looks}; fix the "
                                       "backbone configuration to match the file, or pass strict=False to load what "
                                       "fits")
        logger.warning("partial load into %s:\n%s", type(model).__name__, report)
    model.load_state_dict({inner + k: v for k, v in loaded.items()}, strict=False)
    spec = getattr(model, "spec", None)
    if isinstance(spec, BackboneSpec):  # the input the loaded weights were trained on, where the file says it
        spec = _spec_from_metadata(metadata) if META_SPEC in metadata else folder.spec(spec.in_channels)
        if spec is not None:
            model.spec = spec
    if isinstance(model, Backbone):
        model.pretrained = True
    return report


def _spec_from_metadata(metadata: Mapping[str, str]) -> BackboneSpec:
    fields = json.loads(metadata[META_SPEC])
    return BackboneSpec(input_size=tuple(fields["input_size"]), in_channels=int(fields["in_channels"]),
                        mean=tuple(fields["mean"]), std=tuple(fields["std"]))


def save_backbone(model: nn.Module, path: str | os.PathLike[str], *, name: str,
                  kwargs: Mapping[str, object]) -> Path:
    """Write ``model``'s weights to a ``.safetensors`` file, atomically, with the metadata
    :func:`load_backbone` needs: ``name`` and ``kwargs`` for :func:`create_backbone` (checked to
    rebuild exactly this architecture) and the model's ``spec`` (input size, mean, std).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_backbone writes safetensors; give a path ending in .safetensors, not {path}")
    try:
        kwargs_json = json.dumps(dict(kwargs), sort_keys=True)
    except TypeError as err:
        raise ValueError(f"backbone kwargs must be JSON-serialisable to be saved: {err}") from err
    with torch.device("meta"):
        reference = create_backbone(name, **json.loads(kwargs_json)).state_dict()
    state = model.state_dict()
    if {k: tuple(v.shape) for k, v in reference.items()} != {k: tuple(v.shape) for k, v in state.items()}:
        diff = sorted(set(reference).symmetric_difference(state)) or [f"{k}: {list(state[k].shape)} vs {list(v.shape)}"
                                                                      for k, v in reference.items()
                                                                      if v.shape != state[k].shape]
        raise ValueError(f"the model does not match create_backbone({name!r}, **{kwargs_json}), so it could not be "
                         f"rebuilt from the file; differences: {diff[:5]}")
    spec = getattr(model, "spec", None)
    metadata = {META_NAME: name, META_KWARGS: kwargs_json}
    if isinstance(spec, BackboneSpec):
        metadata[META_SPEC] = json.dumps(asdict(spec))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_backbone(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a backbone written by :func:`save_backbone`: architecture, weights and ``spec`` (on the
    CPU, in train mode like any new module)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no backbone file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except SafetensorError as err:
        raise ValueError(f"{path} is not a safetensors file ({err}); build the model with create_backbone "
                         "and use load_pretrained") from err
    if META_NAME not in metadata:
        raise ValueError(f"{path} has no fewshot backbone metadata (not written by save_backbone); build the "
                         "model with create_backbone(...) and load it with load_pretrained")
    model = create_backbone(metadata[META_NAME], **json.loads(metadata.get(META_KWARGS, "{}")))
    load_pretrained(model, path, strict=True, in_channels_adapt=False)  # sets model.spec from the metadata
    return model
