"""Regenerate the dataset manifests (``episodes/datasets/_data/manifest-*.json.gz``) from files, not by hand.

- Omniglot (Vinyals and Lake protocols): from the real files, the official zips in ``--omniglot`` read with the
  Vinyals split files beside them (``splits/vinyals/*.txt``); each split is loaded a second time from the copy
  embedded in the package, and the two must decode to the same pixels (content fingerprints at 28 and 105 px).
- Mini-ImageNet: the Ravi & Larochelle split files in ``--mini-splits`` (the package's embedded copy without it).
- tieredImageNet, CIFAR-FS, FC100, CUB: the split files embedded in the package, with the published image counts
  below (:data:`PUBLISHED`) and, for CUB, the per-class counts of a listing of the official archive
  (``--cub-listing``: its ``images.txt``, or Chen et al.'s ``filelists/CUB/{base,val,novel}.json``).

Written gzipped with a zero timestamp, so the same inputs give the same bytes:

    PYTHONPATH=. python benchmarks/make_manifests.py --omniglot ../shared/data/omniglot \\
        --mini-splits ../shared/data/mini-imagenet/splits/ravi --cub-listing base.json val.json novel.json
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from episodes.datasets import load_omniglot
from episodes.datasets.cifar import CIFAR_FS_SPLITS, FC100_SPLITS, read_split_file
from episodes.datasets.cub import chen_split
from episodes.datasets.manifest import FORMAT, MANIFEST_DIR
from episodes.datasets.miniimagenet import read_ravi_split
from episodes.datasets.tiered_imagenet import read_tiered_split
from episodes.files import atomic_write_bytes
from episodes.fingerprint import content_fingerprint

log = logging.getLogger("make_manifests")

#: Published counts that no split file holds: images per split of tieredImageNet (Ren et al. 2018, Sec. 5.1, as
#: the release's README and learn2learn's documentation repeat them); CIFAR-100's 500 train + 100 test images of
#: each class, and its 5 fine classes per super-class (Krizhevsky 2009, the dataset's page).
PUBLISHED = {"tiered_images": {"train": 448_695, "val": 124_261, "test": 206_209},
             "cifar_per_class": 600, "cifar_per_superclass": 5}
OMNIGLOT_SIZES = (28, 105)


def _split_entry(classes: list[str] | None, sizes: list[int] | None, *, num_classes: int, images: int,
                 content: dict[str, str] | None = None) -> dict:
    return {"classes": classes, "num_classes": num_classes, "class_sizes": sizes, "images": images,
            "content": content or {}}


def _manifest(id_: str, title: str, loader: str, match: dict, channels: int, image_size: int, splits: dict,
              source: str) -> dict:
    return {"format": FORMAT, "id": id_, "title": title, "loader": f"episodes.datasets.{loader}", "match": match,
            "channels": channels, "image_size": image_size, "splits": splits, "source": source}


def omniglot(root: Path, cache_dir: Path | None) -> list[dict]:
    """The Vinyals and Lake manifests from the official zips, checked against the embedded copy."""
    vinyals, lake = {}, {}
    for split in ("train", "val", "test", "trainval"):
        vinyals[split] = _omniglot_split(dict(protocol="vinyals", split_file=root / "splits" / "vinyals" /
                                              f"{split}.txt"), dict(protocol="vinyals", split=split), root, cache_dir)
    for split in ("background", "evaluation"):
        lake[split] = _omniglot_split(dict(protocol="lake", split=split), dict(protocol="lake", split=split), root,
                                      cache_dir)
    source = (f"decoded from the official zips ({', '.join(p.name for p in sorted(root.glob('*.zip')))}); the "
              "embedded copy decodes to the same pixels")
    return [_manifest("omniglot-vinyals", "Omniglot, Vinyals et al. 2016 split (1028/172/423 characters x 4 "
                      "rotations)", "load_omniglot", {"protocol": "vinyals"}, 1, 28, vinyals,
                      f"{source}; classes from the Vinyals split files splits/vinyals/*.txt"),
            _manifest("omniglot-lake", "Omniglot, Lake et al. 2015 background/evaluation alphabets", "load_omniglot",
                      {"protocol": "lake"}, 1, 28, lake, source)]


def _omniglot_split(real: dict, embedded: dict, root: Path, cache_dir: Path | None) -> dict:
    content, entry = {}, None
    for size in OMNIGLOT_SIZES:
        dataset = load_omniglot(root=root, image_size=size, cache_dir=cache_dir, **real)
        reference = load_omniglot(root=None, image_size=size, cache_dir=cache_dir, **embedded)
        content[str(size)] = content_fingerprint(dataset)
        if content_fingerprint(reference) != content[str(size)]:
            raise SystemExit(f"the embedded Omniglot copy differs from {root} ({embedded}, {size}px)")
        entry = _split_entry(list(dataset.class_names), dataset.class_sizes.tolist(), num_classes=dataset.num_classes,
                             images=len(dataset), content=content)
        log.info("omniglot %s at %dpx: %d classes, %s", embedded, size, dataset.num_classes, content[str(size)][:12])
    return entry


def mini_imagenet(split_dir: Path | None) -> dict:
    splits = {}
    for split in ("train", "val", "test"):
        rows, _ = read_ravi_split(split_dir, split)
        counts = collections.Counter(wnid for _, wnid in rows)
        classes = sorted(counts)  # the loaders' order: classes sorted by WordNet id
        splits[split] = _split_entry(classes, [counts[c] for c in classes], num_classes=len(classes), images=len(rows))
    return _manifest("mini-imagenet-ravi", "Mini-ImageNet, Ravi & Larochelle 2017 split", "load_mini_imagenet", {},
                     3, 84, splits, "the Ravi & Larochelle split files {train,val,test}.csv (the package embeds "
                     "the same rows)")


def tiered_imagenet() -> dict:
    splits = {}
    for split in ("train", "val", "test"):
        classes = sorted(c.class_name for c in read_tiered_split(split))
        splits[split] = _split_entry(classes, None, num_classes=len(classes),
                                     images=PUBLISHED["tiered_images"][split])
    return _manifest("tiered-imagenet-ren", "tieredImageNet, Ren et al. 2018 split", "load_tiered_imagenet", {}, 3,
                     84, splits, "the embedded split (tiered-imagenet-ren-splits.tsv); image totals per split as "
                     "published (per-class counts are not)")


def cifar() -> list[dict]:
    per_class = PUBLISHED["cifar_per_class"]
    fs = read_split_file(CIFAR_FS_SPLITS, "class")
    fs["trainval"] = fs["train"] + fs["val"]
    fs_splits = {split: _split_entry(sorted(names), [per_class] * len(names), num_classes=len(names),
                                     images=per_class * len(names)) for split, names in fs.items()}
    fc = read_split_file(FC100_SPLITS, "superclass")
    fc["trainval"] = fc["train"] + fc["val"]
    fc_splits = {}
    for split, supers in fc.items():
        count = PUBLISHED["cifar_per_superclass"] * len(supers)
        fc_splits[split] = _split_entry(None, [per_class] * count, num_classes=count, images=per_class * count)
    return [_manifest("cifar-fs-bertinetto", "CIFAR-FS, Bertinetto et al. 2019 split", "load_cifar_fs", {}, 3, 32,
                      fs_splits, "the embedded split file; 600 images per CIFAR-100 class"),
            _manifest("fc100-oreshkin", "FC100, Oreshkin et al. 2018 super-class split", "load_fc100", {}, 3, 32,
                      fc_splits, "the embedded super-class split; 5 classes of 600 images per CIFAR-100 super-class "
                      "(the fine class names need CIFAR-100's meta file, so only their number is listed)")]


def cub(listing: list[Path]) -> dict:
    counts: collections.Counter[str] = collections.Counter()
    for path in listing:
        if path.suffix == ".json":  # Chen et al.'s filelists: {"image_names": [".../images/<class>/<file>.jpg"]}
            counts.update(name.split("/")[-2] for name in json.loads(path.read_text())["image_names"])
        else:  # the official images.txt: "<image id> <class folder>/<file>.jpg"
            counts.update(line.split()[1].split("/")[0] for line in path.read_text().splitlines() if line.strip())
    splits = {}
    for split in ("train", "val", "test"):
        classes = chen_split(split)
        sizes = [counts[c] for c in classes]
        if not all(sizes):
            raise SystemExit(f"{listing} lists no image of some {split} classes; pass the whole archive's listing")
        splits[split] = _split_entry(classes, sizes, num_classes=len(classes), images=sum(sizes))
    return _manifest("cub-chen", "CUB-200-2011, Chen et al. 2019 split", "load_cub", {}, 3, 84, splits,
                     f"the embedded class list; images per class counted in {', '.join(p.name for p in listing)}, a "
                     f"listing of the official archive ({sum(counts.values())} images)")


def write(manifest: dict, out: Path) -> Path:
    data = gzip.compress(json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n", mtime=0)
    return atomic_write_bytes(out / f"manifest-{manifest['id']}.json.gz", data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--omniglot", type=Path, help="folder of the official zips with splits/vinyals/*.txt")
    parser.add_argument("--mini-splits", type=Path, help="folder of the Ravi split CSVs (default: the embedded copy)")
    parser.add_argument("--cub-listing", type=Path, nargs="+", help="images.txt, or Chen et al.'s CUB filelists")
    parser.add_argument("--cache-dir", type=Path, help="where the Omniglot decodes are cached")
    parser.add_argument("--out", type=Path, default=MANIFEST_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifests = [mini_imagenet(args.mini_splits), tiered_imagenet(), *cifar()]
    if args.omniglot:
        manifests += omniglot(args.omniglot, args.cache_dir)
    if args.cub_listing:
        manifests.append(cub(args.cub_listing))
    for manifest in manifests:
        log.info("wrote %s", write(manifest, args.out))


if __name__ == "__main__":
    main()
