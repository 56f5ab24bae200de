"""tieredImageNet loader: each real layout end to end on tiny synthetic files holding every published class, the
embedded split, super-classes, the cache, bad input."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic_datasets import png_bytes, tiered_labels, write_tiered_original
from test_miniimagenet import py2_pickle

from episodes.datasets import tiered_imagenet
from episodes.datasets.images import resize_array
from episodes.datasets.miniimagenet import IMAGENET_MEAN
from episodes.datasets.npz import read_npz_array
from episodes.datasets.tiered_imagenet import load_tiered_imagenet, read_tiered_split

COUNTS = {"train": (351, 20), "val": (97, 6), "test": (160, 8)}
SIDE = 12


def grouped(images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The images of each class in file order, as the loader must return them."""
    return {name: images[[i for i, n in enumerate(names) if n == name]] for name in sorted(set(names))}


def assert_holds(dataset, groups: dict[str, np.ndarray]) -> None:
    assert dataset.class_names == tuple(groups)
    assert dataset.mean == IMAGENET_MEAN and dataset.images.dtype == torch.uint8
    for c, name in enumerate(dataset.class_names):
        got = dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, groups[name])


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The original release of all three splits, 2 images per class, as learn2learn extracts it (tiered-imagenet/)."""
    root = tmp_path_factory.mktemp("tiered")
    return root, write_tiered_original(root / "tiered-imagenet", per_class=2, side=SIDE)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_original_release_gives_every_published_class_with_its_super_class(release, split: str,
                                                                           tmp_path: Path) -> None:
    root, written = release
    dataset = load_tiered_imagenet(root, split=split, image_size=SIDE, cache_dir=tmp_path)
    classes, supers = COUNTS[split]
    assert dataset.num_classes == classes and dataset.class_sizes.tolist() == [2] * classes
    assert len({name.split("/")[0] for name in dataset.class_names}) == supers
    assert set(dataset.class_names) == {c.class_name for c in read_tiered_split(split)}
    assert dataset.name == f"tiered-imagenet/{split}"
    assert_holds(dataset, grouped(*written[split]))  # PNG round trip: exact


def test_embedded_split_is_ren_et_al(release) -> None:
    wnids, supers = set(), {}
    for split, (classes, n_supers) in COUNTS.items():
        rows = read_tiered_split(split)
        assert len(rows) == classes and len({r.wnid for r in rows}) == classes
        supers[split] = {r.super_wnid for r in rows}
        assert len(supers[split]) == n_supers
        wnids |= {r.wnid for r in rows}
    assert len(wnids) == 608 and not (supers["train"] & supers["val"] or supers["train"] & supers["test"])
    terrier = next(r for r in read_tiered_split("train") if r.wnid == "n02094433")
    assert (terrier.name, terrier.super_wnid, terrier.super_name) == ("Yorkshire terrier", "n02092468", "terrier")
    assert terrier.class_name == "n02092468/n02094433"


def test_python2_pickles_of_the_release(tmp_path: Path) -> None:
    """The release was written by Python 2 (str fields are byte strings, labels plain lists here)."""
    rng = np.random.default_rng(3)
    labels, names = tiered_labels("val", 1, rng)
    images = rng.integers(0, 256, (len(names), SIDE, SIDE, 3), dtype=np.uint8)
    pngs = [np.frombuffer(png_bytes(image), dtype=np.uint8) for image in images]
    (tmp_path / "val_images_png.pkl").write_bytes(py2_pickle(pngs))
    labels = {**labels, "label_specific": labels["label_specific"].tolist(),
              "label_general": labels["label_general"].tolist()}
    (tmp_path / "val_labels.pkl").write_bytes(py2_pickle(labels))
    dataset = load_tiered_imagenet(tmp_path, split="val", fmt="original", cache_dir=tmp_path / "cache", image_size=SIDE)
    assert_holds(dataset, grouped(images, names))


@pytest.mark.parametrize("compressed", [False, True])
def test_rfs_npz_is_bgr_and_names_no_class(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(4)
    labels = [448 + k for k in rng.permutation(np.repeat(np.arange(160), 2))]  # MetaOptNet's test labels: offset ints
    images = rng.integers(0, 256, (len(labels), SIDE, SIDE, 3), dtype=np.uint8)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "test_images.npz", images=images[..., ::-1])  # stored in OpenCV's BGR order
    (tmp_path / "test_labels.pkl").write_bytes(pickle.dumps({"labels": labels}))
    dataset = load_tiered_imagenet(tmp_path, split="test", image_size=SIDE, cache_dir=tmp_path / "cache")
    assert dataset.class_names[0] == "class0448" and dataset.num_classes == 160
    assert_holds(dataset, grouped(images, [f"class{label:04d}" for label in labels]))


def test_rfs_npz_beside_the_original_labels_keeps_names_and_resizes(tmp_path: Path) -> None:
    """The authors' own decompress step writes {split}_images.npz (BGR) next to the original labels."""
    rng = np.random.default_rng(5)
    labels, names = tiered_labels("val", 1, rng)
    images = rng.integers(0, 256, (len(names), SIDE, SIDE, 3), dtype=np.uint8)
    np.savez(tmp_path / "val_images.npz", images=np.ascontiguousarray(images[..., ::-1]))
    (tmp_path / "val_labels.pkl").write_bytes(pickle.dumps(labels))
    dataset = load_tiered_imagenet(tmp_path, split="val", image_size=8, cache_dir=tmp_path / "cache")
    assert_holds(dataset, grouped(np.stack([resize_array(image, (8, 8)) for image in images]), names))


