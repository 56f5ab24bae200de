"""A counter-based random number generator in int64 torch ops: the same numbers on any device.

Every random draw is ``mix64(key + (counter + 1) * GOLDEN)``: the ``counter``-th output of a
SplitMix64 stream (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators")
whose state is ``key``. Nothing is carried between calls, so a draw depends only on its key and
counter. Keys are split into independent sub-keys with :func:`derive`, e.g. seed -> episode ->
purpose -> image. All arithmetic is 64-bit integer (additions and multiplications wrap modulo
2**64, shifts are made logical by masking), so CPU and GPU give bit-identical results.
"""

from __future__ import annotations

import torch

_U64 = 1 << 64


def _i64(value: int) -> int:
    """``value`` modulo 2**64, as the signed int64 with the same bits."""
    value %= _U64
    return value - _U64 if value >= 1 << 63 else value


GOLDEN = _i64(0x9E3779B97F4A7C15)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)
MASK63 = (1 << 63) - 1


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic on int64)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser: a bijection of 64-bit words with strong avalanche.

    Args:
        z: int64 tensor of any shape.
    Returns:
        int64 tensor of the same shape.
    """
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def seed_key(seed: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The root key of a seed: a () int64 tensor. Any Python int is accepted (taken modulo 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return mix64(torch.tensor(_i64(seed), dtype=torch.int64, device=device) + GOLDEN)


def derive(key: torch.Tensor, counter: torch.Tensor | int) -> torch.Tensor:
    """Output ``counter`` of the stream ``key``: also usable as an independent sub-key.

    Args:
        key: int64 tensor; broadcast against ``counter``.
        counter: non-negative int64 tensor or int.
    Returns:
        int64 tensor of the broadcast shape.
    """
    if isinstance(counter, int):
        counter = torch.tensor(counter, dtype=torch.int64, device=key.device)
    return mix64(key + (counter + 1) * GOLDEN)


def uniform_int(key: torch.Tensor, counter: torch.Tensor | int, high: torch.Tensor | int) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (bias below 2**-40 for ``high`` < 2**23).

    Args:
        key, counter: as in :func:`derive`.
        high: positive int or int64 tensor, broadcast against the result.
    Returns:
        int64 tensor of the broadcast shape.
    """
    return (derive(key, counter) & MASK63) % high


def uniform_float(key: torch.Tensor, counter: torch.Tensor | int) -> torch.Tensor:
    """float64 numbers uniform in ``[0, 1)`` from the top 53 bits of each draw."""
    return _shr(derive(key, counter), 11).double() * (2.0**-53)
