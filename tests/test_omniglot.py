"""Omniglot loading: layouts, pixels, rotations, protocols, the cache, bad input, the embedded copy."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.datasets import load_omniglot, omniglot, omniglot_source
from episodes.datasets import omniglot_embedded as embedded
from episodes.datasets.images import decode_image, resize_array

# A tiny Omniglot: set -> alphabet -> number of characters; 3 drawings each. The alphabet names are
# real ones (the lake/alphabet protocols know which official set holds each alphabet).
TINY = {"images_background": {"Greek": 2, "Latin": 1}, "images_evaluation": {"Angelic": 1}}
DRAWINGS = 3


def _png(ink: np.ndarray) -> bytes:
    """A 1-bit PNG the way Omniglot stores it: ink black (0), background white (1)."""
    out = io.BytesIO()
    Image.fromarray(~ink).save(out, format="PNG")
    return out.getvalue()


def _tiny_images() -> dict[str, np.ndarray]:
    """``"set/Alphabet/characterNN/XXXX_YY"`` -> (105, 105) bool ink, sorted like the loader."""
    rng = np.random.default_rng(0)
    images = {}
    for set_name, alphabets in TINY.items():
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                for d in range(1, DRAWINGS + 1):
                    images[f"{set_name}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}"] = rng.random((105, 105)) < 0.2
    return images


def make_omniglot(root: Path, layout: str = "zip", broken: str | None = None) -> dict[str, np.ndarray]:
    """Write the tiny Omniglot under ``root`` as official zips, folders or torchvision's layout.

    ``broken`` names one image (``"set/Alphabet/characterNN/XXXX_YY"``) to write truncated.
    """
    images = _tiny_images()
    base = root / "omniglot-py" if layout == "torchvision" else root
    base.mkdir(parents=True, exist_ok=True)
    for record, ink in images.items():
        data = _png(ink)[:60] if record == broken else _png(ink)
        set_name = record.split("/")[0]
        if layout == "zip":
            with zipfile.ZipFile(base / f"{set_name}.zip", "a") as archive:
                archive.writestr(f"{record}.png", data)
        else:
            path = base / f"{record}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return images


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    make_omniglot(tmp_path / "data")
    return tmp_path / "data"


def _background(images: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([ink for record, ink in images.items() if record.startswith("images_background")])


@pytest.mark.parametrize("layout", ["zip", "folder", "torchvision"])
def test_layouts_load_identical_pixels(tmp_path: Path, layout: str) -> None:
    images = make_omniglot(tmp_path / "data", layout)
    dataset = load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=105,
                            cache_dir=tmp_path / "cache")
    assert dataset.class_names == ("Greek/character01/rot000", "Greek/character02/rot000", "Latin/character01/rot000")
    assert dataset.name == "omniglot/lake/background" and dataset.mean == (0.0,) and dataset.std == (1.0,)
    assert dataset.class_sizes.tolist() == [DRAWINGS] * 3
    expected = torch.from_numpy(_background(images).astype(np.uint8) * 255)[:, None]
    assert dataset.images.dtype == torch.uint8 and torch.equal(dataset.images, expected)
    floats = dataset.to_float(dataset.images)
    assert set(torch.unique(floats).tolist()) == {0.0, 1.0}  # ink 1.0, background 0.0


def test_resized_images_use_lanczos_on_the_ink_image(tiny: Path, tmp_path: Path) -> None:
    images = make_omniglot(tmp_path / "again")
    dataset = load_omniglot(root=tiny, protocol="lake", split="background", image_size=28, cache_dir=tmp_path / "c")
    expected = np.stack([resize_array(ink.astype(np.uint8) * 255, (28, 28)) for ink in _background(images)])
    assert dataset.images.shape == (9, 1, 28, 28)
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(expected))
    assert 0 < int(dataset.images.float().mean()) < 255 and len(torch.unique(dataset.images)) > 2


def test_rotations_are_counter_clockwise_like_pil(tiny: Path, tmp_path: Path) -> None:
    dataset = load_omniglot(root=tiny, protocol="lake", split="evaluation", image_size=105,
                            rotations=(270, 0, 90, 180), cache_dir=tmp_path / "c")
    assert dataset.class_names == tuple(f"Angelic/character01/rot{r:03d}" for r in (0, 90, 180, 270))
    upright = dataset.images[:DRAWINGS]
    for quarter in (1, 2, 3):
        turned = dataset.images[quarter * DRAWINGS:(quarter + 1) * DRAWINGS]
        assert torch.equal(turned, torch.rot90(upright, quarter, dims=(-2, -1)))
        pil = np.asarray(Image.fromarray(upright[0, 0].numpy()).rotate(90 * quarter))
        assert np.array_equal(turned[0, 0].numpy(), pil)


def test_vinyals_split_file_spans_both_sets_in_file_order(tiny: Path, tmp_path: Path) -> None:
    split = tmp_path / "mine.txt"
    split.write_text("Angelic/character01/rot180\nGreek/character02/rot000\nAngelic/character01/rot000\n")
    dataset = load_omniglot(root=tiny, split_file=split, image_size=105, cache_dir=tmp_path / "c")
    lake = load_omniglot(root=tiny, protocol="lake", split="evaluation", image_size=105, cache_dir=tmp_path / "c")
    greek = load_omniglot(root=tiny, protocol="alphabet", alphabets=["Greek"], image_size=105,
                          cache_dir=tmp_path / "c")
    assert dataset.name == "omniglot/vinyals/mine" and dataset.num_classes == 3
    assert dataset.class_names == ("Angelic/character01/rot180", "Greek/character02/rot000",
                                   "Angelic/character01/rot000")
    assert torch.equal(dataset.images[:3], torch.rot90(lake.images, 2, dims=(-2, -1)))
    assert torch.equal(dataset.images[3:6], greek.images[3:6])
    assert torch.equal(dataset.images[6:], lake.images)


def test_alphabet_protocol_keeps_the_requested_order(tiny: Path, tmp_path: Path) -> None:
    dataset = load_omniglot(root=tiny, protocol="alphabet", alphabets=["Latin", "Angelic", "Greek"],
                            rotations=(0, 180), image_size=8, cache_dir=tmp_path / "c")
    assert dataset.name == "omniglot/alphabet/Latin+Angelic+Greek"
    assert [name.split("/")[0] for name in dataset.class_names] == ["Latin"] * 2 + ["Angelic"] * 2 + ["Greek"] * 4
    assert dataset.class_names[:2] == ("Latin/character01/rot000", "Latin/character01/rot180")
    assert dataset.images.shape == (8 * DRAWINGS, 1, 8, 8)


def test_second_load_uses_the_cache_until_a_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_omniglot(tmp_path / "data", "folder")
    first = load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=16)
    assert (tmp_path / "data" / ".fewshot_cache" / "omniglot-images_background-16.pt").is_file()

    def no_decoding(source: Path, size: int) -> dict[str, torch.Tensor]:
        raise AssertionError(f"decoded {source} again")

    real_decode = omniglot.decode_source
    monkeypatch.setattr(omniglot, "decode_source", no_decoding)
    second = load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=16)
    assert torch.equal(first.images, second.images) and first.class_names == second.class_names
    with pytest.raises(AssertionError, match="decoded"):  # another size is another cache
        load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=17)

    changed = tmp_path / "data" / "images_background" / "Latin" / "character01" / "0001_02.png"
    changed.write_bytes(_png(np.zeros((105, 105), dtype=bool)))
    with pytest.raises(AssertionError, match="decoded"):
        load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=16)
    monkeypatch.setattr(omniglot, "decode_source", real_decode)
    rebuilt = load_omniglot(root=tmp_path / "data", protocol="lake", split="background", image_size=16)
    assert int(rebuilt.images[7].max()) == 0 and torch.equal(rebuilt.images[:7], first.images[:7])


def test_missing_or_empty_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*download=True"):
        load_omniglot(root=tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no Omniglot data: expected images_background\.zip.*download=True"):
        load_omniglot(root=tmp_path / "empty")
    with pytest.raises(ValueError, match="download=True needs root"):
        load_omniglot(download=True)


def test_missing_set_is_named(tmp_path: Path) -> None:
    make_omniglot(tmp_path / "data", "folder")
    (tmp_path / "data" / "images_evaluation" / "Angelic" / "character01").rename(tmp_path / "moved")
    (tmp_path / "data" / "images_evaluation" / "Angelic").rmdir()
    with pytest.raises(FileNotFoundError, match="images_evaluation holds no Omniglot PNGs"):
        load_omniglot(root=tmp_path / "data", protocol="lake", split="evaluation", cache_dir=tmp_path / "c")
    (tmp_path / "data" / "images_evaluation").rmdir()
    with pytest.raises(FileNotFoundError, match=r"has no images_evaluation.*download=True"):
        load_omniglot(root=tmp_path / "data", split="test", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_corrupt_png_is_named_and_nothing_is_cached(tmp_path: Path, layout: str) -> None:
    make_omniglot(tmp_path / "data", layout, broken="images_background/Greek/character02/0002_03")
    with pytest.raises(ValueError, match=r"corrupt or truncated image .*Greek/character02/0002_03\.png.*delete or"):
        load_omniglot(root=tmp_path / "data", protocol="lake", split="background", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_bad_arguments_list_the_valid_ones(tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    with pytest.raises(ValueError, match=r"unknown Omniglot protocol 'lakes'; valid protocols: \['alphabet'"):
        load_omniglot(root=tiny, protocol="lakes", cache_dir=cache)
    with pytest.raises(ValueError, match=r"unknown split 'testing'.*\['train', 'val', 'test', 'trainval'\]"):
        load_omniglot(root=tiny, split="testing", cache_dir=cache)
    with pytest.raises(ValueError, match=r"unknown split 'test' for protocol 'lake'.*'background', 'evaluation'"):
        load_omniglot(root=tiny, protocol="lake", cache_dir=cache)
    with pytest.raises(ValueError, match=r"unknown Omniglot alphabets \['Klingon'\]; valid: .*'Greek'"):
        load_omniglot(root=tiny, protocol="alphabet", alphabets=["Klingon"], cache_dir=cache)
    with pytest.raises(ValueError, match="needs alphabets="):
        load_omniglot(root=tiny, protocol="alphabet", cache_dir=cache)
    with pytest.raises(ValueError, match="rotations from the split"):
        load_omniglot(root=tiny, rotations=(0, 90), cache_dir=cache)
    with pytest.raises(ValueError, match=r"subset of \(0, 90, 180, 270\)"):
        load_omniglot(root=tiny, protocol="lake", split="background", rotations=(45,), cache_dir=cache)
    with pytest.raises(ValueError, match="image_size must be positive"):
        load_omniglot(root=tiny, image_size=0, cache_dir=cache)


def test_split_file_errors_name_the_class(tiny: Path, tmp_path: Path) -> None:
    absent = tmp_path / "absent.txt"
    absent.write_text("Greek/character01/rot000\nGreek/character24/rot090\n")
    with pytest.raises(ValueError, match="class Greek/character24/rot090 names character Greek/character24, which"):
        load_omniglot(root=tiny, split_file=absent, cache_dir=tmp_path / "c")
    malformed = tmp_path / "bad.txt"
    malformed.write_text("Greek/character01/rot045\n")
    with pytest.raises(ValueError, match="bad Omniglot class 'Greek/character01/rot045'"):
        load_omniglot(root=tiny, split_file=malformed, cache_dir=tmp_path / "c")


def test_decode_image_fails_loudly(tmp_path: Path) -> None:
    ink = np.zeros((105, 105), dtype=bool)
    ink[10:20, 30:40] = True
    png = _png(ink)
    pixels = decode_image(png, mode="L", size=None, name="a.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (105, 105) and set(np.unique(pixels)) == {0, 255}
    assert (pixels[10:20, 30:40] == 0).all() and decode_image(png, mode="RGB", size=(7, 9), name="a").shape == (7, 9, 3)
    (tmp_path / "a.png").write_bytes(png)
    assert np.array_equal(decode_image(tmp_path / "a.png", mode="L", size=None, name="a"), pixels)
    for bad in (png[: len(png) // 2], png[:40], b"not an image at all"):
        with pytest.raises(ValueError, match=r"corrupt or truncated image x/y.png: .*delete or replace the file"):
            decode_image(bad, mode="L", size=None, name="x/y.png")
    with pytest.raises(FileNotFoundError):
        decode_image(tmp_path / "missing.png", mode="L", size=None, name="missing.png")
    with pytest.raises(ValueError, match="mode must be"):
        decode_image(png, mode="CMYK", size=None, name="a.png")


def test_embedded_splits_and_alphabets() -> None:
    splits = {s: embedded.vinyals_split(s) for s in ("train", "val", "test", "trainval")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
    assert splits["train"] + splits["val"] == splits["trainval"]
    characters = {s: {line.rsplit("/", 1)[0] for line in v} for s, v in splits.items()}
    assert len(characters["trainval"] | characters["test"]) == 1623
    assert not characters["trainval"] & characters["test"]
    alphabets = embedded.alphabet_sets()
    assert len(alphabets) == 50 and sum(s == "images_background" for s in alphabets.values()) == 30
    with pytest.raises(ValueError, match="valid splits"):
        embedded.vinyals_split("dev")


def test_embedded_copy_is_complete_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ink, names = embedded._unpack_ink()
    assert ink.shape == (32460, 105, 105) and ink.dtype == np.uint8 and set(np.unique(ink[:50])) == {0, 255}
    characters = np.char.add(np.char.add(names["alphabets"], "/"), names["characters"])
    _, counts = np.unique(characters, return_counts=True)
    assert len(counts) == 1623 and (counts == 20).all()
    with np.load(embedded.EMBEDDED_FILE) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["bits_sha256"] = np.array("0" * 64)
    np.savez(tmp_path / "tampered.npz", **arrays)
    monkeypatch.setattr(embedded, "EMBEDDED_FILE", tmp_path / "tampered.npz")
    with pytest.raises(ValueError, match="is corrupt"):
        embedded._unpack_ink()
    monkeypatch.setattr(embedded, "EMBEDDED_FILE", tmp_path / "gone.npz")
    with pytest.raises(FileNotFoundError, match="embedded Omniglot file"):
        embedded._unpack_ink()


@pytest.mark.slow
def test_embedded_cache_is_shared_by_every_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoded cache of the embedded copy is keyed on its content, so a second install (another path,
    another mtime) reuses it instead of rebuilding."""
    first = load_omniglot(split="val", cache_dir=tmp_path / "cache")
    caches = sorted((tmp_path / "cache").glob("omniglot-embedded-*.pt"))
    stamps = [c.stat().st_mtime_ns for c in caches]
    other = tmp_path / "site-packages" / "omniglot-v1.npz"
    other.parent.mkdir()
    shutil.copyfile(embedded.EMBEDDED_FILE, other)
    monkeypatch.setattr(embedded, "EMBEDDED_FILE", other)
    embedded.embedded_sha256.cache_clear()
    second = load_omniglot(split="val", cache_dir=tmp_path / "cache")
    embedded.embedded_sha256.cache_clear()
    assert caches and [c.stat().st_mtime_ns for c in caches] == stamps
    assert torch.equal(first.images, second.images)