def write_folder(root: Path, split: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    groups = {}
    for c in read_tiered_split(split):
        folder = root / split / c.wnid
        folder.mkdir(parents=True)
        image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{c.wnid}_1.png")
        Image.fromarray(image).save(folder / f"{c.wnid}_2.jpg", quality=90)
        groups[c.class_name] = np.stack([image, np.asarray(Image.open(folder / f"{c.wnid}_2.jpg").convert("RGB"))])
    return groups


def test_image_folders_of_the_published_split(tmp_path: Path) -> None:
    groups = write_folder(tmp_path, "val", np.random.default_rng(6))
    dataset = load_tiered_imagenet(tmp_path, split="val", image_size=SIDE, cache_dir=tmp_path / ".cache")
    assert_holds(dataset, groups)  # PNG exact, JPEG as pillow decodes it


def test_cache_is_reused(release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, written = release
    first = load_tiered_imagenet(root, split="val", image_size=8, cache_dir=tmp_path)
    images, names = written["val"]
    assert_holds(first, grouped(np.stack([resize_array(image, (8, 8)) for image in images]), names))

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tiered_imagenet, "_build_original", refuse)
    second = load_tiered_imagenet(root, split="val", image_size=8, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names


@pytest.fixture()
def val_copy(release, tmp_path: Path) -> Path:
    """A private copy of the release's val files, to damage."""
    root, _ = release
    for name in ("val_images_png.pkl", "val_labels.pkl"):
        shutil.copy(root / "tiered-imagenet" / name, tmp_path / name)
    return tmp_path


def rewrite_labels(root: Path, change) -> None:
    labels = pickle.loads((root / "val_labels.pkl").read_bytes())
    change(labels)
    (root / "val_labels.pkl").write_bytes(pickle.dumps(labels))


def test_truncated_pickles_are_named(val_copy: Path) -> None:
    for name in ("val_labels.pkl", "val_images_png.pkl"):
        path = val_copy / name
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        with pytest.raises((ValueError, pickle.UnpicklingError), match=name):
            load_tiered_imagenet(val_copy, split="val", cache_dir=val_copy / "cache")
        path.write_bytes(data)
    np.savez(val_copy / "test_images.npz", images=np.zeros((160, SIDE, SIDE, 3), np.uint8))
    (val_copy / "test_labels.pkl").write_bytes(pickle.dumps({"labels": list(range(160))}))
    npz = (val_copy / "test_images.npz").read_bytes()
    (val_copy / "test_images.npz").write_bytes(npz[:300])
    with pytest.raises(ValueError, match=r"test_images\.npz is truncated or not an \.npz of arrays"):
        load_tiered_imagenet(val_copy, split="test", cache_dir=val_copy / "cache")
    assert not any((val_copy / "cache").glob("*"))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused(val_copy: Path) -> None:
    marker = val_copy / "pwned"
    rewrite_labels(val_copy, lambda labels: labels.update(label_specific=_Exploit(marker)))
    with pytest.raises(pickle.UnpicklingError, match=r"val_labels.pkl: refusing to load global (posix|nt|os)\.system"):
        load_tiered_imagenet(val_copy, split="val", cache_dir=val_copy / "cache")
    assert not marker.exists() and not any((val_copy / "cache").glob("*"))


def test_missing_files_say_what_to_copy(val_copy: Path) -> None:
    (val_copy / "val_labels.pkl").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_labels\.pkl not found: the labels of val_images_png\.pkl"):
        load_tiered_imagenet(val_copy, split="val")
    with pytest.raises(FileNotFoundError, match="no tieredImageNet train data"):
        load_tiered_imagenet(val_copy, split="train")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_tiered_imagenet(val_copy / "nowhere", split="train")
    with pytest.raises(FileNotFoundError, match=r"val_images\.npz not found"):
        load_tiered_imagenet(val_copy, split="val", fmt="rfs")
    with pytest.raises(ValueError, match="unknown tieredImageNet split"):
        load_tiered_imagenet(val_copy, split="trainval")
    with pytest.raises(ValueError, match="unknown tieredImageNet format"):
        load_tiered_imagenet(val_copy, split="val", fmt="png")
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_tiered_imagenet(val_copy, split="val", image_size=0)


@pytest.mark.parametrize(("change", "message"), [
    (lambda lb: lb["label_specific_str"].__setitem__(0, "Yorkshire terrier"),  # a train class in the val file
     r"names 1 classes that are not in the published tieredImageNet val split \(e.g. \['Yorkshire terrier'\]\)"),
    (lambda lb: lb.update(label_specific=np.where(lb["label_specific"] == 0, 1, lb["label_specific"])),
     "the published val split has 97 classes, 1 of them without images here"),
    (lambda lb: lb["label_general_str"].reverse(), "have super-class .* but the published split puts the class"),
    (lambda lb: lb.pop("label_general"), r"missing \['label_general'\]"),
    (lambda lb: lb.update(label_specific=lb["label_specific"] + 97), r"label_specific holds values outside \[0, 97\)"),
])
def test_labels_that_do_not_match_the_published_split_are_refused(val_copy: Path, change, message: str) -> None:
    rewrite_labels(val_copy, change)
    with pytest.raises(ValueError, match=message):
        load_tiered_imagenet(val_copy, split="val", cache_dir=val_copy / "cache")
    assert not any((val_copy / "cache").glob("*"))


def test_a_corrupt_png_is_named(val_copy: Path) -> None:
    pngs = pickle.loads((val_copy / "val_images_png.pkl").read_bytes())
    pngs[3] = pngs[3][:40]
    (val_copy / "val_images_png.pkl").write_bytes(pickle.dumps(pngs))
    with pytest.raises(ValueError, match=r"corrupt or truncated image val_images_png.pkl\[3\]"):
        load_tiered_imagenet(val_copy, split="val", cache_dir=val_copy / "cache")


def test_rfs_labels_of_another_split_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "val_images.npz", images=np.zeros((3, SIDE, SIDE, 3), np.uint8))
    (tmp_path / "val_labels.pkl").write_bytes(pickle.dumps({"labels": [0, 1, 2]}))
    with pytest.raises(ValueError, match="3 classes, but the published tieredImageNet val split has 97"):
        load_tiered_imagenet(tmp_path, split="val", cache_dir=tmp_path / "cache")


def test_folders_missing_or_outside_the_split_are_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, "val", np.random.default_rng(7))
    first = read_tiered_split("val")[0].wnid
    shutil.rmtree(tmp_path / "val" / first)
    with pytest.raises(FileNotFoundError, match=rf"lacks 1 of the 97 class folders .*'{first}'"):
        load_tiered_imagenet(tmp_path, split="val")
    (tmp_path / "val" / first).mkdir()
    with pytest.raises(ValueError, match=r"holds no \.png/\.jpg/\.jpeg images"):
        load_tiered_imagenet(tmp_path, split="val")
    (tmp_path / "val" / "n01530575").mkdir()  # a train class
    with pytest.raises(ValueError, match=r"class folders outside the published val split: \['n01530575'\]"):
        load_tiered_imagenet(tmp_path, split="val")


def test_npz_reader_maps_stored_arrays_and_never_unpickles(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    np.savez(tmp_path / "a.npz", images=data, fortran=np.asfortranarray(data))
    mapped = read_npz_array(tmp_path / "a.npz", "images")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, data)
    np.testing.assert_array_equal(read_npz_array(tmp_path / "a.npz", "fortran"), data)
    np.savez_compressed(tmp_path / "b.npz", images=data)
    np.testing.assert_array_equal(read_npz_array(tmp_path / "b.npz", "images"), data)
    with pytest.raises(ValueError, match=r"a\.npz: no array 'labels' \(found \['images', 'fortran'\]\)"):
        read_npz_array(tmp_path / "a.npz", "labels")
    np.savez(tmp_path / "c.npz", images=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"c\.npz is truncated or not an \.npz of arrays .*object array"):
        read_npz_array(tmp_path / "c.npz", "images")
