"""Mini-ImageNet loader: each real file layout end to end on tiny synthetic files, the safe unpickler, bad input."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.datasets import miniimagenet
from episodes.datasets.images import resize_array
from episodes.datasets.miniimagenet import IMAGENET_MEAN, load_mini_imagenet, read_ravi_split
from episodes.datasets.pickles import read_learn2learn_pickle, read_pickle_dict, read_rfs_pickle
from episodes.datasets.safe_pickle import load_pickle

WNIDS = ["n04596742", "n01532829", "n03017168", "n02110063"]  # deliberately unsorted
PER_CLASS = 5
SIDE = 84


def synthetic_images(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(20, 84, 84, 3) uint8 images, class-interleaved, and the wnid of each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(WNIDS) * PER_CLASS, SIDE, SIDE, 3), dtype=np.uint8)
    return images, [WNIDS[i % len(WNIDS)] for i in range(len(images))]


def expected_by_class(images: np.ndarray, names: list[str]) -> dict[str, list[np.ndarray]]:
    groups: dict[str, list[np.ndarray]] = {w: [] for w in sorted(WNIDS)}
    for image, name in zip(images, names, strict=True):
        groups[name].append(image)
    return groups


def assert_dataset_holds(dataset, groups: dict[str, list[np.ndarray]]) -> None:
    assert dataset.class_names == tuple(sorted(WNIDS))
    assert dataset.class_sizes.tolist() == [PER_CLASS] * len(WNIDS)
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1] == 3
    assert dataset.mean == IMAGENET_MEAN
    for c, wnid in enumerate(dataset.class_names):
        got = dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, np.stack(groups[wnid]))


def py2_pickle(obj: object) -> bytes:
    """What Python 2 + numpy 1.x write with protocol 2 (str fields are byte strings)."""
    out = bytearray(b"\x80\x02")

    def string(data: bytes) -> None:
        out.extend(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data)

    def write(value: object) -> None:
        if isinstance(value, dict):
            out.extend(b"}")
            for key, item in value.items():
                write(key)
                write(item)
                out.extend(b"s")
        elif isinstance(value, list):
            out.extend(b"](")
            for item in value:
                write(item)
            out.extend(b"e")
        elif isinstance(value, str):
            string(value.encode())
        elif isinstance(value, int):
            out.extend(b"J" + struct.pack("<i", value))
        else:
            assert isinstance(value, np.ndarray) and value.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01(")
            for dim in value.shape:
                out.extend(b"J" + struct.pack("<i", dim))
            out.extend(b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(value.tobytes())
            out.extend(b"tb")

    write(obj)
    out.extend(b".")
    return bytes(out)


def test_learn2learn_pickle_end_to_end(tmp_path: Path) -> None:
    images, names = synthetic_images()
    class_dict = {w: [i for i, n in enumerate(names) if n == w] for w in WNIDS}
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as handle:
        pickle.dump({"image_data": images, "class_dict": class_dict}, handle, protocol=4)
    dataset = load_mini_imagenet(tmp_path, split="train", cache_dir=tmp_path / "cache")
    assert dataset.name == "mini-imagenet/train"
    assert_dataset_holds(dataset, expected_by_class(images, names))


def test_rfs_python2_pickle_end_to_end(tmp_path: Path) -> None:
    images, names = synthetic_images(1)
    labels = [80 + WNIDS.index(n) for n in names]
    payload = {"data": images, "labels": labels, "catname2label": {w: 80 + i for i, w in enumerate(WNIDS)}}
    (tmp_path / "miniImageNet_category_split_test.pickle").write_bytes(py2_pickle(payload))
    dataset = load_mini_imagenet(tmp_path, split="test", fmt="rfs", cache_dir=tmp_path / "cache")
    assert_dataset_holds(dataset, expected_by_class(images, names))


def test_torchmeta_hdf5_end_to_end(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py", reason="the torchmeta format is read with h5py (optional)")
    images, names = synthetic_images(4)
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    groups = expected_by_class(images, names)
    with h5py.File(folder / "test_data.hdf5", "w") as handle:
        datasets = handle.create_group("datasets")
        for wnid in WNIDS:
            datasets.create_dataset(wnid, data=np.stack(groups[wnid]))
    (folder / "test_labels.json").write_text(json.dumps(sorted(WNIDS)))
    dataset = load_mini_imagenet(tmp_path, split="test", cache_dir=tmp_path / "cache")
    assert_dataset_holds(dataset, groups)


def write_images_folder(root: Path, *, nested: bool = False) -> tuple[np.ndarray, list[str]]:
    images, names = synthetic_images(2)
    lines = ["filename,label"]
    for i, (image, wnid) in enumerate(zip(images, names, strict=True)):
        filename = f"{wnid}{i:08d}.jpg"
        folder = root / "images" / (wnid if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / filename, quality=90)
        images[i] = np.asarray(Image.open(folder / filename).convert("RGB"))  # what decoding must give
        lines.append(f"{filename},{wnid}")
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    return images, names


@pytest.mark.parametrize("nested", [False, True])
def test_images_folder_with_split_csv_end_to_end(tmp_path: Path, nested: bool) -> None:
    images, names = write_images_folder(tmp_path, nested=nested)
    dataset = load_mini_imagenet(tmp_path, split="val", cache_dir=tmp_path / "cache")
    assert_dataset_holds(dataset, expected_by_class(images, names))


def test_resized_and_cached_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, names = synthetic_images(3)
    class_dict = {w: [i for i, n in enumerate(names) if n == w] for w in WNIDS}
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as handle:
        pickle.dump({"image_data": images, "class_dict": class_dict}, handle)
    first = load_mini_imagenet(tmp_path, split="val", image_size=32, cache_dir=tmp_path / "cache")
    groups = {w: [resize_array(im, (32, 32)) for im in ims] for w, ims in expected_by_class(images, names).items()}
    assert first.images.shape == (20, 3, 32, 32)
    assert_dataset_holds(first, groups)

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(miniimagenet, "_build_learn2learn", refuse)
    second = load_mini_imagenet(tmp_path, split="val", image_size=32, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names


def test_pickle_readers_give_the_stored_images_and_each_class_name(tmp_path: Path) -> None:
    images, names = synthetic_images(5)
    l2l = tmp_path / "l2l.pkl"
    l2l.write_bytes(pickle.dumps({"image_data": images,
                                  "class_dict": {w: [i for i, n in enumerate(names) if n == w] for w in WNIDS}}))
    got, got_names = read_learn2learn_pickle(l2l)
    np.testing.assert_array_equal(got, images)
    assert got_names == names
    rfs = tmp_path / "rfs.pickle"
    labels = [80 + WNIDS.index(n) for n in names]
    rfs.write_bytes(py2_pickle({"data": images, "labels": labels, "catname2label": {WNIDS[0]: 80, WNIDS[1]: 81}}))
    got, got_names = read_rfs_pickle(rfs)
    np.testing.assert_array_equal(got, images)
    assert got_names == [n if n in WNIDS[:2] else f"class{80 + WNIDS.index(n):04d}" for n in names]

    l2l.write_bytes(pickle.dumps({"image_data": images, "class_dict": {"a": [0, 0]}}))
    with pytest.raises(ValueError, match="row 0 of 'a' is out of range or listed twice"):
        read_learn2learn_pickle(l2l)
    l2l.write_bytes(pickle.dumps({"image_data": images, "class_dict": {"a": [0]}}))
    with pytest.raises(ValueError, match="19 images belong to no class"):
        read_learn2learn_pickle(l2l)
    rfs.write_bytes(pickle.dumps({"data": images.astype(np.float32), "labels": labels}))
    with pytest.raises(ValueError, match=r"'data' must be \(N, H, W, 3\) uint8 images"):
        read_rfs_pickle(rfs)
    rfs.write_bytes(pickle.dumps({"data": images, "labels": labels[:-1]}))
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        read_rfs_pickle(rfs)
    with pytest.raises(ValueError, match=r"expected a dict with keys \['data', 'extra'\]"):
        read_pickle_dict(rfs, keys=("data", "extra"))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as handle:
        pickle.dump({"image_data": _Exploit(marker), "class_dict": {}}, handle)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|nt|os)\.system"):
        load_mini_imagenet(tmp_path, split="test", cache_dir=tmp_path / "cache")
    assert not marker.exists()
    assert not any((tmp_path / "cache").glob("*"))  # nothing built, nothing cached


def test_safe_pickle_reads_numpy_and_builtin_containers(tmp_path: Path) -> None:
    value = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [np.int64(3), 2.5, "x", b"\xff"],
             "c": (1, {2, 3})}
    for protocol in (0, 2, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = load_pickle(path)
        np.testing.assert_array_equal(loaded["a"], value["a"])
        assert loaded["b"] == value["b"] and loaded["c"] == value["c"]


def test_embedded_ravi_split_matches_the_published_files(shared_data: Path) -> None:
    for split, classes in [("train", 64), ("val", 16), ("test", 20)]:
        rows, source = read_ravi_split(None, split)
        assert source == miniimagenet.EMBEDDED_SPLITS
        assert len(rows) == classes * 600 and len({w for _, w in rows}) == classes
        published = (shared_data / "mini-imagenet" / "splits" / "ravi" / f"{split}.csv").read_text().split()[1:]
        assert [f"{f},{w}" for f, w in rows] == published


def test_images_folder_without_csv_uses_the_embedded_split(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"mini-imagenet-ravi-splits.csv.gz names 12000 images absent"):
        load_mini_imagenet(tmp_path, split="test", cache_dir=tmp_path / "cache")


def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_mini_imagenet(tmp_path / "missing", split="train")
    with pytest.raises(FileNotFoundError, match="no Mini-ImageNet train data"):
        load_mini_imagenet(tmp_path, split="train")
    with pytest.raises(ValueError, match="unknown Mini-ImageNet split"):
        load_mini_imagenet(tmp_path, split="trainval")
    with pytest.raises(ValueError, match="unknown Mini-ImageNet format"):
        load_mini_imagenet(tmp_path, split="train", fmt="hdf5")
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_mini_imagenet(tmp_path, split="train", image_size=0)
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as handle:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8)}, handle)
    with pytest.raises(ValueError, match=r"expected a dict with keys \['image_data', 'class_dict'\]"):
        load_mini_imagenet(tmp_path, split="train", cache_dir=tmp_path / "cache")


def test_csv_naming_an_absent_image_is_refused(tmp_path: Path) -> None:
    write_images_folder(tmp_path)
    with open(tmp_path / "val.csv", "a") as handle:
        handle.write("n0453282900000001.jpg,n04596742\n")
    with pytest.raises(FileNotFoundError, match=r"names 1 images absent .*n0453282900000001.jpg"):
        load_mini_imagenet(tmp_path, split="val", cache_dir=tmp_path / "cache")


def test_corrupt_jpeg_is_refused_and_leaves_no_cache(tmp_path: Path) -> None:
    write_images_folder(tmp_path)
    victim = sorted((tmp_path / "images").glob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"corrupt or truncated image .*{victim.name}"):
        load_mini_imagenet(tmp_path, split="val", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*"))  # no cache and no temporary file left behind
