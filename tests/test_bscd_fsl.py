"""The BSCD-FSL targets (CropDiseases, EuroSAT, ISIC 2018, ChestX): each loader on a synthetic copy in its distributed
layout, the ISIC and ChestX label rules on crafted CSVs, the protocol's evaluation config, a cross-domain re-test
through the CLI, and bad input (one line, exit status 2, no cache)."""

from __future__ import annotations

import csv
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from PIL import Image
from synthetic_datasets import (
    CHESTX_DROPPED,
    bscd_colour,
    write_chestx,
    write_crop_diseases,
    write_eurosat,
    write_isic,
)
from test_cli import fewshot, output

from episodes.datasets import bscd_fsl, load_chestx, load_crop_diseases, load_eurosat, load_isic
from episodes.datasets.chestx import chestx_labels
from episodes.datasets.isic import GROUND_TRUTH, isic_labels
from episodes.datasets.miniimagenet import IMAGENET_MEAN
from fewshot.hydra_app import _guard

SIDE = 12
CHESTX = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax")
ISIC = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
EUROSAT = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake")

#: option -> (loader, writer of its copy)
TARGETS: dict[str, tuple[Callable, Callable]] = {
    "crop_diseases": (load_crop_diseases, write_crop_diseases),
    "eurosat": (load_eurosat, write_eurosat),
    "isic": (load_isic, write_isic),
    "chestx": (load_chestx, write_chestx),
}


def expected_pixels(target: str, class_index: int, j: int) -> tuple[int, int, int]:
    if target == "chestx":
        return (10 + 30 * class_index + 3 * j,) * 3
    return bscd_colour(class_index, j)


@pytest.mark.parametrize(("target", "kaggle"), [("crop_diseases", False), ("eurosat", False), ("isic", False),
                                                ("chestx", False), ("chestx", True)])
def test_each_target_loads_its_classes_in_the_benchmarks_order(target: str, kaggle: bool, tmp_path: Path) -> None:
    """Every image's colour says its class and its place in the class: the loaded pixels must show both."""
    loader, write = TARGETS[target]
    written = write(tmp_path / "data", **({"kaggle": True} if kaggle else {}))
    dataset = loader(tmp_path / "data", split="test", image_size=SIDE, cache_dir=tmp_path / "cache")
    assert dataset.class_names == tuple(written) and dataset.name == f"{target}/test"
    assert dataset.class_sizes.tolist() == [len(files) for files in written.values()]
    assert dataset.images.shape[1:] == (3, SIDE, SIDE) and dataset.images.dtype == torch.uint8
    assert dataset.mean == IMAGENET_MEAN
    if target == "chestx":  # the rows the benchmark drops (white images) are not loaded
        rows = (tmp_path / "data" / "Data_Entry_2017.csv").read_text().splitlines()[1:]
        assert len(rows) == len(dataset.images) + len(CHESTX_DROPPED) and int(dataset.images.max()) < 255
    for c in range(dataset.num_classes):
        for j, image in enumerate(dataset.images[dataset.offsets[c]:dataset.offsets[c + 1]]):
            colour = torch.tensor(expected_pixels(target, c, j), dtype=torch.int16).view(3, 1, 1)
            assert int((image.to(torch.int16) - colour).abs().max()) <= (0 if target == "chestx" else 3), (c, j)


def test_the_fixed_class_lists_are_the_benchmarks() -> None:
    """IBM/cdfsl-benchmark: ChestX's labels_maps, ISIC's CSV columns, EuroSAT's ImageFolder order, CropDiseases'
    range(38)."""
    assert bscd_fsl.target_classes("chestx") == (7, CHESTX)
    assert bscd_fsl.target_classes("isic") == (7, ISIC)
    assert bscd_fsl.target_classes("eurosat") == (10, EUROSAT) and list(EUROSAT) == sorted(EUROSAT)
    assert bscd_fsl.target_classes("crop_diseases") == (38, None)


