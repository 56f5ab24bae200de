"""``python -m fewshot data check`` and ``python -m fewshot episodes export``: commands that check a copy of a
dataset or export fixed test episodes, and claim no run folder (:func:`fewshot.hydra_app.command_main`).

- ``data check dataset=<option> dataset.loader.root=<dir>``: loads every class split of the dataset config and
  compares it with the manifest shipped with the package (:mod:`episodes.datasets.manifest`): names the variant of
  the files found, says what differs (missing or extra classes, image counts, image shape, other pixels where the
  manifest holds the reference copy's content), and prints each split's content fingerprint, the one result files
  record. Exit status 0 when the copy matches, 1 when it differs, 2 on bad input.
- ``episodes export out=<file> [dataset=... evaluation...=... | experiment=...]``: writes the test episodes of
  every ``evaluation.settings`` entry (``evaluation.episodes`` episodes of ``evaluation.n_query`` queries per class,
  drawn with ``evaluation.seed`` from the test split) to an episodes file (:mod:`episodes.episode_file`), for
  ``evaluation.episodes_file=<file>`` in ``train`` and ``eval``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from episodes.datasets.manifest import compare_split, describe_copy, find_manifest
from episodes.episode_file import draw_episode_set, write_episodes_file
from episodes.fingerprint import content_fingerprint, short
from fewshot.hydra_app import command_main

log = logging.getLogger("fewshot")


def _require(node: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(node))  # full keys, e.g. dataset.loader.root
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: pass e.g. {missing[0]}=<the folder holding your copy>")


def data_check(cfg: DictConfig) -> None:
    """python -m fewshot data check dataset=<option> dataset.loader.root=<dir>: compare every class split of the
    dataset with the manifest shipped with the package (class lists, images per class, image shape, and the reference
    copy's pixels where the manifest has them), name the variant of the files found and say what differs. Exit
    status 0 when the copy matches, 1 when it differs, 2 on bad input."""
    _require(cfg.dataset.loader)
    arguments = OmegaConf.to_container(cfg.dataset.loader, resolve=True)
    loader = arguments.pop("_target_")
    manifest = find_manifest(loader, arguments)
    differing = []
    for split in dict.fromkeys(s for s in cfg.dataset.splits.values() if s is not None):
        found = describe_copy(manifest, arguments, split)
        dataset = hydra.utils.instantiate(cfg.dataset.loader, split=split)
        differences, notes = compare_split(dataset, manifest, split)
        shape = "x".join(str(s) for s in dataset.images.shape[1:])
        log.info("%s, split %s: %s\n  %d classes, %d images of %s, content fingerprint %s: %s%s", dataset.name, split,
                 found, dataset.num_classes, len(dataset), shape, content_fingerprint(dataset),
                 "DIFFERS from the manifest: " + "; ".join(differences) if differences else "matches the manifest",
                 "".join(f"\n  ({note})" for note in notes))
        if differences:
            differing.append(split)
    if differing:
        log.error("this copy of %s differs from the manifest in split(s) %s (see above): results on it are not "
                  "comparable with results on the published copy", manifest.title, ", ".join(differing))
        sys.exit(1)
    log.info("this copy of %s matches the manifest", manifest.title)


def episodes_export(cfg: DictConfig) -> None:
    """python -m fewshot episodes export out=<file.json> [dataset=... | experiment=...] [evaluation.<key>=...]: write
    the test episodes of every evaluation.settings entry (evaluation.episodes episodes of evaluation.n_query queries
    per class, drawn with evaluation.seed from dataset.splits.test) to an episodes file (docs/formats.md); train and
    eval score them with evaluation.episodes_file=<file.json>."""
    out = OmegaConf.select(cfg, "out", throw_on_missing=False)  # None while unset (???)
    if not isinstance(out, str) or not out:
        raise ValueError("out is not set: give the episodes file to write, e.g. out=episodes.json")
    _require(cfg.dataset.loader)
    split = cfg.dataset.splits.test
    if split is None:
        raise ValueError("dataset.splits.test is null: name the class split whose episodes to export")
    test_set = hydra.utils.instantiate(cfg.dataset.loader, split=split)
    e = cfg.evaluation
    settings = [(int(w), int(k)) for w, k in e.settings]
    sets = [draw_episode_set(test_set, n_way=w, n_shot=k, n_query=e.n_query, episodes=e.episodes, seed=e.seed)
            for w, k in settings]
    out = Path(hydra.utils.to_absolute_path(out))
    checksum = write_episodes_file(out, test_set, sets)
    log.info("wrote %s: %s of %s (content fingerprint %s), drawn with seed %d; checksum %s. Evaluate on them with "
             "evaluation.episodes_file=%s", out, "; ".join(s.setting for s in sets), test_set.name,
             short(content_fingerprint(test_set)), e.seed, short(checksum), out)


data_check_main = command_main("data", data_check)
episodes_export_main = command_main("episodes", episodes_export)
