"""Normalisation from primitives, applied to any backbone through a torch-function mode.

MAML-style inner loops run a plain ``nn.Module`` with :func:`torch.func.functional_call`, per task,
possibly under :func:`torch.func.vmap`. Two things go wrong with the module's own batch norm there:
in train mode it updates its running statistics (state leaking from task to task, and a change to
the learner during ``predict``), and on this torch the vmapped backward of affine ``F.batch_norm`` /
``F.layer_norm`` gives wrong meta-gradients (docs/ARCHITECTURE.md, "Known traps"). :class:`NormPolicy`
intercepts those two functions while it is active and computes them from ``mean``/``var`` instead (or,
outside vmap, with the fused kernels and the same policy), never reading or writing running statistics
unless asked to read them (``stats="running"``). A task-by-task loop can often skip the mode:
:func:`batch_stat_overrides` says when, and what to pass to :func:`torch.func.functional_call` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

__all__ = ["BatchMoments", "NormPolicy", "batch_norm", "batch_stat_overrides", "eval_mode", "layer_norm"]

#: Modules of these packages make batch-norm calls only through torch's own batch-norm layers (for fewshot's
#: backbones, tests/test_backbone_contract.py checks it on every one).
KNOWN_NORMALISATION = ("torch.nn.", "fewshot.backbones.")


def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, *, eps: float,
               stat_rows: int | None = None, running_mean: torch.Tensor | None = None,
               running_var: torch.Tensor | None = None) -> torch.Tensor:
    """Batch normalisation from primitives.

    Args:
        x: (N, C, ...) input.
        weight, bias: (C,) affine parameters, or ``None``.
        eps: added to the variance.
        stat_rows: compute the statistics from ``x[:stat_rows]`` only (e.g. the support rows of a
            support+query batch); ``None`` uses every row. Ignored when running statistics are given.
        running_mean, running_var: (C,) statistics to normalise with instead of the batch's own.
    Returns:
        (N, C, ...) normalised ``x``; biased variance, as ``F.batch_norm`` in training mode.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if running_mean is not None and running_var is not None:
        mean, var = running_mean.view(shape), running_var.view(shape)
    else:
        ref = x if stat_rows is None else x[:stat_rows]
        dims = [0, *range(2, x.dim())]
        mean = ref.mean(dims, keepdim=True)
        var = ref.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def layer_norm(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
               bias: torch.Tensor | None, *, eps: float) -> torch.Tensor:
    """Layer normalisation from primitives over the last ``len(normalized_shape)`` dims of ``x``."""
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _batch_norm_args(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                     weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    return input, running_mean, running_var, weight, bias, eps


def _layer_norm_args(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, eps: float = 1e-5):
    return input, normalized_shape, weight, bias, eps


class NormPolicy(TorchFunctionMode):
    """While active, ``F.batch_norm`` and ``F.layer_norm`` follow this policy, computed from primitives.

    Batch norm never updates running statistics, whatever the module's train/eval mode:

    - ``stats="batch"``: normalise with the statistics of the batch the layer sees (of its first
      ``stat_rows`` rows when set: pass support+query with ``stat_rows=n_support`` to normalise the
      query with its task's support statistics).
    - ``stats="running"``: normalise with the module's stored running statistics (read only).

    Other normalisations (``F.group_norm``, ``F.instance_norm``) pass through unchanged: they are
    per-sample, so nothing leaks between tasks, but their vmapped meta-gradients are not tested here.

    Use as a context manager around a functional forward of one task. ``primitives=True`` (required
    under ``vmap``) always computes normalisation from ``mean``/``var``; ``primitives=False`` calls the
    fused ``F.batch_norm``/``F.layer_norm`` kernels with the same policy where they can express it (all
    but ``stat_rows``), about 1.5x faster for a plain per-task loop on CPU.
    """

    def __init__(self, *, stats: Literal["batch", "running"] = "batch", stat_rows: int | None = None,
                 primitives: bool = True) -> None:
        super().__init__()
        if stats not in ("batch", "running"):
            raise ValueError(f"unknown batch-norm statistics {stats!r}; use 'batch' or 'running'")
        self.stats = stats
        self.stat_rows = stat_rows
        self.primitives = primitives

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            x, rm, rv, weight, bias, eps = _batch_norm_args(*args, **kwargs)
            if self.stats == "running":
                if rm is None or rv is None:
                    raise ValueError("NormPolicy(stats='running') needs batch-norm layers that track running "
                                     "statistics (track_running_stats=True)")
                if not self.primitives:
                    return F.batch_norm(x, rm, rv, weight, bias, training=False, eps=eps)
                return batch_norm(x, weight, bias, eps=eps, running_mean=rm, running_var=rv)
            if not self.primitives and self.stat_rows is None:
                return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)
            return batch_norm(x, weight, bias, eps=eps, stat_rows=self.stat_rows)
        if func is F.layer_norm:
            x, shape, weight, bias, eps = _layer_norm_args(*args, **kwargs)
            if not self.primitives:
                return F.layer_norm(x, shape, weight, bias, eps)
            return layer_norm(x, shape, weight, bias, eps=eps)
        return func(*args, **kwargs)


