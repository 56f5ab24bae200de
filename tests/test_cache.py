"""The decoded-array cache: build once, reload memory-mapped, rebuild when stale or corrupt."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from episodes.datasets.cache import cache_dir_for, cached_arrays, default_cache_dir, source_fingerprint

KEY = {"loader": "test", "version": 1, "size": 28, "source": "abc"}


class CountingBuild:
    """A build function that records how often it ran."""

    def __init__(self, value: int = 7) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"images": torch.full((3, 1, 2, 2), self.value, dtype=torch.uint8), "labels": torch.arange(3)}


def test_builds_once_then_loads_equal_tensors(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    build = CountingBuild()
    first = cached_arrays(path, key=KEY, build=build)
    second = cached_arrays(path, key=dict(KEY), build=build)
    assert build.calls == 1
    assert set(second) == {"images", "labels"}
    assert torch.equal(first["images"], second["images"]) and torch.equal(second["labels"], torch.arange(3))
    assert second["images"].dtype == torch.uint8


def test_key_order_does_not_matter(tmp_path: Path) -> None:
    build = CountingBuild()
    cached_arrays(tmp_path / "c.pt", key={"a": 1, "b": 2}, build=build)
    cached_arrays(tmp_path / "c.pt", key={"b": 2, "a": 1}, build=build)
    assert build.calls == 1


def test_changed_key_rebuilds_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.pt"
    cached_arrays(path, key=KEY, build=CountingBuild(1))
    rebuilt = CountingBuild(2)
    with caplog.at_level(logging.WARNING):
        out = cached_arrays(path, key={**KEY, "size": 32}, build=rebuilt)
    assert rebuilt.calls == 1 and int(out["images"][0, 0, 0, 0]) == 2
    assert "rebuilding" in caplog.text
    reloaded = cached_arrays(path, key={**KEY, "size": 32}, build=CountingBuild(3))
    assert int(reloaded["images"][0, 0, 0, 0]) == 2


@pytest.mark.parametrize("content", [b"", b"not a torch file", b"PK\x03\x04truncated zip"])
def test_corrupt_file_is_rebuilt(tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    build = CountingBuild(5)
    with caplog.at_level(logging.WARNING):
        out = cached_arrays(path, key=KEY, build=build)
    assert build.calls == 1 and int(out["images"].max()) == 5
    assert "unreadable" in caplog.text
    assert int(cached_arrays(path, key=KEY, build=CountingBuild(6))["images"].max()) == 5


def test_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    cached_arrays(path, key=KEY, build=CountingBuild(1))
    path.write_bytes(path.read_bytes()[:200])
    build = CountingBuild(4)
    assert int(cached_arrays(path, key=KEY, build=build)["images"].max()) == 4 and build.calls == 1


def test_failed_build_writes_nothing(tmp_path: Path) -> None:
    def build() -> dict[str, torch.Tensor]:
        raise ValueError("corrupt image x.png")

    with pytest.raises(ValueError, match="corrupt image"):
        cached_arrays(tmp_path / "sub" / "c.pt", key=KEY, build=build)
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_bad_keys_and_results_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON"):
        cached_arrays(tmp_path / "c.pt", key={"path": Path("x")}, build=CountingBuild())
    with pytest.raises(ValueError, match="'key'"):
        cached_arrays(tmp_path / "c.pt", key=KEY, build=lambda: {"key": torch.zeros(1)})
    with pytest.raises(TypeError, match="dict of str"):
        cached_arrays(tmp_path / "c.pt", key=KEY, build=lambda: {"a": [1, 2]})
    assert not list(tmp_path.iterdir())


def test_no_temporary_files_left(tmp_path: Path) -> None:
    cached_arrays(tmp_path / "c.pt", key=KEY, build=CountingBuild())
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _files(folder: Path) -> list[Path]:
    folder.mkdir()
    (folder / "a").mkdir()
    (folder / "a" / "x.png").write_bytes(b"12345")
    (folder / "y.png").write_bytes(b"1")
    for i, path in enumerate([folder / "a" / "x.png", folder / "y.png"]):
        os.utime(path, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    return [folder / "a" / "x.png", folder / "y.png"]


def test_fingerprint_is_order_and_location_independent(tmp_path: Path) -> None:
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert source_fingerprint(one) == source_fingerprint(reversed(one)) == source_fingerprint(two)
    assert len(source_fingerprint(one)) == 64


def test_fingerprint_changes_with_size_mtime_and_name(tmp_path: Path) -> None:
    files = _files(tmp_path / "d")
    before = source_fingerprint(files)
    os.utime(files[1], ns=(5, 5))
    touched = source_fingerprint(files)
    files[0].write_bytes(b"123456")
    os.utime(files[0], ns=(1_000_000_000, 1_000_000_000))
    grown = source_fingerprint(files)
    assert len({before, touched, grown}) == 3
    renamed = files[1].rename(files[1].with_name("z.png"))
    assert source_fingerprint([files[0], renamed]) != grown
    with pytest.raises(FileNotFoundError):
        source_fingerprint([tmp_path / "missing.png"])


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FEWSHOT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "fewshot"


def test_cache_goes_next_to_writable_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "default"))
    data = tmp_path / "data"
    data.mkdir()
    assert cache_dir_for(data) == data / ".fewshot_cache"
    assert cache_dir_for(data, tmp_path / "explicit") == tmp_path / "explicit"
    assert cache_dir_for(None) == tmp_path / "default"
    assert cache_dir_for(tmp_path / "absent") == tmp_path / "default"
    data.chmod(0o555)  # marked read-only: never written into, even by root
    try:
        assert cache_dir_for(data) == tmp_path / "default"
    finally:
        data.chmod(0o755)
