"""glibc allocator settings (mmap off, 1 GiB trim threshold): applied by the command-line apps to their own process,
never on import of the library; any allocator threshold of the user's environment wins; FEWSHOT_NO_MALLOPT switches
it off; nothing happens off glibc."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fewshot.allocator as allocator
from fewshot import __main__ as entry
from fewshot import cli

ROOT = Path(__file__).resolve().parent.parent
MMAP, TRIM = (-4, 0), (-1, 2**30)  # (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 GiB)
USER_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                  allocator.DISABLE_VARIABLE)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """A recording stand-in for glibc's mallopt (accepting every value), in a clean environment."""
    for variable in USER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    recorded: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        recorded.append((param, value))
        return 1

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: mallopt)
    return recorded


@pytest.mark.parametrize("app", ["train", "eval", "pretrain", "report"])
def test_each_app_entry_point_applies_both_settings_once(app: str, calls: list, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["fewshot", app, "--help"])
    with pytest.raises(SystemExit) as exit_:  # Hydra prints the app's help and exits
        entry.main()
    assert exit_.value.code in (0, None)
    assert "Powered by Hydra" in capsys.readouterr().out
    assert calls == [MMAP, TRIM]
    calls.clear()
    with pytest.raises(SystemExit):
        getattr(cli, f"{app}_main")()  # the console script (fewshot-<app>) is the same function
    assert calls == [MMAP, TRIM]


@pytest.mark.parametrize(("variable", "value"), [
    ("MALLOC_MMAP_THRESHOLD_", "1048576"), ("MALLOC_MMAP_MAX_", "65536"), ("MALLOC_TRIM_THRESHOLD_", "4096"),
    ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=4096"),
    ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=8192")])
def test_any_user_setting_wins(variable: str, value: str, calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    assert allocator.tune_allocator() == {} and calls == []
    for name in USER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # an unrelated tunable is not a threshold
    assert allocator.tune_allocator() == {"mmap_max": 0, "trim_threshold": 2**30} and calls == [MMAP, TRIM]


@pytest.mark.parametrize(("value", "expected"), [("1", []), ("yes", []), ("0", [MMAP, TRIM]), ("", [MMAP, TRIM])])
def test_switch_off(value: str, expected: list, calls: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.DISABLE_VARIABLE, value)
    allocator.tune_allocator()
    assert calls == expected


def test_refused_mmap_max_leaves_the_trim_threshold_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trim threshold set alone would freeze glibc's dynamic mmap threshold at 128 KiB: never set it alone."""
    for variable in USER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    recorded: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        recorded.append((param, value))
        return int(param != MMAP[0])

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: mallopt)
    assert allocator.tune_allocator() == {} and recorded == [MMAP]


def test_not_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for variable in USER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for confstr in (lambda name: None, lambda name: "musl 1.2", lambda name: (_ for _ in ()).throw(ValueError(name))):
        monkeypatch.setattr(os, "confstr", confstr)
        assert allocator._glibc_mallopt() is None
        with caplog.at_level(logging.DEBUG, logger="fewshot.allocator"):
            assert allocator.tune_allocator() == {}
        assert "not glibc" in caplog.text


# Run in a fresh process: allocate 40 MiB with malloc and report whether glibc mapped it (above its mmap threshold;
# the default threshold never exceeds 32 MiB on 64-bit), after importing the library, then after tune_allocator();
# and whether the heap kept the 40 MiB once freed (trim threshold above it).
_PROBE = """
import ctypes, json
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                                 "fordblks keepcost").split()]
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = Info, ctypes.c_void_p, [ctypes.c_void_p]
def mapped():
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(40 << 20)
    grown = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grown >= 40 << 20
import fewshot.allocator as allocator  # imports fewshot (the package) first
real, calls = allocator._glibc_mallopt, []
allocator._glibc_mallopt = lambda: lambda param, value: calls.append(param) or 1
import fewshot, fewshot.cli, fewshot.hydra_app, fewshot.__main__
after_import = mapped()
allocator._glibc_mallopt = real
applied = allocator.tune_allocator()
after_tune = mapped()
print(json.dumps({"calls": calls, "after_import": after_import, "applied": applied, "after_tune": after_tune,
                  "heap_kept": libc.mallinfo2().arena >= 40 << 20}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="needs glibc 2.33 or later (mallinfo2)")
def test_importing_the_library_leaves_the_allocator_alone_and_the_app_setting_takes_effect() -> None:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=120)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["calls"] == [], "importing the apps' modules called mallopt"
    assert probe["after_import"] is True, "importing fewshot changed glibc's mmap threshold"
    assert probe["applied"] == {"mmap_max": 0, "trim_threshold": 2**30}
    assert probe["after_tune"] is False, "mallopt did not turn mmap off"
    assert probe["heap_kept"] is True, "the heap was trimmed below the freed 40 MiB"
