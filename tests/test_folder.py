"""Image-folder loader: pixels and classes from synthetic folders, seeded class splits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.datasets import folder
from episodes.datasets.folder import assign_classes, load_image_folder
from episodes.datasets.images import resize_array

SIZES = {"cat": 3, "ant": 5, "dog": 2, "emu": 4}
RGB = {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}


def make_folder(root: Path, *, side: int = 8, mode: str = "RGB") -> dict[str, list[np.ndarray]]:
    """PNG class folders of SIZES images each; returns the pixels of each class in file-name order."""
    rng = np.random.default_rng(0)
    pixels: dict[str, list[np.ndarray]] = {}
    for name, count in SIZES.items():
        (root / name).mkdir(parents=True)
        pixels[name] = []
        for i in range(count):
            shape = (side, side, 3) if mode == "RGB" else (side, side)
            image = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(image).save(root / name / f"img{i:02d}{'.PNG' if i == 0 else '.png'}")
            pixels[name].append(image)
    (root / "ant" / "notes.txt").write_text("not an image")
    return pixels


def class_pixels(dataset, c: int) -> np.ndarray:
    return dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]].permute(0, 2, 3, 1).numpy()


def test_all_classes_with_their_pixels_and_unequal_sizes(tmp_path: Path) -> None:
    pixels = make_folder(tmp_path / "data")
    dataset = load_image_folder(tmp_path / "data", image_size=8, cache_dir=tmp_path / "cache", **RGB)
    assert dataset.class_names == ("ant", "cat", "dog", "emu")
    assert dataset.class_sizes.tolist() == [5, 3, 2, 4]
    assert dataset.name == "data" and dataset.mean == (0.5, 0.5, 0.5)
    for c, name in enumerate(dataset.class_names):
        np.testing.assert_array_equal(class_pixels(dataset, c), np.stack(pixels[name]))


def test_greyscale_resized_and_cache_beside_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = make_folder(tmp_path, side=10, mode="L")
    first = load_image_folder(tmp_path, image_size=6, channels=1, mean=(0.5,), std=(0.5,))
    assert first.images.shape == (14, 1, 6, 6)
    expected = np.stack([resize_array(p, (6, 6)) for p in pixels["cat"]])
    np.testing.assert_array_equal(class_pixels(first, 1)[..., 0], expected)
    assert (tmp_path / ".fewshot_cache").is_dir()  # the hidden cache folder is not taken for a class

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(folder, "decode_files", refuse)
    second = load_image_folder(tmp_path, image_size=6, channels=1, mean=(0.5,), std=(0.5,))
    assert second.class_names == first.class_names and torch.equal(second.images, first.images)


def test_explicit_class_lists(tmp_path: Path) -> None:
    pixels = make_folder(tmp_path / "data")
    listed = load_image_folder(tmp_path / "data", image_size=8, classes=["emu", "ant"], cache_dir=tmp_path / "c",
                               **RGB)
    assert listed.class_names == ("emu", "ant")
    np.testing.assert_array_equal(class_pixels(listed, 0), np.stack(pixels["emu"]))
    splits = {"train": ["ant", "cat"], "test": ["dog", "emu"]}
    test = load_image_folder(tmp_path / "data", image_size=8, classes=splits, split="test",
                             cache_dir=tmp_path / "c", **RGB)
    assert test.class_names == ("dog", "emu") and test.name == "data/test"


def test_fraction_splits_are_disjoint_complete_and_seeded() -> None:
    names = [f"c{i:02d}" for i in range(50)]
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    parts = assign_classes(names, fractions, seed=0)
    assert [len(p) for p in parts.values()] == [30, 10, 10]
    assert sorted(name for part in parts.values() for name in part) == names
    assert assign_classes(list(reversed(names)), fractions, seed=0) == parts
    assert assign_classes(names, fractions, seed=1) != parts
    assert parts["train"] != names[:30]  # shuffled, not cut in name order


def test_fraction_split_of_a_folder(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    fractions = {"train": 0.5, "test": 0.5}
    loaded = {split: load_image_folder(tmp_path / "data", image_size=8, fractions=fractions, split=split, seed=3,
                                       cache_dir=tmp_path / "c", **RGB) for split in fractions}
    expected = assign_classes(list(SIZES), fractions, seed=3)
    assert {s: list(d.class_names) for s, d in loaded.items()} == expected


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"classes": ["ant", "yak"]}, ValueError, r"unknown: \['yak'\]"),
    ({"classes": ["ant", "ant"]}, ValueError, "must be distinct"),
    ({"split": "train"}, ValueError, "needs classes= as a mapping"),
    ({"classes": {"train": ["ant"]}, "split": "val"}, ValueError, "is not one of the class lists"),
    ({"fractions": {"train": 0.5, "test": 0.4}, "split": "train"}, ValueError, "must sum to 1"),
    ({"fractions": {"train": 0.9, "test": 0.1}, "split": "test"}, ValueError, "gives split 'test' no class"),
    ({"fractions": {"train": 1.0}}, ValueError, "needs split="),
    ({"channels": 2}, ValueError, "channels must be 1"),
    ({"mean": (0.5,)}, ValueError, "mean and std need 3 entries"),
    ({"image_size": 0}, ValueError, "image_size must be a positive int"),
])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    make_folder(tmp_path / "data")
    settings = {"image_size": 8, "cache_dir": tmp_path / "c", **RGB, **kwargs}
    with pytest.raises(error, match=message):
        load_image_folder(tmp_path / "data", **settings)


def test_bad_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_image_folder(tmp_path / "missing", image_size=8, **RGB)
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        load_image_folder(tmp_path / "flat", image_size=8, **RGB)
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "yak").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['yak'\] .* hold no"):
        load_image_folder(tmp_path / "data", image_size=8, cache_dir=tmp_path / "c", **RGB)


def test_corrupt_image_is_refused_and_leaves_no_cache(tmp_path: Path) -> None:
    make_folder(tmp_path / "data")
    (tmp_path / "data" / "dog" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"corrupt or truncated image .*img01.png"):
        load_image_folder(tmp_path / "data", image_size=8, cache_dir=tmp_path / "c", **RGB)
    assert not any((tmp_path / "c").glob("*"))
