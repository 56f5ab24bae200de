"""glibc's allocator thresholds for the command-line apps' own process (never applied on import of the library).

On Linux with glibc, a tensor larger than the allocator's mmap threshold (dynamic, 128 KiB to 32 MiB) is mapped
afresh on every allocation and page-faulted on first touch, and freed heap memory above the trim threshold is
handed back to the kernel. MAML's per-step intermediates are such tensors: with a 64 MiB mmap threshold and a
128 MiB trim threshold the heap keeps and reuses that memory, and a bare CPU MAML loop ran 20-30% faster for this
library and every peer alike (README, "Benchmarks"). In a whole app run the gain is smaller, since loading a
dataset already raises glibc's dynamic thresholds; ``benchmarks/results/allocator.md`` measures both. The cost is a
process that keeps up to the trim threshold of freed memory instead of returning it at once.

:func:`tune_allocator` sets the two thresholds with glibc's ``mallopt`` at the start of each app entry point
(:func:`fewshot.hydra_app.app_main`), the same as starting the process with
``MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=134217728``. It changes nothing:

- for a threshold the user set in the environment (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, or
  ``glibc.malloc.mmap_threshold`` / ``glibc.malloc.trim_threshold`` in ``GLIBC_TUNABLES``): glibc already applied
  the user's value at start-up, and it is kept;
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

__all__ = ["DISABLE_VARIABLE", "THRESHOLDS", "tune_allocator"]

log = logging.getLogger(__name__)

#: Set to anything but "" or "0" to leave glibc's allocator settings alone.
DISABLE_VARIABLE = "FEWSHOT_NO_MALLOPT"


#: (mallopt parameter number from glibc's malloc.h, the environment variable and the GLIBC_TUNABLES name a user
#: sets it with, the value the apps use in bytes).
THRESHOLDS: dict[str, tuple[int, str, str, int]] = {
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", 64 * 2**20),  # M_MMAP_THRESHOLD
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", 128 * 2**20),  # M_TRIM_THRESHOLD
}

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
    """Set glibc's mmap and trim thresholds of this process to the values of :data:`THRESHOLDS`, except those the
    user set in the environment, unless ``FEWSHOT_NO_MALLOPT`` is set or the C library is not glibc.

    Call it first thing in an application's entry point, never at import. Returns what was set (name -> bytes).
    """
    if os.environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        log.debug("%s is set: glibc's allocator settings left as they are", DISABLE_VARIABLE)
        return {}
    mallopt = _glibc_mallopt()
    if mallopt is None:
        log.debug("the C library is not glibc: no allocator thresholds to set")
        return {}
    applied: dict[str, int] = {}
    for name, (param, variable, tunable, value) in THRESHOLDS.items():
        if _set_by_user(variable, tunable):
            log.debug("%s set in the environment: kept", variable)
            continue
        # where glibc refuses 64 MiB (releases that cap the mmap threshold at 32 MiB on 64-bit), take 32 MiB
        for candidate in (value, 32 * 2**20) if name == "mmap_threshold" else (value,):
            if mallopt(param, candidate) == 1:
                applied[name] = candidate
                break
        else:  # setting the trim threshold alone would freeze the mmap threshold at its 128 KiB start
            log.debug("glibc refused mallopt(%s): its default allocator settings are kept", name)
            break
    log.debug("glibc allocator thresholds set: %s", applied)
    return applied
