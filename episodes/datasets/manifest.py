"""Manifests: what a copy of a benchmark should hold, shipped with the package, and the check of a copy against one.

A manifest (``_data/manifest-<id>.json.gz``, format ``fewshot-manifest/1``, written by ``benchmarks/make_manifests.py``
from files, never by hand) names its loader and the loader arguments it describes (``match``, e.g. Omniglot's
``protocol``), the image shape the benchmark is used at (``channels``, ``image_size``), and per class split:

- ``classes``: the class names in the loader's order, or null where no published list names them (FC100's fine
  classes: only their number is known without the CIFAR-100 archive);
- ``num_classes``; ``class_sizes``: images per class, or null where only the total is published (tieredImageNet);
  ``images``: the total;
- ``content``: image size (as a string) -> :func:`~episodes.fingerprint.content_fingerprint` of the decoded split,
  where the real pixels were available to make the manifest (Omniglot), else empty.

:func:`compare_split` lists every difference between a loaded split and its manifest entry; :func:`describe_copy`
names the variant of the files a loader reads (which layout, which split file).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episodes.dataset import FewShotDataset
from episodes.datasets import miniimagenet, tiered_imagenet
from episodes.datasets.cifar import ARCHIVE, find_cifar100
from episodes.datasets.omniglot_source import SETS, find_source
from episodes.fingerprint import content_fingerprint, short

__all__ = ["FORMAT", "MANIFEST_DIR", "Manifest", "compare_split", "describe_copy", "find_manifest", "read_manifest"]

FORMAT = "fewshot-manifest/1"
MANIFEST_DIR = Path(__file__).parent / "_data"
_UNNAMED = re.compile(r"class\d{4}")  # the names a loader gives classes its files do not name (the RFS copies)
_SHOWN = 3  # names quoted per kind of difference


@dataclass(frozen=True)
class Manifest:
    """One manifest (see the module docstring); ``splits`` maps a split name to its entry."""

    id: str
    title: str
    loader: str
    match: dict[str, Any]
    channels: int
    image_size: int
    splits: dict[str, dict[str, Any]]
    source: str


def read_manifest(path: Path) -> Manifest:
    """Read one manifest file (``ValueError`` naming it if it is not one)."""
    try:
        document = json.loads(gzip.decompress(Path(path).read_bytes()).decode())
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable manifest ({err}); reinstall the package") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fewshot manifest (expected format {FORMAT!r}); reinstall the package")
    return Manifest(**{key: document[key] for key in Manifest.__dataclass_fields__})


def find_manifest(loader: str, arguments: Mapping[str, Any], *, folder: Path = MANIFEST_DIR) -> Manifest:
    """The manifest of ``loader`` (a ``_target_``, e.g. ``episodes.datasets.load_omniglot``) whose ``match`` the
    loader ``arguments`` agree with (a missing argument counts as the manifest's value, the loaders' default).

    Raises:
        ValueError: no manifest describes this loader with these arguments (naming those that exist).
    """
    manifests = [read_manifest(path) for path in sorted(folder.glob("manifest-*.json.gz"))]
    for manifest in manifests:
        if manifest.loader == loader and all(arguments.get(k, v) == v for k, v in manifest.match.items()):
            return manifest
    known = ", ".join(f"{m.loader.rsplit('.', 1)[-1]} {m.match or ''}".strip() for m in manifests)
    raise ValueError(f"no manifest describes {loader} with {dict(arguments)}: published benchmarks only ({known}); "
                     "a folder of your own images has no reference to be checked against")


def _named(names: list[str], count: int | None = None) -> str:
    more = (count if count is not None else len(names)) - min(len(names), _SHOWN)
    return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def _class_differences(dataset: FewShotDataset, entry: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    found = dict(zip(dataset.class_names, dataset.class_sizes.tolist(), strict=True))
    expected_sizes = entry.get("class_sizes")
    if entry.get("classes") is None or all(_UNNAMED.fullmatch(name) for name in found):
        notes = [("class names not checked: the manifest lists only their number" if entry.get("classes") is None
                  else "the copy names no classes (e.g. the RFS copy): only their number and sizes are checked")]
        differences = []
        if len(found) != entry["num_classes"]:
            differences.append(f"{len(found)} classes, expected {entry['num_classes']}")
        elif expected_sizes is not None and sorted(found.values()) != sorted(expected_sizes):
            differences.append("the classes' image counts differ from the published ones")
        return differences, notes
    expected = list(entry["classes"])
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in set(expected)]
    differences = []
    if missing:
        differences.append(f"{len(missing)} classes missing: {_named(missing)}")
    if extra:
        differences.append(f"{len(extra)} classes not in the split: {_named(extra)}")
    if not missing and not extra and list(found) != expected:
        differences.append("the same classes in another order (the episodes would differ)")
    if expected_sizes is not None:
        want = dict(zip(expected, expected_sizes, strict=True))
        other = [f"{name} has {found[name]}, expected {want[name]}" for name in expected
                 if name in found and found[name] != want[name]]
        if other:
            differences.append(f"{len(other)} classes with other image counts: {_named(other)}")
    return differences, []


def compare_split(dataset: FewShotDataset, manifest: Manifest, split: str) -> tuple[list[str], list[str]]:
    """Every difference between ``dataset`` (a loaded split) and the manifest's entry for ``split``.

    Returns:
        (differences, notes): what differs (missing or extra classes, classes with other image counts, another
        total, another image shape, other pixels than the reference copy's), and what could not be checked.
    """
    entry = manifest.splits.get(split)
    if entry is None:
        raise ValueError(f"the {manifest.title} manifest has no split {split!r}; it has {sorted(manifest.splits)}")
    differences, notes = _class_differences(dataset, entry)
    if len(dataset) != entry["images"]:
        differences.append(f"{len(dataset)} images, expected {entry['images']}")
    shape = tuple(dataset.images.shape[1:])
    want = (manifest.channels, manifest.image_size, manifest.image_size)
    if shape != want:
        differences.append(f"images of {'x'.join(map(str, shape))}, the benchmark's are {'x'.join(map(str, want))} "
                           f"(dataset.loader.image_size={manifest.image_size}, dataset.channels={manifest.channels})")
    reference = entry.get("content", {}).get(str(shape[-1]))
    if reference is None and shape == want:  # (another shape: other pixels, necessarily)
        notes.append(f"pixels not checked: no reference copy's content at {shape[-1]}px"
                     + (f" (the manifest has {', '.join(entry['content'])}px)" if entry.get("content") else ""))
    elif reference is not None and not differences and (found := content_fingerprint(dataset)) != reference:
        differences.append(f"other pixels than the reference copy's (content fingerprint {short(found)}, expected "
                           f"{short(reference)}): another decode or resize of the images")
    return differences, notes


def _omniglot(arguments: Mapping[str, Any]) -> str:
    root = arguments.get("root")
    if root is None:
        return "the copy embedded in the package"
    found = {name: find_source(Path(root).expanduser(), name) for name in SETS}
    layouts = [f"{name}: {'official zip' if s.suffix == '.zip' else 'unzipped folder'} {s}"
               for name, s in found.items() if s is not None]
    return "the official files (" + "; ".join(layouts or ["none found"]) + ")"


def _mini_imagenet(arguments: Mapping[str, Any], split: str) -> str:
    root = Path(arguments["root"]).expanduser()
    fmt = arguments.get("fmt", "auto")
    fmt = miniimagenet.detect_format(root, split) if fmt == "auto" else fmt
    if fmt == "images":
        csv = miniimagenet.read_ravi_split(root, split)[1]
        where = "the split file embedded in the package" if csv == miniimagenet.EMBEDDED_SPLITS else str(csv)
        return f"images from {root / 'images'} with the Ravi split from {where}"
    return {"learn2learn": f"learn2learn's pickle cache in {root}", "rfs": f"the RFS/MetaOptNet pickle in {root}",
            "torchmeta": f"torchmeta's {split}_data.hdf5 + {split}_labels.json in {root}"}[fmt]


def _tiered(arguments: Mapping[str, Any], split: str) -> str:
    root = Path(arguments["root"]).expanduser()
    fmt = arguments.get("fmt", "auto")
    fmt = tiered_imagenet.detect_format(root, split) if fmt == "auto" else fmt
    return {"original": f"the original release's {split}_images_png.pkl + {split}_labels.pkl",
            "rfs": f"the MetaOptNet/RFS copy's {split}_images.npz + {split}_labels.pkl",
            "images": f"image folders {root / split}/<wnid>/"}[fmt]


def _cifar(arguments: Mapping[str, Any]) -> str:
    source = find_cifar100(Path(arguments["root"]).expanduser())
    if source is None:
        return f"CIFAR-100's archive, to be downloaded ({ARCHIVE})"
    return f"CIFAR-100's python archive {source}" if source.is_file() else f"CIFAR-100's extracted folder {source}"


def describe_copy(manifest: Manifest, arguments: Mapping[str, Any], split: str) -> str:
    """The variant of the files ``manifest.loader`` reads with ``arguments`` for ``split``: the benchmark's split
    and the layout found (e.g. "Mini-ImageNet, Ravi & Larochelle 2017 split: learn2learn's pickle ...")."""
    name = manifest.loader.rsplit(".", 1)[-1]
    if name == "load_omniglot":
        files = _omniglot(arguments)
    elif name == "load_mini_imagenet":
        files = _mini_imagenet(arguments, split)
    elif name == "load_tiered_imagenet":
        files = _tiered(arguments, split)
    elif name in ("load_cifar_fs", "load_fc100"):
        files = _cifar(arguments)
    else:
        crop = ", cropped to the bounding boxes" if arguments.get("bbox_crop") else ""
        files = f"the official archive's layout under {arguments.get('root')}{crop}"
    return f"{manifest.title}: {files}"
