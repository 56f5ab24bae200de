"""CUB-200-2011 loader: the official archive layout end to end on tiny synthetic files holding all 200 classes,
Chen et al.'s split, bounding-box crops, the cache, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_datasets import write_cub

from episodes.datasets import cub
from episodes.datasets.cub import chen_split, crop_to_box, load_cub, split_of_class
from episodes.datasets.images import resize_array
from episodes.datasets.miniimagenet import IMAGENET_MEAN

SIDE = 12


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The extracted archive, 2 JPEGs per class."""
    root = tmp_path_factory.mktemp("cub")
    return root, write_cub(root, per_class=2, side=SIDE)


def pillow(path: Path, size: int) -> np.ndarray:
    return resize_array(np.asarray(Image.open(path).convert("RGB")), (size, size))


def test_split_rule_is_chen_et_al() -> None:
    """write_CUB_filelist.py: sorted class folders i = 0..199, base i % 2 == 0, val i % 4 == 1, novel i % 4 == 3."""
    assert [split_of_class(i) for i in range(1, 9)] == ["train", "val", "train", "test"] * 2
    train, val, test = chen_split("train"), chen_split("val"), chen_split("test")
    assert (len(train), len(val), len(test)) == (100, 50, 50) and not set(train) & set(val) | set(train) & set(test)
    assert train[:2] == ["001.Black_footed_Albatross", "003.Sooty_Albatross"] and train[-1] == "199.Winter_Wren"
    assert val[:2] == ["002.Laysan_Albatross", "006.Least_Auklet"] and val[-1] == "198.Rock_Wren"
    assert test[:2] == ["004.Groove_billed_Ani", "008.Rhinoceros_Auklet"] and test[-1] == "200.Common_Yellowthroat"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_split_has_its_classes_and_pillows_pixels(archive, split: str, tmp_path: Path) -> None:
    root, files = archive
    dataset = load_cub(root, split=split, image_size=SIDE, cache_dir=tmp_path)
    assert dataset.class_names == tuple(chen_split(split))
    assert dataset.class_sizes.tolist() == [2] * len(chen_split(split))
    assert dataset.name == f"cub/{split}" and dataset.mean == IMAGENET_MEAN and dataset.images.dtype == torch.uint8
    for c, name in enumerate(dataset.class_names):
        expected = np.stack([pillow(f, SIDE) for f in files if f.parent.name == name])  # images.txt order
        got = dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, expected)


