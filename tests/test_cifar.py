"""CIFAR-FS and FC100 from a synthetic CIFAR-100 python archive in the real format: splits, pixels, cache,
download from a local HTTP server, and every kind of bad input."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import accuracies, fewshot
from test_download import _serve
from test_miniimagenet import py2_pickle

from episodes.datasets import cifar
from episodes.datasets.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar_fs, load_fc100, read_split_file
from episodes.datasets.images import resize_array

#: CIFAR-100's 20 super-classes and their 5 classes each, as its meta file names them (the table of
#: https://www.cs.toronto.edu/~kriz/cifar.html); both name lists are alphabetical, as in the real meta file.
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
COARSE = sorted(SUPERCLASSES)
FINE = sorted(f for fines in SUPERCLASSES.values() for f in fines)
SUPER_OF = {f: c for c, fines in SUPERCLASSES.items() for f in fines}
PER_CLASS = {"train": 2, "test": 1}  # the real archive: 500 and 100


def cifar_members(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The train, test and meta pickles (Python 2 protocol 2, like the real ones) of a small CIFAR-100 with
    every class, interleaved, and the (n, 32, 32, 3) images each class should get, train images first."""
    rng = np.random.default_rng(seed)
    members, expected = {}, {f: [] for f in FINE}
    for part, per_class in PER_CLASS.items():
        fine = rng.permutation(np.repeat(np.arange(len(FINE)), per_class))
        images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
        for label, image in zip(fine, images, strict=True):
            expected[FINE[label]].append(image)
        members[part] = py2_pickle({
            "filenames": [f"img_{part}_{i:05d}.png" for i in range(len(fine))],
            "batch_label": f"{part}ing batch 1 of 1",
            "fine_labels": [int(f) for f in fine], "coarse_labels": [COARSE.index(SUPER_OF[FINE[f]]) for f in fine],
            "data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(fine), 3072)})
    members["meta"] = py2_pickle({"fine_label_names": FINE, "coarse_label_names": COARSE})
    return members, {f: np.stack(images) for f, images in expected.items()}


def write_archive(path: Path, members: dict[str, bytes], *, extra: dict[str, bytes] | None = None) -> Path:
    """A tar.gz laid out like cifar-100-python.tar.gz: the folder, then its members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, data in {**members, **(extra or {})}.items():
            info = tarfile.TarInfo(name if "/" in name else f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def write_cifar100_archive(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-100-python.tar.gz`` in the real format (also for other tests); returns the expected images."""
    members, expected = cifar_members(seed)
    write_archive(root / cifar.ARCHIVE, members)
    return expected


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes], dict[str, np.ndarray]]:
    members, expected = cifar_members()
    root = tmp_path_factory.mktemp("cifar")
    write_archive(root / cifar.ARCHIVE, members)
    os.chmod(root, 0o555)  # read-only: every test gives its own cache_dir
    return root, members, expected


def splits(path: Path, column: str) -> dict[str, list[str]]:
    return read_split_file(path, column)


def assert_holds(dataset, classes: list[str], expected: dict[str, np.ndarray], size: int = 32) -> None:
    assert dataset.class_names == tuple(sorted(classes))
    assert dataset.class_sizes.tolist() == [sum(PER_CLASS.values())] * len(classes)
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1:] == (3, size, size)
    assert dataset.mean == CIFAR_MEAN and dataset.std == CIFAR_STD
    for c, name in enumerate(dataset.class_names):
        want = expected[name] if size == 32 else np.stack([resize_array(im, (size, size)) for im in expected[name]])
        got = dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]].permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(got, want)


