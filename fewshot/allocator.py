"""glibc's allocator settings for the command-line apps' own process (never applied on import of the library).

On Linux with glibc, a tensor larger than the allocator's mmap threshold (dynamic, 128 KiB up to a hard cap of
32 MiB on 64-bit) is mapped afresh on every allocation and page-faulted on first touch, and freed heap memory above
the trim threshold is handed back to the kernel, to be faulted in again on the next step. Training steps allocate
and free such tensors every step: ProtoNet's 60-way Omniglot episodes (360 images, activations of 70 MB per
layer) and MAML's per-step intermediates. With mmap off for allocations (``M_MMAP_MAX`` 0: every block comes
from the heap) and a 1 GiB trim threshold, the heap keeps and reuses that memory: a shortened README main job
ran 1.83x faster than with glibc's defaults, its system time down from 47 to 0.9 seconds, for 21% more peak
memory (``benchmarks/results/allocator.md``). The cost is a process that keeps up to 1 GiB of freed memory
instead of returning it at once.

:func:`tune_allocator` applies both with glibc's ``mallopt`` at the start of each app entry point
(:func:`fewshot.hydra_app.app_main`), the same as starting the process with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824``. It changes nothing:

- when the user set any of glibc's allocator thresholds in the environment (``MALLOC_MMAP_MAX_``,
  ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, or their ``glibc.malloc.*`` names in ``GLIBC_TUNABLES``):
  glibc applied the user's values at start-up, and they are the user's choice;
- when ``FEWSHOT_NO_MALLOPT`` is set to anything but an empty string or ``0`` (``FEWSHOT_NO_MALLOPT=1 fewshot-train
  ...``): glibc's defaults stay;
- off glibc (macOS, Windows, musl): nothing to set; a debug line says so.

Library code (``import fewshot``, a user's own training script) never calls it: process-wide state is the
application's to decide.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

__all__ = ["DISABLE_VARIABLE", "SETTINGS", "USER_SETTINGS", "tune_allocator"]

log = logging.getLogger(__name__)

#: Set to anything but "" or "0" to leave glibc's allocator settings alone.
DISABLE_VARIABLE = "FEWSHOT_NO_MALLOPT"


#: What the apps set, in order: (mallopt parameter number from glibc's malloc.h, the value).
SETTINGS: dict[str, tuple[int, int]] = {
    "mmap_max": (-4, 0),  # M_MMAP_MAX: no block is mapped on its own; all come from the heap
    "trim_threshold": (-1, 2**30),  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap top
}

#: The user's own settings of glibc's thresholds (environment variables, GLIBC_TUNABLES names): any one of them and
#: the apps leave the allocator alone.
USER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max"),
    ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
    ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
)

Mallopt = Callable[[int, int], int]


def _glibc_mallopt() -> Mallopt | None:
    """glibc's ``int mallopt(int param, int value)`` of this process, or None where the C library is not glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent or an error elsewhere
    except (AttributeError, ValueError, OSError):
        version = None
    if not version or not version.startswith("glibc"):
        return None
    try:
        function = ctypes.CDLL(None).mallopt  # the C library this process already runs with
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return function


def _set_by_user(variable: str, tunable: str) -> bool:
    if os.environ.get(variable):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(item.split("=", 1)[0].strip() == tunable for item in tunables.split(":"))


def tune_allocator() -> dict[str, int]:
    """Apply :data:`SETTINGS` to glibc's allocator of this process, unless the user set any of glibc's thresholds
    (:data:`USER_SETTINGS`), ``FEWSHOT_NO_MALLOPT`` is set, or the C library is not glibc.

    Call it first thing in an application's entry point, never at import. Returns what was set (name -> value).
    The trim threshold is set only once mmap is off: setting it alone would also freeze glibc's dynamic mmap
    threshold at its 128 KiB start.
    """
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        log.debug("%s is set: glibc's allocator settings left as they are", DISABLE_VARIABLE)
        return {}
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.debug("the C library is not glibc: no allocator settings to apply")
        return {}
    user = [variable for variable, tunable in USER_SETTINGS if _set_by_user(variable, tunable)]
    if user:
        log.debug("%s set in the environment: glibc's allocator settings left as the user set them", user)
        return {}
    applied: dict[str, int] = {}
    for name, (param, value) in SETTINGS.items():
        if mallopt(param, value) != 1:
            log.debug("glibc refused mallopt(%s=%d): the rest of its settings are left as they are", name, value)
            break
        applied[name] = value
    log.debug("glibc allocator settings applied: %s", applied)
    return applied
