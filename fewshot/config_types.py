"""Type-check a composed config before anything runs: every value a constructor receives is checked against that
constructor's own annotations (``trainer.steps=abc`` is refused with the key and the expected type, before a run
directory is claimed), plus the plain keys of the apps (``seed``, ``evaluation.*``, ``episode.*``).

One mechanism for every config group: a node with ``_target_`` is checked against the signature of its target
(``create_backbone`` nodes against the registered backbone class's), so a new method's keys are checked with no
edit here.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from fewshot.backbones.base import Backbone
from fewshot.backbones.registry import create_backbone, list_backbones

__all__ = ["check_config_types"]

#: Keys of the apps' own configs that no constructor receives, with their types.
PLAIN: dict[str, Any] = {
    "seed": int, "progress": bool, "device": str, "backbone_weights": str | None, "run": str, "checkpoint": str,
    "dir": str, "include_eval": bool, "ledger": str | None, "logging.tensorboard": bool | Literal["auto"],
    "evaluation.episodes": int, "evaluation.seed": int, "evaluation.n_query": int, "evaluation.batch_size": int,
    "evaluation.settings": list[tuple[int, int]],
    "episode.n_way": int, "episode.n_shot": int, "episode.n_query": int, "episode.train_n_way": int,
    "episode.train_n_shot": int, "episode.train_n_query": int,
}


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _fits(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` (a plain config value) fits ``annotation``; None where the annotation is not checkable."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, arg) for arg in args]
        return any(verdicts) if None not in verdicts else (True if any(verdicts) else None)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) is not False for v, a in zip(value, args, strict=True))
        item = args[0] if args else None
        return item is None or all(_fits(v, item) is not False for v in value)
    return None


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    """Annotations of ``target``'s keyword parameters (of ``__init__`` for a class); {} where they cannot be read."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: leave the checking to the constructor
        return {}
    names = inspect.signature(function).parameters
    return {k: v for k, v in hints.items() if k in names}


def _check(path: str, key: str, value: Any, annotation: Any) -> None:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if _fits(value, annotation) is False:
        raise TypeError(f"{path}{key}={value!r}: expected {_describe(annotation)}")


def _target_hints(node: DictConfig) -> dict[str, Any]:
    target = get_object(node._target_)
    if target is create_backbone and isinstance(node.get("name"), str) and node.name in list_backbones():
        return _hints(Backbone.registered[node.name])
    return _hints(target)


def _walk(node: DictConfig, path: str) -> None:
    hints = _target_hints(node) if "_target_" in node else {}
    for key, raw in node.items_ex(resolve=False):  # unresolved: only checked values are resolved
        if str(key).startswith("_") or OmegaConf.is_missing(node, key):
            continue
        if isinstance(raw, DictConfig):
            _walk(node[key], f"{path}{key}.")
        elif key in hints:
            _check(path, key, node[key], hints[key])


def check_config_types(cfg: DictConfig) -> None:
    """Raise ``TypeError`` naming the first key whose value does not have the type its constructor (or the app,
    :data:`PLAIN`) declares, e.g. ``trainer.steps='abc': expected int``."""
    absent = object()
    for dotted, annotation in PLAIN.items():
        value = OmegaConf.select(cfg, dotted, default=absent, throw_on_missing=False)
        if value is not absent and value is not None and value != "???":  # None: unset (e.g. eval's keys)
            parent, _, key = dotted.rpartition(".")
            _check(f"{parent}." if parent else "", key, value, annotation)
    _walk(cfg, "")