def test_embedded_splits_are_the_published_ones() -> None:
    fs = splits(cifar.CIFAR_FS_SPLITS, "class")
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE  # every CIFAR-100 class exactly once
    assert fs["train"][:3] == ["train", "skyscraper", "turtle"] and fs["test"][-1] == "worm"  # the authors' order
    fc = splits(cifar.FC100_SPLITS, "superclass")
    assert [len(fc[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == COARSE
    assert {s: sorted(COARSE.index(c) for c in fc[s]) for s in fc} == {
        "train": [1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19], "val": [8, 11, 13, 16], "test": [0, 7, 12, 14]}
    assert [sum(len(SUPERCLASSES[c]) for c in fc[s]) for s in ("train", "val", "test")] == [60, 20, 20]


def test_cifar_fs_splits_hold_their_classes_with_exact_pixels(synthetic, tmp_path: Path) -> None:
    root, _, expected = synthetic
    fs = splits(cifar.CIFAR_FS_SPLITS, "class")
    for split in ("train", "val", "test"):
        dataset = load_cifar_fs(split=split, root=root, cache_dir=tmp_path)
        assert dataset.name == f"cifar-fs/{split}"
        assert_holds(dataset, fs[split], expected)
    trainval = load_cifar_fs(split="trainval", root=str(root), cache_dir=tmp_path)
    assert trainval.num_classes == 80
    small = load_cifar_fs(split="test", root=root, image_size=16, cache_dir=tmp_path)
    assert_holds(small, fs["test"], expected, size=16)


def test_fc100_is_split_by_superclass(synthetic, tmp_path: Path) -> None:
    root, _, expected = synthetic
    fc = splits(cifar.FC100_SPLITS, "superclass")
    for split, count in (("train", 60), ("val", 20), ("test", 20)):
        dataset = load_fc100(split=split, root=root, cache_dir=tmp_path)
        assert dataset.num_classes == count and dataset.name == f"fc100/{split}"
        assert {SUPER_OF[name] for name in dataset.class_names} == set(fc[split])
        assert_holds(dataset, [f for c in fc[split] for f in SUPERCLASSES[c]], expected)


def test_extracted_folder_gives_the_same_dataset(synthetic, tmp_path: Path) -> None:
    _, members, expected = synthetic
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    dataset = load_fc100(split="test", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert_holds(dataset, [f for c in splits(cifar.FC100_SPLITS, "superclass")["test"] for f in SUPERCLASSES[c]],
                 expected)


def test_second_load_reads_the_cache(synthetic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _, _ = synthetic
    first = load_cifar_fs(split="val", root=root, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-fs-val-32.pt"]

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cifar, "read_cifar100", refuse)
    second = load_cifar_fs(split="val", root=root, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names


@pytest.fixture
def served(synthetic, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A local HTTP server over the synthetic archive: (its URL, its MD5)."""
    root = synthetic[0]
    md5 = hashlib.md5((root / cifar.ARCHIVE).read_bytes()).hexdigest()
    for url in _serve(root):
        yield f"{url}/{cifar.ARCHIVE}", md5


def test_download_on_request_checks_the_md5(served, synthetic, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url, md5 = served
    monkeypatch.setattr(cifar, "CIFAR100_URL", url)
    data = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match="pass download=True"):
        load_cifar_fs(split="test", root=data)
    monkeypatch.setattr(cifar, "CIFAR100_MD5", md5)
    dataset = load_cifar_fs(split="test", root=data, download=True, cache_dir=tmp_path / "cache")
    assert (data / cifar.ARCHIVE).read_bytes() == (synthetic[0] / cifar.ARCHIVE).read_bytes()
    assert_holds(dataset, splits(cifar.CIFAR_FS_SPLITS, "class")["test"], synthetic[2])
    monkeypatch.setattr(cifar, "CIFAR100_URL", f"{url}-gone")  # present: nothing is fetched again
    assert load_fc100(split="val", root=data, download=True, cache_dir=tmp_path / "cache").num_classes == 20


def test_md5_mismatch_is_refused_and_nothing_is_written(served, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = served
    monkeypatch.setattr(cifar, "CIFAR100_URL", url)  # the synthetic archive against CIFAR-100's real MD5
    with pytest.raises(ValueError, match=f"checksum mismatch .* expected md5 {cifar.CIFAR100_MD5}"):
        load_cifar_fs(split="train", root=tmp_path / "data", download=True, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "data").iterdir()) and not (tmp_path / "cache").exists()


def test_missing_archive_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_fc100(split="test", root=tmp_path)
    message = str(err.value)
    for part in (str(tmp_path), "cifar-100-python.tar.gz", cifar.CIFAR100_URL, cifar.CIFAR100_MD5, "cifar-100-python/",
                 "download=True"):
        assert part in message


def test_truncated_archive_is_named_and_nothing_cached(synthetic, tmp_path: Path) -> None:
    whole = (synthetic[0] / cifar.ARCHIVE).read_bytes()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / cifar.ARCHIVE).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'data' / cifar.ARCHIVE} is not a readable tar.gz "
                                                   "archive") + ".*truncated or damaged"):
        load_cifar_fs(split="test", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*"))


def test_split_file_naming_an_absent_class_is_refused(synthetic, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = cifar.CIFAR_FS_SPLITS.read_text().replace("test,worm\n", "test,unicorn\n")
    (tmp_path / "splits.csv").write_text(text)
    monkeypatch.setattr(cifar, "CIFAR_FS_SPLITS", tmp_path / "splits.csv")
    with pytest.raises(ValueError, match=r"splits.csv names classes absent from .*python.tar.gz: \['unicorn'\]"):
        load_cifar_fs(split="test", root=synthetic[0], cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*"))
    (tmp_path / "splits.csv").write_text(text.replace("test,unicorn\n", "test,apple\n"))
    with pytest.raises(ValueError, match="class 'apple' is listed twice"):
        load_cifar_fs(split="test", root=synthetic[0], cache_dir=tmp_path / "cache")
    (tmp_path / "splits.csv").write_text("split,superclass\ntrain,fish\n")
    with pytest.raises(ValueError, match="expected a header line split,class"):
        load_cifar_fs(split="test", root=synthetic[0], cache_dir=tmp_path / "cache")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_another_global_is_refused(synthetic, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    members = {**synthetic[1], "meta": pickle.dumps({"fine_label_names": _Exploit(marker), "coarse_label_names": []},
                                                    protocol=2)}
    write_archive(tmp_path / "data" / cifar.ARCHIVE, members)
    with pytest.raises(pickle.UnpicklingError, match=r"cifar-100-python/meta: refusing to load global (posix|nt|os)"):
        load_fc100(split="train", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not marker.exists() and not any((tmp_path / "cache").glob("*"))


@pytest.mark.parametrize("change, message", [
    ({"meta": py2_pickle({"fine_label_names": FINE[:10], "coarse_label_names": COARSE})},
     "10 fine label names .* CIFAR-100 has 100"),
    ({"test": py2_pickle({"data": np.zeros((2, 1024), np.uint8), "fine_labels": [0, 1], "coarse_labels": [0, 1]})},
     r"'data' must be \(N, 3072\) uint8 rows"),
    ({"train": py2_pickle({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 100], "coarse_labels": [0, 1]})},
     r"fine_labels must be 2 labels in \[0, 100\)"),
    ({"train": py2_pickle({"data": np.zeros((2, 3072), np.uint8)})}, "expected a dict with keys"),
    ({"meta": b"\x80\x02}q\x00(U"}, "is not a readable pickle"),
])
def test_an_archive_that_is_not_cifar100_is_refused(synthetic, tmp_path: Path, change: dict[str, bytes],
                                                     message: str) -> None:
    write_archive(tmp_path / cifar.ARCHIVE, {**synthetic[1], **change})
    with pytest.raises(ValueError, match=message):
        load_cifar_fs(split="val", root=tmp_path, cache_dir=tmp_path / "cache")


def test_unsafe_or_incomplete_archives_are_refused(synthetic, tmp_path: Path) -> None:
    write_archive(tmp_path / "a" / cifar.ARCHIVE, synthetic[1], extra={"../evil": b"x"})
    with pytest.raises(ValueError, match=r"unsafe archive .* '\.\./evil' points outside"):
        load_cifar_fs(split="val", root=tmp_path / "a", cache_dir=tmp_path / "cache")
    write_archive(tmp_path / "b" / cifar.ARCHIVE, {k: v for k, v in synthetic[1].items() if k != "test"})
    with pytest.raises(ValueError, match=r"has no \['cifar-100-python/test'\]"):
        load_cifar_fs(split="val", root=tmp_path / "b", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "evil").exists()


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cifar-fs split 'novel'"):
        load_cifar_fs(split="novel", root=tmp_path)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_fc100(split="test", root=tmp_path, image_size=0)


@pytest.mark.slow
def test_train_on_cifar_fs_through_the_cli(synthetic, tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    (data / cifar.ARCHIVE).write_bytes((synthetic[0] / cifar.ARCHIVE).read_bytes())
    fewshot("train", "dataset=cifar_fs", f"dataset.loader.root={data}", "backbone=conv4", "backbone.hidden=8",
            "episode.n_way=3", "episode.train_n_way=3", "episode.n_query=2", "episode.train_n_query=2",
            "evaluation.episodes=4", "evaluation.n_query=2", "evaluation.batch_size=4", "trainer.steps=2",
            "trainer.val_every=1", "trainer.val_episodes=2", "trainer.log_every=1", "progress=false",
            f"hydra.run.dir={run}")
    assert len(accuracies(run / "results.json")[0]) == 4
    assert (data / ".fewshot_cache" / "cifar-fs-test-32.pt").is_file()
