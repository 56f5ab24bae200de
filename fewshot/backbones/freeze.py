"""Freezing policies for transfer: all, all but the head, the first k stages.

:func:`frozen_names` says which parameters a policy freezes (the fine-tune learners adapt the others, see
:class:`~fewshot.learners.finetune.BackboneFineTune`); :func:`apply_freeze` applies it to a module in place, for
training loops of your own.

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


def frozen_names(model: nn.Module, policy: FreezePolicy, k: int = 0, *,
                 head_names: Sequence[str] = DEFAULT_HEAD_NAMES) -> list[str]:
    """The names of the parameters of ``model`` that ``policy`` freezes (see :func:`apply_freeze` for the
    policies); changes nothing."""
    if policy not in _POLICIES:
        raise ValueError(f"unknown freeze policy {policy!r}; use one of {', '.join(_POLICIES)}")
    if policy != "first_k" and k != 0:
        raise ValueError(f"k={k} is only meaningful with policy 'first_k', not {policy!r}")
    is_frozen = _frozen_predicate(model, policy, k, head_names)
    return [name for name, _ in model.named_parameters() if is_frozen(name)]


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
    frozen = frozen_names(model, policy, k, head_names=head_names)
    is_frozen = _frozen_predicate(model, policy, k, head_names)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.fewshot_frozen = is_frozen(name)
            if module.fewshot_frozen:
                if not getattr(module, "fewshot_hooked", False):
                    module.register_forward_pre_hook(_keep_eval_if_frozen)
                    module.fewshot_hooked = True
                module.eval()
    return frozen