def batch_stat_overrides(module: nn.Module) -> dict[str, None] | None:
    """What to pass to :func:`torch.func.functional_call` (with the parameters) so that ``module`` in eval mode
    normalises as under ``NormPolicy(stats="batch", primitives=False)`` without the torch-function mode, or None
    where that is not known to hold.

    Every batch-norm layer of ``module`` is a stock torch layer (a ``_BatchNorm`` running torch's own ``forward``,
    e.g. ``nn.BatchNorm2d``): given no running statistics, such a layer normalises with its batch's statistics and
    updates nothing, the policy's own ``F.batch_norm`` call, so values and gradients are identical. Every other
    module's class comes from :data:`KNOWN_NORMALISATION`, whose classes make no batch-norm call of their own.
    Anything else (a user's module, timm's ``BatchNormAct2d``, ``nn.SyncBatchNorm``) may call ``F.batch_norm``
    itself with its running statistics, so the caller keeps the mode there. Layer, group and instance norm pass
    through the policy unchanged outside ``primitives``, so they need nothing.

    Returns:
        ``{"<layer>.running_mean": None, "<layer>.running_var": None, ...}`` for the layers that hold them, or None.
        (In eval mode a layer never touches ``num_batches_tracked``.)
    """
    overrides: dict[str, None] = {}
    for name, m in module.named_modules():
        if isinstance(m, _BatchNorm):
            if type(m).forward is not _BatchNorm.forward:
                return None
            prefix = f"{name}." if name else ""
            overrides |= {prefix + key: None for key in ("running_mean", "running_var") if getattr(m, key) is not None}
        elif not type(m).__module__.startswith(KNOWN_NORMALISATION):
            return None
    return overrides


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore every submodule's flag afterwards.

    Functional inner loops call the backbone in eval mode so that batch-norm layers neither count
    batches nor update running statistics (an in-place change that ``torch.func.grad`` also forbids);
    :class:`NormPolicy` then decides which statistics normalise each batch. Dropout is off inside.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


class BatchMoments(NormPolicy):
    """:class:`NormPolicy` with batch statistics (from primitives) that also records what each batch-norm layer
    saw: for every ``F.batch_norm`` call given running statistics, ``moments[id(running_mean)]`` is the (2, C)
    tensor [mean, unbiased variance] of its input over all but the channel dim, the values a layer in train mode
    folds into its running statistics. The layers' own statistics are left untouched: a caller that substitutes
    the running-statistics tensors (``functional_call``) finds each layer's moments by the tensor it passed,
    and updates what it keeps itself (e.g. running statistics per inner step). Works under ``vmap``: the moments
    then carry the batch dim of the tasks and must be returned from the vmapped function.
    """

    def __init__(self) -> None:
        super().__init__(stats="batch", primitives=True)
        self.moments: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.batch_norm:
            x, rm, _, _, _, _ = _batch_norm_args(*args, **(kwargs or {}))
            if rm is not None:
                if id(rm) in self.moments:
                    raise ValueError("a batch-norm layer ran twice in one forward pass; statistics kept per layer "
                                     "need each layer called once (use one module per use)")
                dims = [0, *range(2, x.dim())]
                self.moments[id(rm)] = torch.stack([x.mean(dims), x.var(dims)])
        return super().__torch_function__(func, types, args, kwargs)