def test_the_cache_is_reused_and_other_sizes_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_eurosat(tmp_path / "data")
    first = load_eurosat(tmp_path / "data" / "2750", split="test", image_size=8)  # the 2750/ folder itself
    assert first.images.shape == (30, 3, 8, 8) and any((tmp_path / "data" / "2750" / ".fewshot_cache").iterdir())

    def refuse(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(bscd_fsl, "decode_files", refuse)
    second = load_eurosat(tmp_path / "data" / "2750", split="test", image_size=8)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names
    with pytest.raises(AssertionError, match="should have been used"):
        load_eurosat(tmp_path / "data" / "2750", split="test", image_size=6)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_chestx_keeps_single_findings_of_the_seven_classes(tmp_path: Path) -> None:
    """Chest_few_shot.py: one finding, not No Finding, not Pneumonia, among the 7; the label is its index."""
    header = "Image Index,Finding Labels,Follow-up #,Patient ID"
    rows = ["a.png,Mass,0,1", "b.png,No Finding,0,2", "c.png,Mass|Nodule,0,3", "d.png,Pneumonia,0,4",
            "e.png,Nodule,1,4", "f.png,Hernia,0,5", "g.png,Pneumothorax|Pneumonia,0,6", "h.png,Atelectasis,0,7",
            "i.png,Pneumothorax,0,8", "j.png,Consolidation,0,9", "k.png,Effusion,0,9"]
    path = write_csv(tmp_path / "entries.csv", [header, *rows])
    assert chestx_labels(path) == [("a.png", 4), ("e.png", 5), ("h.png", 0), ("i.png", 6), ("k.png", 2)]
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a byte-order mark is not part of the header
    assert len(chestx_labels(path)) == 5
    write_csv(path, ["Image,Findings", *rows])
    with pytest.raises(ValueError, match=r"expected a header starting with \['Image Index', 'Finding Labels'\]"):
        chestx_labels(path)
    write_csv(path, [header, "a.png,Mass,0,1", "a.png,Nodule,0,1"])
    with pytest.raises(ValueError, match=r"line 3: image a\.png is listed twice"):
        chestx_labels(path)


def test_isic_reads_one_hot_rows_and_refuses_others(tmp_path: Path) -> None:
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    one_hot = {"ISIC_1": "0.0,1.0,0.0,0.0,0.0,0.0,0.0", "ISIC_2": "0.0,0.0,0.0,0.0,0.0,0.0,1.0",
               "ISIC_3": "1.0,0.0,0.0,0.0,0.0,0.0,0.0", "ISIC_4": "0,0,0,1,0,0,0"}
    path = write_csv(tmp_path / "truth.csv", [header, *(f"{k},{v}" for k, v in one_hot.items())])
    assert isic_labels(path) == [("ISIC_1", 1), ("ISIC_2", 6), ("ISIC_3", 0), ("ISIC_4", 3)]
    for row, message in [("ISIC_5,1.0,1.0,0.0,0.0,0.0,0.0,0.0", "not labelled one-hot"),
                         ("ISIC_5,0.0,0.0,0.0,0.0,0.0,0.0,0.0", "not labelled one-hot"),
                         ("ISIC_5,0.0,0.5,0.0,0.0,0.0,0.0,0.0", "not labelled one-hot"),
                         ("ISIC_5,0.0,1.0,0.0,0.0,0.0,0.0", "expected 8 fields"),
                         ("ISIC_5,0.0,yes,0.0,0.0,0.0,0.0,0.0", "a label is not a number"),
                         ("ISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0", "image ISIC_1 is listed twice")]:
        write_csv(path, [header, *(f"{k},{v}" for k, v in one_hot.items()), row])
        with pytest.raises(ValueError, match=f"line 6: .*{message}"):
            isic_labels(path)
    write_csv(path, ["image,NV,MEL,BCC,AKIEC,BKL,DF,VASC", "ISIC_1,1.0,0.0,0.0,0.0,0.0,0.0,0.0"])
    with pytest.raises(ValueError, match="expected a header starting with"):  # the labels are numbered by column
        isic_labels(path)


@pytest.mark.parametrize("target", list(TARGETS))
def test_a_target_has_only_a_test_split(target: str, tmp_path: Path) -> None:
    loader, _ = TARGETS[target]
    with pytest.raises(ValueError, match=rf"only class split is 'test', not 'train'.*test_dataset={target}"):
        loader(tmp_path, split="train")
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        loader(tmp_path, split="test", image_size=0)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        loader(tmp_path / "nowhere", split="test")


@pytest.fixture(scope="module")
def hydra_context():
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        yield


def test_the_protocol_config_composes_for_every_target(hydra_context) -> None:
    """Guo et al. 2020: 600 episodes, 5-way 5/20/50-shot, 15 queries; in fewshot-train and in fewshot-eval."""
    protocol = {"episodes": 600, "n_query": 15, "settings": [[5, 5], [5, 20], [5, 50]], "episodes_file": None}
    assert {k: compose("train", ["evaluation=bscd_fsl"]).evaluation[k] for k in protocol} == protocol
    for target in TARGETS:
        cfg = compose("eval", ["run=/a/run", f"test_dataset={target}", "+evaluation=bscd_fsl"])
        assert {k: cfg.evaluation[k] for k in protocol} == protocol
        assert cfg.test_dataset.loader._target_ == f"episodes.datasets.load_{target}"
        assert dict(cfg.test_dataset.splits) == {"train": None, "val": None, "test": "test"}


def bad_copy(case: str, tmp_path: Path) -> tuple[str, Path, str]:
    """A damaged copy: (option, root, a pattern of what the one line must say)."""
    root = tmp_path / case
    if case == "missing csv":
        write_isic(root)
        (root / GROUND_TRUTH).unlink()
        return "isic", root, f"FileNotFoundError: {re.escape(str(root / GROUND_TRUTH))} not found"
    if case == "csv names an absent image":
        written = write_chestx(root)
        written["Mass"][0].unlink()
        return "chestx", root, rf"names 1 image\(s\) of the 7 classes absent .*{written['Mass'][0].name}"
    if case == "image does not decode":
        victim = write_eurosat(root)["Highway"][1]
        victim.write_bytes(victim.read_bytes()[:60])
        return "eurosat", root, f"ValueError: corrupt or truncated image {re.escape(str(victim))}"
    if case == "folder misses a class":
        write_eurosat(root)
        shutil.rmtree(root / "2750" / "Forest")
        return "eurosat", root, r"missing \['Forest'\], not EuroSAT's \[\]"
    written = write_crop_diseases(root)
    shutil.rmtree(written[list(written)[5]][0].parent)
    return "crop_diseases", root, "dataset/train holds 37 class folders, but CropDiseases has 38"


@pytest.mark.parametrize("case", ["missing csv", "csv names an absent image", "image does not decode",
                                  "folder misses a class", "crop folder misses a class"])
def test_bad_input_is_one_line_and_exit_status_2_with_no_cache(case: str, tmp_path: Path, hydra_context,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The apps' guard (fewshot/hydra_app.py) around what fewshot-eval does first with test_dataset=<target>."""
    option, root, message = bad_copy(case, tmp_path)
    cfg = compose("eval", ["run=/a/run", f"test_dataset={option}", f"test_dataset.loader.root={root}"])
    with caplog.at_level(logging.ERROR, logger="fewshot"), pytest.raises(SystemExit) as stop:
        _guard(lambda c: instantiate(c.test_dataset.loader, split=c.test_dataset.splits.test))(cfg)
    assert stop.value.code == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in line
    assert re.search(message, line), line
    assert not list(root.rglob(".fewshot_cache/*"))


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ProtoNet run trained one step on a 10-class RGB folder of 16x16 images (3 test classes)."""
    images = tmp_path_factory.mktemp("bscd") / "source"
    rng = np.random.default_rng(0)
    for c in range(10):
        (images / f"class{c}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"class{c}" / f"{i}.png")
    run = tmp_path_factory.mktemp("run")
    fewshot("train", "dataset=folder", f"dataset.loader.root={images}", "dataset.loader.image_size=16",
            "dataset.loader.fractions={train:0.5,val:0.2,test:0.3}", "episode.n_way=3", "episode.train_n_way=3",
            "episode.n_query=2", "episode.train_n_query=2", "evaluation.episodes=2", "evaluation.n_query=2",
            "backbone.hidden=8", "trainer.steps=1", "trainer.val_every=0", "progress=false", f"hydra.run.dir={run}")
    return run


@pytest.mark.slow
def test_cli_retests_a_run_on_a_target_with_the_protocol(rgb_run: Path, tmp_path: Path) -> None:
    write_eurosat(tmp_path / "eurosat")
    fewshot("eval", f"run={rgb_run}", "test_dataset=eurosat", f"test_dataset.loader.root={tmp_path / 'eurosat'}",
            "test_dataset.loader.image_size=16", "+evaluation=bscd_fsl", "evaluation.settings=[[5,1],[5,2]]",
            "evaluation.n_query=1", "evaluation.episodes=4", "progress=false", f"hydra.run.dir={tmp_path / 'out'}")
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [(r["train_dataset"], r["test_dataset"]) for r in rows] == [("source/train", "eurosat/test")] * 2
    assert [(r["n_way"], r["n_shot"], r["episodes"]) for r in rows] == [("5", "1", "4"), ("5", "2", "4")]


@pytest.mark.slow
def test_cli_refuses_a_target_without_its_csv_in_one_line(rgb_run: Path, tmp_path: Path) -> None:
    write_isic(tmp_path / "isic")
    (tmp_path / "isic" / GROUND_TRUTH).unlink()
    done = fewshot("eval", f"run={rgb_run}", "test_dataset=isic", f"test_dataset.loader.root={tmp_path / 'isic'}",
                   "test_dataset.loader.image_size=16", f"hydra.run.dir={tmp_path / 'out'}", check=False)
    assert done.returncode == 2
    assert (f"[ERROR] - FileNotFoundError: {tmp_path / 'isic' / GROUND_TRUTH} not found; root must hold the extracted "
            "ISIC 2018 task 3 training data: ISIC2018_Task3_Training_Input/ and ISIC2018_Task3_Training_GroundTruth/"
            "ISIC2018_Task3_Training_GroundTruth.csv") in output(done).strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() and not list((tmp_path / "isic").rglob(".fewshot_cache/*"))
