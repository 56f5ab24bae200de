"""What the ranks of a distributed run exchange: rank 0's weights, averaged gradients, and the batch-norm
statistics of the global batch (see :mod:`fewshot.training.distributed`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["GlobalBatchNorm", "GradientAverager", "broadcast_state"]


def broadcast_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so all ranks start identical."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


class GradientAverager:
    """The :attr:`MetaLearner.grad_sync` hook: averages gradients and statistics across ranks in place, with
    one flat all-reduce per dtype (the communication volume of a step is the size of the gradients)."""

    def __init__(self, *, world_size: int) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size

    def __call__(self, grads: list[torch.Tensor], stats: torch.Tensor) -> None:
        self.average([*grads, stats])

    def average(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over ranks (every rank must pass the same shapes in the same order)."""
        if self.world_size == 1:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat /= self.world_size
            for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
                t.copy_(part.view_as(t))


class GlobalBatchNorm(TorchFunctionMode):
    """While active, train-mode ``F.batch_norm`` normalises with the mean and (biased) variance of the global
    batch, the union of every rank's rows, and updates running statistics as one process would (unbiased
    variance over the global count). The all-reduces are differentiable, so gradients through the
    statistics are those of the one-process batch. Eval-mode batch norm is left alone.

    Every rank must run the same layers in the same order (any batch size, even uneven).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _global_batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


class _SumOverRanks(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _global_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                       weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                       momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training=False, eps=eps)
    x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input  # statistics in >= float32
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.int64, device=x.device)
    dist.all_reduce(count)
    n = count.to(x.dtype)
    mean = _SumOverRanks.apply(x.sum(dims)) / n
    centred = x - mean.view(shape)
    var = _SumOverRanks.apply((centred * centred).sum(dims)) / n
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1).clamp_min(1))
    y = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y.to(input.dtype)