def test_embedded_licence_is_shipped() -> None:
    text = (embedded.DATA_DIR / "omniglot-LICENSE.txt").read_text()
    assert "Copyright (c) 2015 Brenden Lake" in text and "MIT" in text


def test_pack_round_trip(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_omniglot(tmp_path / "again")
    omniglot.main(["pack", str(tiny), str(tmp_path / "packed.npz")])
    monkeypatch.setattr(embedded, "EMBEDDED_FILE", tmp_path / "packed.npz")
    ink, names = embedded._unpack_ink()
    assert np.array_equal(ink, np.stack(list(images.values())).astype(np.uint8) * 255)
    assert list(names["drawings"][:2]) == ["0001_01", "0001_02"] and names["sets"][-1] == "images_evaluation"
    from_zips = load_omniglot(root=tiny, split_file=_lines(tmp_path), image_size=20, cache_dir=tmp_path / "c")
    from_packed = load_omniglot(split_file=_lines(tmp_path), image_size=20, cache_dir=tmp_path / "c")
    assert torch.equal(from_zips.images, from_packed.images) and from_zips.class_names == from_packed.class_names


def _lines(tmp_path: Path) -> Path:
    path = tmp_path / "lines.txt"
    path.write_text("Greek/character02/rot090\nAngelic/character01/rot000\nLatin/character01/rot270\n")
    return path


@pytest.mark.slow
def test_embedded_copy_equals_the_zips_pixel_for_pixel(shared_data: Path) -> None:
    ink, names = embedded._unpack_ink()
    row = 0
    for set_name in omniglot.SETS:
        for record, data in omniglot_source.read_source(shared_data / "omniglot" / f"{set_name}.zip"):
            alphabet, character, drawing = record.split("/")
            assert (names["sets"][row], names["alphabets"][row], names["characters"][row],
                    names["drawings"][row]) == (set_name, alphabet, character, drawing)
            assert np.array_equal(omniglot_source.decode_ink(data, name=record), ink[row]), record
            row += 1
    assert row == len(ink) == 32460


@pytest.mark.slow
def test_real_vinyals_splits_match_the_embedded_copy(shared_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "default"))
    root = shared_data / "omniglot"
    for split, characters in {"train": 1028, "val": 172, "test": 423, "trainval": 1200}.items():
        real = load_omniglot(root=root, split=split, cache_dir=tmp_path / "real")
        packed = load_omniglot(split=split, cache_dir=tmp_path / "packed")
        file_lines = (root / "splits" / "vinyals" / f"{split}.txt").read_text().split()
        assert real.name == f"omniglot/vinyals/{split}" and list(real.class_names) == file_lines
        assert real.num_classes == 4 * characters and (real.class_sizes == 20).all()
        assert real.images.shape == (80 * characters, 1, 28, 28) and real.images.dtype == torch.uint8
        assert torch.equal(real.images, packed.images) and real.class_names == packed.class_names
    assert not (tmp_path / "default").exists()  # every cache went where it was told
