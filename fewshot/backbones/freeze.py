"""Freezing policies for transfer (all, all but the head, the first k stages) and per-part learning rates.

A frozen BatchNorm must not keep adapting its running statistics, so it is kept in eval mode:
:func:`apply_freeze` calls ``.eval()`` on it and registers a forward pre-hook that switches it
back to eval mode whenever a later ``model.train()`` turned training on. It then normalises
with its stored running mean and variance and never updates them. Unfreezing (policy
``"none"``, or a policy that leaves it trainable) clears the flag the hook reads; call
``model.train()`` afterwards to resume batch statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import nn

FreezePolicy = Literal["none", "all", "all_but_head", "first_k"]
_POLICIES = ("none", "all", "all_but_head", "first_k")
DEFAULT_HEAD_NAMES: tuple[str, ...] = ("head", "fc", "classifier")


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _keep_eval_if_frozen(module: nn.Module, args: tuple[object, ...]) -> None:
    if module.training and getattr(module, "fewshot_frozen", False):
        module.train(False)


def _find_stages(model: nn.Module) -> tuple[str, list[str]]:
    """(qualified name of the module that lists ``stages``, its stage names)."""
    for name, module in model.named_modules():
        stages = getattr(module, "stages", None)
        if isinstance(stages, list) and stages:
            return name, list(stages)
    raise ValueError(f"{type(model).__name__} has no backbone with a `stages` list, so 'first_k' cannot tell its "
                     "stages apart; use 'all' or 'all_but_head', or give the backbone a `stages` attribute")


def _frozen_predicate(model: nn.Module, policy: str, k: int, head_names: Sequence[str]) -> Callable[[str], bool]:
    if policy == "none":
        return lambda name: False
    if policy == "all":
        return lambda name: True
    if policy == "all_but_head":
        names = [n for n, _ in model.named_modules()]
        if not any(_under(n, head_names) for n in names if n):
            children = [n for n, _ in model.named_children()]
            raise ValueError(f"'all_but_head' found no module named {list(head_names)} in {type(model).__name__} "
                             f"(its children: {children}); pass head_names=")
        return lambda name: not _under(name, head_names)
    owner, stages = _find_stages(model)
    if not 0 <= k <= len(stages):
        raise ValueError(f"'first_k' needs 0 <= k <= {len(stages)} (the stages are {stages}), got k={k}")
    frozen = [f"{owner}.{s}" if owner else s for s in stages[:k]]
    return lambda name: _under(name, frozen)


def apply_freeze(model: nn.Module, policy: FreezePolicy, k: int = 0, *,
                 head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> list[str]:
    """Set ``requires_grad`` on every parameter of ``model`` according to ``policy``.

    Policies:
        ``"none"``: everything trainable. ``"all"``: nothing trainable.
        ``"all_but_head"``: only modules named in ``head_names`` (qualified names, e.g. ``"head"``)
        stay trainable. ``"first_k"``: the first ``k`` entries of the backbone's ``stages`` are
        frozen (the backbone is ``model`` itself or its first submodule with a ``stages`` list;
        for the torchvision-layout ResNets the stem is the two stages ``conv1`` and ``bn1``).

    Frozen BatchNorm layers are kept in eval mode (see the module docstring).

    Returns:
        The names of the frozen parameters.
    """
    if policy not in _POLICIES:
        raise ValueError(f"unknown freeze policy {policy!r}; use one of {', '.join(_POLICIES)}")
    if policy != "first_k" and k != 0:
        raise ValueError(f"k={k} is only meaningful with policy 'first_k', not {policy!r}")
    is_frozen = _frozen_predicate(model, policy, k, head_names)
    frozen = []
    for name, param in model.named_parameters():
        param.requires_grad_(not is_frozen(name))
        if is_frozen(name):
            frozen.append(name)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.fewshot_frozen = is_frozen(name)
            if module.fewshot_frozen:
                if not getattr(module, "fewshot_hooked", False):
                    module.register_forward_pre_hook(_keep_eval_if_frozen)
                    module.fewshot_hooked = True
                module.eval()
    return frozen


def param_groups(model: nn.Module, *, lr: float, backbone_lr_mult: float,
                 head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> list[dict[str, object]]:
    """Optimizer parameter groups: the head at ``lr``, everything else at ``lr * backbone_lr_mult``.

    Only trainable parameters are included (freeze first, then build the groups).

    Returns:
        ``[{"name": "head", "params": [...], "lr": lr}, {"name": "backbone", "params": [...],
        "lr": lr * backbone_lr_mult}]``, leaving out an empty group; pass it to any torch optimizer.
    """
    if lr <= 0 or backbone_lr_mult < 0:
        raise ValueError(f"need lr > 0 and backbone_lr_mult >= 0, got lr={lr}, backbone_lr_mult={backbone_lr_mult}")
    named = list(model.named_parameters())
    if not any(_under(name, head_names) for name, _ in named):
        children = [n for n, _ in model.named_children()]
        raise ValueError(f"no parameter of {type(model).__name__} lies under {list(head_names)} (its children: "
                         f"{children}); pass head_names=")
    head = [p for name, p in named if p.requires_grad and _under(name, head_names)]
    body = [p for name, p in named if p.requires_grad and not _under(name, head_names)]
    groups: list[dict[str, object]] = []
    if head:
        groups.append({"name": "head", "params": head, "lr": lr})
    if body:
        groups.append({"name": "backbone", "params": body, "lr": lr * backbone_lr_mult})
    return groups