def test_resize_and_cache_reuse(archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, files = archive
    first = load_cub(root / "CUB_200_2011", split="val", image_size=8, cache_dir=tmp_path)  # the folder itself
    np.testing.assert_array_equal(first.images[0].permute(1, 2, 0).numpy(), pillow(files[2], 8))  # 002's first

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cub, "_decode", refuse)
    second = load_cub(root / "CUB_200_2011", split="val", image_size=8, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names


def bright_box(class_id: int, j: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """A dark 48x40 image with a white 16x16 box at x=16, y=8 (on JPEG block boundaries, so it survives exactly)."""
    image = np.full((40, 48, 3), 10, dtype=np.uint8)
    image[8:24, 16:32] = 255
    return image, (16.0, 8.0, 16.0, 16.0)


def test_bbox_crop_keeps_exactly_the_box(tmp_path: Path) -> None:
    write_cub(tmp_path, make_image=bright_box)
    cropped = load_cub(tmp_path, split="test", image_size=16, bbox_crop=True, cache_dir=tmp_path / "cache")
    assert cropped.name == "cub/test/bbox" and cropped.num_classes == 50
    assert bool((cropped.images == 255).all())
    whole = load_cub(tmp_path, split="test", image_size=16, cache_dir=tmp_path / "cache")
    assert int(whole.images.min()) < 20 and not torch.equal(whole.images, cropped.images)


def test_crop_rounds_outwards_and_clips() -> None:
    image = np.arange(10 * 8).reshape(10, 8, 1)
    np.testing.assert_array_equal(crop_to_box(image, (2.0, 3.0, 4.0, 5.0)), image[3:8, 2:6])
    np.testing.assert_array_equal(crop_to_box(image, (1.5, 2.7, 3.0, 4.1)), image[2:7, 1:5])  # ceil(6.8) = 7
    np.testing.assert_array_equal(crop_to_box(image, (-3.0, 6.0, 20.0, 20.0)), image[6:10, 0:8])
    with pytest.raises(ValueError, match="holds no pixel"):
        crop_to_box(image, (9.0, 0.0, 2.0, 2.0), name="x.jpg")


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    write_cub(tmp_path, side=SIDE)
    return tmp_path / "CUB_200_2011"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_class_list_out_of_the_official_order_is_refused(copy: Path) -> None:
    edit(copy / "classes.txt", "1 001.Black_footed_Albatross\n2 002.Laysan_Albatross",
         "1 002.Laysan_Albatross\n2 001.Black_footed_Albatross")
    with pytest.raises(ValueError, match=r"not the official CUB-200-2011 class list \(200 classes; ids \[1, 2\]"):
        load_cub(copy.parent, split="train")


def test_missing_and_inconsistent_files_are_named(copy: Path) -> None:
    victim = next((copy / "images" / "004.Groove_billed_Ani").iterdir())
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=rf"names 1 images of the test split absent .*{victim.name}"):
        load_cub(copy.parent, split="test")
    load_cub(copy.parent, split="val", image_size=SIDE, cache_dir=copy / "cache")  # other splits do not need it
    edit(copy / "images.txt", "4 004.Groove_billed_Ani/", "4 005.Crested_Auklet/")
    with pytest.raises(ValueError, match=r"image 4 \(005.Crested_Auklet/.*\) has class 4 .* folder is 004"):
        load_cub(copy.parent, split="test")
    text = (copy / "images.txt").read_text().splitlines()
    (copy / "images.txt").write_text("\n".join(line for line in text if not line.startswith("4 ")) + "\n")
    with pytest.raises(ValueError, match=r"lists no image of 1 class\(es\) of the test split .*004.Groove_billed_Ani"):
        load_cub(copy.parent, split="test")
    (copy / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_class_labels\.txt not found; root must hold the extracted"):
        load_cub(copy.parent, split="test")
    with pytest.raises(FileNotFoundError, match="no CUB-200-2011 in"):
        load_cub(copy / "images", split="test")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_cub(copy / "nowhere", split="test")


def test_bad_metadata_and_options_are_refused(copy: Path) -> None:
    edit(copy / "bounding_boxes.txt", "\n3 ", "\n3 x ")
    with pytest.raises(ValueError, match=r"bounding_boxes.txt line 3: expected '<id> ' and 4 field"):
        load_cub(copy.parent, split="train", bbox_crop=True)
    load_cub(copy.parent, split="train", image_size=SIDE, cache_dir=copy / "cache")  # boxes unread without the crop
    with pytest.raises(ValueError, match="unknown CUB split"):
        load_cub(copy.parent, split="novel")
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_cub(copy.parent, split="train", image_size=0)
    with pytest.raises(ValueError, match="bbox_crop must be True or False"):
        load_cub(copy.parent, split="train", bbox_crop="yes")


def test_corrupt_jpeg_is_named_and_leaves_no_cache(copy: Path) -> None:
    victim = next((copy / "images" / "002.Laysan_Albatross").iterdir())
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"corrupt or truncated image .*{victim.name}"):
        load_cub(copy.parent, split="val", cache_dir=copy / "cache")
    assert not (copy / "cache").exists() or not any((copy / "cache").glob("*"))
    shutil.rmtree(copy / "images" / "002.Laysan_Albatross")
    with pytest.raises(FileNotFoundError, match="names 1 images of the val split absent"):
        load_cub(copy.parent, split="val", cache_dir=copy / "cache")
