"""Proof of which copy you have: the manifests shipped with the package hold the published numbers and are
regenerated from files, ``python -m fewshot data check`` names the copy found and what differs, result files record
the test data's content fingerprint and ``report`` refuses to pool results on different copies, saying so."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import fewshot, output
from test_pooled_comparisons import result

from episodes import FewShotDataset
from episodes.datasets.manifest import MANIFEST_DIR, Manifest, compare_split, find_manifest, read_manifest
from episodes.datasets.miniimagenet import read_ravi_split
from episodes.fingerprint import content_fingerprint, short
from fewshot.evaluation import check_same_test_data, different_copies, gather_results, load_runs, write_results
from fewshot.evaluation.report import collect_provenance, write_json

REPO = Path(__file__).resolve().parent.parent


def manifest(name: str) -> Manifest:
    return read_manifest(MANIFEST_DIR / f"manifest-{name}.json.gz")


def counts(m: Manifest) -> dict[str, tuple[int, int]]:
    return {split: (entry["num_classes"], entry["images"]) for split, entry in m.splits.items()}


def test_the_shipped_manifests_hold_the_published_class_lists_and_counts() -> None:
    mini = manifest("mini-imagenet-ravi")
    assert counts(mini) == {"train": (64, 38400), "val": (16, 9600), "test": (20, 12000)}
    assert set(mini.splits["test"]["class_sizes"]) == {600} and (mini.channels, mini.image_size) == (3, 84)
    assert mini.splits["test"]["classes"] == sorted({wnid for _, wnid in read_ravi_split(None, "test")[0]})
    tiered = manifest("tiered-imagenet-ren")
    assert counts(tiered) == {"train": (351, 448_695), "val": (97, 124_261), "test": (160, 206_209)}
    assert tiered.splits["test"]["class_sizes"] is None  # per-class counts are not published
    assert len({name.split("/")[0] for name in tiered.splits["train"]["classes"]}) == 20  # super-classes
    cifar_fs, fc100 = manifest("cifar-fs-bertinetto"), manifest("fc100-oreshkin")
    assert [counts(cifar_fs)[s] for s in ("train", "val", "test")] == [(64, 38400), (16, 9600), (20, 12000)]
    assert [counts(fc100)[s] for s in ("train", "val", "test")] == [(60, 36000), (20, 12000), (20, 12000)]
    assert fc100.splits["test"]["classes"] is None and cifar_fs.image_size == 32
    cub = manifest("cub-chen")
    assert [counts(cub)[s][0] for s in ("train", "val", "test")] == [100, 50, 50]
    assert sum(counts(cub)[s][1] for s in ("train", "val", "test")) == 11_788  # the official archive's images
    assert cub.splits["train"]["class_sizes"][:2] == [60, 58]  # 001 and 003 (Sooty Albatross)
    assert min(cub.splits["val"]["class_sizes"]) == 41
    vinyals, lake = manifest("omniglot-vinyals"), manifest("omniglot-lake")
    assert [counts(vinyals)[s][0] for s in ("train", "val", "test", "trainval")] == [4112, 688, 1692, 4800]
    assert set(vinyals.splits["train"]["class_sizes"]) == {20} and (vinyals.channels, vinyals.image_size) == (1, 28)
    assert counts(lake) == {"background": (964, 19280), "evaluation": (659, 13180)}
    assert sorted(vinyals.splits["test"]["content"]) == ["105", "28"]


def test_the_manifests_are_regenerated_from_files_byte_for_byte(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from make_manifests import main  # the script the manifests were written by

    main(["--out", str(tmp_path)])  # from the embedded split files (Omniglot and CUB need their real files)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["manifest-cifar-fs-bertinetto.json.gz", "manifest-fc100-oreshkin.json.gz",
                       "manifest-mini-imagenet-ravi.json.gz", "manifest-tiered-imagenet-ren.json.gz"]
    for name in written:
        assert (tmp_path / name).read_bytes() == (MANIFEST_DIR / name).read_bytes(), name


def toy(names: list[str], sizes: list[int], side: int = 4, seed: int = 0) -> FewShotDataset:
    images = torch.randint(0, 256, (sum(sizes), 3, side, side), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return FewShotDataset.from_tensors(images, torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes)), names,
                                       name="toy/test")


def test_compare_split_names_every_difference() -> None:
    reference = toy(["a", "b", "c"], [2, 3, 2])
    entry = {"classes": ["a", "b", "c"], "num_classes": 3, "class_sizes": [2, 3, 2], "images": 7,
             "content": {"4": content_fingerprint(reference)}}
    m = Manifest("toy", "Toy", "loader", {}, 3, 4, {"test": entry}, "hand-made")
    assert compare_split(reference, m, "test") == ([], [])
    assert compare_split(toy(["a", "b", "d"], [2, 3, 2]), m, "test")[0] == [
        "1 classes missing: c", "1 classes not in the split: d"]
    assert compare_split(toy(["a", "b", "c"], [2, 4, 2]), m, "test")[0] == [
        "1 classes with other image counts: b has 4, expected 3", "8 images, expected 7"]
    assert compare_split(toy(["b", "a", "c"], [3, 2, 2]), m, "test")[0] == [
        "the same classes in another order (the episodes would differ)"]
    differences, notes = compare_split(toy(["a", "b", "c"], [2, 3, 2], side=6), m, "test")
    assert differences == ["images of 3x6x6, the benchmark's are 3x4x4 (dataset.loader.image_size=4, "
                           "dataset.channels=3)"] and notes == []
    other = compare_split(toy(["a", "b", "c"], [2, 3, 2], seed=1), m, "test")[0]
    assert len(other) == 1 and other[0].startswith("other pixels than the reference copy's")
    unnamed_note = "the copy names no classes (e.g. the RFS copy): only their number and sizes are checked"
    differences, notes = compare_split(toy(["class0000", "class0001", "class0002"], [2, 2, 3]), m, "test")
    assert len(differences) == 1 and differences[0].startswith("other pixels") and notes == [unnamed_note]
    no_pixels = dataclasses.replace(m, splits={"test": {**entry, "content": {}}})
    assert compare_split(toy(["class0000", "class0001"], [2, 5]), no_pixels, "test") == (
        ["2 classes, expected 3"], [unnamed_note, "pixels not checked: no reference copy's content at 4px"])
    unnamed_manifest = dataclasses.replace(m, splits={"test": {**entry, "classes": None}})  # as FC100's
    assert compare_split(toy(["x", "y", "z"], [3, 2, 3]), unnamed_manifest, "test")[0] == [
        "the classes' image counts differ from the published ones", "8 images, expected 7"]


def test_find_manifest_matches_the_loader_and_its_protocol() -> None:
    assert find_manifest("episodes.datasets.load_omniglot", {"protocol": "lake", "root": None}).id == "omniglot-lake"
    assert find_manifest("episodes.datasets.load_omniglot", {"protocol": "vinyals"}).id == "omniglot-vinyals"
    assert find_manifest("episodes.datasets.load_mini_imagenet", {"root": "/x", "fmt": "rfs"}).id == \
        "mini-imagenet-ravi"
    with pytest.raises(ValueError, match=r"no manifest describes episodes\.datasets\.load_image_folder"):
        find_manifest("episodes.datasets.load_image_folder", {"root": "/x"})


def test_data_check_of_the_embedded_omniglot_matches_its_manifest() -> None:
    done = fewshot("data", "check", "dataset=omniglot")
    text = output(done)
    assert text.count("the copy embedded in the package") == 3 and text.count(": matches the manifest") == 3
    assert "this copy of Omniglot, Vinyals et al. 2016 split" in text
    assert text.strip().splitlines()[-1].endswith("matches the manifest")
    assert manifest("omniglot-vinyals").splits["test"]["content"]["28"] in text  # the fingerprint results record


def test_data_check_names_the_variant_and_what_differs(tmp_path: Path) -> None:
    wnids = manifest("mini-imagenet-ravi").splits["test"]["classes"]
    kept = [*wnids[:19], "n00000001"]  # one class missing, one that is not a test class, 2 images each
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    with open(tmp_path / "mini-imagenet-cache-test.pkl", "wb") as handle:
        pickle.dump({"image_data": images, "class_dict": {w: [2 * i, 2 * i + 1] for i, w in enumerate(kept)}}, handle)
    done = fewshot("data", "check", "dataset=mini_imagenet", f"dataset.loader.root={tmp_path}",
                   "dataset.splits.train=null", "dataset.splits.val=null", check=False)
    text = output(done)
    assert done.returncode == 1, text
    assert f"Mini-ImageNet, Ravi & Larochelle 2017 split: learn2learn's pickle cache in {tmp_path}" in text
    assert (f"DIFFERS from the manifest: 1 classes missing: {wnids[19]}; 1 classes not in the split: n00000001; 19 "
            f"classes with other image counts: {wnids[0]} has 2, expected 600") in text
    assert "40 images, expected 12000" in text and "differs from the manifest in split(s) test" in text


def test_data_check_of_a_dataset_without_manifest_is_one_line_and_status_2(tmp_path: Path) -> None:
    done = fewshot("data", "check", "dataset=folder", f"dataset.loader.root={tmp_path}", check=False)
    assert done.returncode == 2 and output(done).strip().splitlines()[-1].endswith(
        "a folder of your own images has no reference to be checked against")


def write_run(folder: Path, name: str, scores: list[float], fingerprint: str | None) -> None:
    test_data = {"name": "omniglot/test", "classes": ["x"], "class_sizes": [20]}
    if fingerprint is not None:
        test_data["fingerprint"] = fingerprint
    folder.mkdir(parents=True)
    write_json(folder / "results.json", [result(name, scores)], provenance={**collect_provenance(),
                                                                            "test_data": test_data})


def test_report_pools_only_results_on_the_same_copy_and_says_which_are_not_comparable(tmp_path: Path,
                                                                                     caplog) -> None:
    write_run(tmp_path / "a", "a", [0.8, 0.9, 1.0], "f" * 64)
    write_run(tmp_path / "b", "b", [0.7, 0.9, 0.8], "f" * 64)
    write_run(tmp_path / "old", "old", [0.6, 0.7, 0.8], None)  # written before fingerprints: the one known copy
    assert [sorted(r.name for r in m.learners) for m in gather_results(load_runs(tmp_path))] == [["a", "b", "old"]]
    assert different_copies(load_runs(tmp_path)) == []
    write_run(tmp_path / "c", "c", [0.5, 0.5, 0.5], "e" * 64)
    merged = gather_results(load_runs(tmp_path))
    assert sorted(sorted(r.name for r in m.learners) for m in merged) == [["a", "b"], ["c"], ["old"]]
    note = ("not comparable: results on omniglot/test were scored on 2 different copies of the test data (same "
            "classes, other pixels; content fingerprints ffffffffffff: a, b; eeeeeeeeeeee: c); python -m fewshot data "
            "check says which copy a folder holds")
    assert different_copies(load_runs(tmp_path)) == [note] and note in caplog.text
    write_results(tmp_path / "report", merged, collect_provenance(),
                  notes=different_copies(load_runs(tmp_path)))  # as the report does
    assert f"- {note}\n" in (tmp_path / "report" / "results.md").read_text()


def test_a_retest_on_another_copy_of_the_same_classes_warns(tmp_path: Path, caplog) -> None:
    tested = toy(["a", "b"], [3, 2])
    write_json(tmp_path / "results.json", [result("a", [0.5, 0.5])],
               provenance=collect_provenance(test_set=tested))
    check_same_test_data(tmp_path / "results.json", tested)
    assert "differ" not in caplog.text
    check_same_test_data(tmp_path / "results.json", toy(["a", "b"], [3, 2], seed=1))
    assert "the test images differ from those" in caplog.text and short(content_fingerprint(tested)) in caplog.text
