"""The loaders' shared path: key and fingerprint -> decoded-array cache -> FewShotDataset; the standard layout."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import FewShotDataset
from episodes.datasets import group_by_class, load_cached_dataset
from episodes.datasets.cache import decode_names, source_fingerprint
from episodes.datasets.images import resize_array


def _images(n: int, side: int = 4) -> np.ndarray:
    """(n, side, side, 3) uint8 images; image i is filled with i."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, side, side, 3)).copy()


def test_group_by_class_sorts_classes_by_name_and_keeps_order_within_a_class() -> None:
    names = ["dog", "cat", "dog", "ant", "cat"]
    arrays = group_by_class(_images(5), names, size=4)
    assert decode_names(arrays["class_names"]) == ["ant", "cat", "dog"]
    assert arrays["labels"].tolist() == [0, 1, 1, 2, 2]
    assert arrays["images"].shape == (5, 3, 4, 4) and arrays["images"].dtype == torch.uint8
    assert arrays["images"][:, 0, 0, 0].tolist() == [3, 1, 4, 0, 2]  # stable within each class
    resized = group_by_class(_images(5, side=6), names, size=3)
    assert resized["images"].shape == (5, 3, 3, 3)
    np.testing.assert_array_equal(resized["images"][0].permute(1, 2, 0).numpy(), resize_array(_images(5, 6)[3], (3, 3)))


def test_builds_once_then_loads_the_cache_until_a_source_changes(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"v1")
    calls = []

    def build() -> dict[str, torch.Tensor]:
        calls.append(1)
        return group_by_class(_images(4), ["b", "a", "b", "a"], size=4)

    def load() -> FewShotDataset:
        return load_cached_dataset(key={"loader": "test", "version": 1}, sources=[source], root=tmp_path,
                                   cache_dir=None, cache_name="test-cache", build=build, name="test/all",
                                   mean=(0.5,) * 3, std=(0.25,) * 3)

    first = load()
    assert first.class_names == ("a", "b") and first.class_sizes.tolist() == [2, 2]
    assert first.images[:, 0, 0, 0].tolist() == [1, 3, 0, 2]
    assert (first.name, first.mean, first.std) == ("test/all", (0.5,) * 3, (0.25,) * 3)
    cache = tmp_path / ".fewshot_cache" / "test-cache.pt"
    stored = torch.load(cache, weights_only=True)
    assert json.loads(stored["key"]) == {"loader": "test", "version": 1, "source": source_fingerprint([source])}
    second = load()
    assert len(calls) == 1 and torch.equal(second.images, first.images) and second.class_names == first.class_names
    os.utime(source, ns=(0, 0))  # a touched source is another source
    load()
    assert len(calls) == 2


def test_content_id_key_in_name_and_custom_classes(tmp_path: Path) -> None:
    def build() -> dict[str, torch.Tensor]:
        return {"images": torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1)}

    dataset = load_cached_dataset(key={"loader": "test", "version": 1, "classes": ["y", "x"]}, sources="sha-of-content",
                                  root=None, cache_dir=tmp_path, cache_name="named", key_in_name=True, build=build,
                                  classes=lambda arrays: (torch.tensor([1, 0, 1]), ["y", "x"]), name="t",
                                  mean=(0.0,), std=(1.0,))
    assert dataset.class_names == ("y", "x") and dataset.images.flatten().tolist() == [1, 0, 2]
    key = {"loader": "test", "version": 1, "classes": ["y", "x"], "source": "sha-of-content"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert [p.name for p in tmp_path.iterdir()] == [f"named-{digest}.pt"]


def test_a_key_holding_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not hold 'source'"):
        load_cached_dataset(key={"loader": "test", "source": "x"}, sources="y", root=None, cache_dir=tmp_path,
                            cache_name="c", build=dict, name="t", mean=(0.0,), std=(1.0,))
    assert not any(tmp_path.iterdir())
