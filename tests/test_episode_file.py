"""Episodes files (episodes/episode_file.py) and content fingerprints (episodes/fingerprint.py): a file round-trips
to the seeded episodes and the same per-episode accuracies; edited, truncated, inconsistent files, files made on
another copy of the data and files of another shape are refused with what is wrong."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from episodes import EpisodeBatch, EpisodeSampler, FewShotDataset
from episodes.datasets import load_image_folder
from episodes.episode_file import FixedEpisodes, draw_episode_set, read_episodes_file, write_episodes_file
from episodes.fingerprint import content_fingerprint
from fewshot.backbones import create_backbone
from fewshot.evaluation import evaluate_settings
from fewshot.learners import Learner, ProtoNet

SETTINGS = [(3, 1), (4, 2)]


def make_dataset(seed: int = 0, sizes: tuple[int, ...] = (6, 7, 8, 6, 9, 7)) -> FewShotDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (sum(sizes), 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return FewShotDataset.from_tensors(images, labels, [f"c{i}" for i in range(len(sizes))], name="toy/test")


class PixelNearestNeighbour(Learner):
    """Each query takes the label of the closest support image in pixels (scored through ``predict``)."""

    def predict(self, batch: EpisodeBatch) -> torch.Tensor:
        distances = torch.cdist(batch.query_x.flatten(2), batch.support_x.flatten(2))
        return torch.nn.functional.one_hot(batch.support_y.gather(1, distances.argmin(-1)), batch.n_way).float()


def write_file(path: Path, dataset: FewShotDataset, *, episodes: int = 12, n_query: int = 3, seed: int = 5) -> str:
    sets = [draw_episode_set(dataset, n_way=w, n_shot=k, n_query=n_query, episodes=episodes, seed=seed)
            for w, k in SETTINGS]
    return write_episodes_file(path, dataset, sets)


def test_a_file_round_trips_to_the_seeded_episodes_and_accuracies(tmp_path: Path) -> None:
    dataset = make_dataset()
    checksum = write_file(tmp_path / "episodes.json", dataset)
    episodes = read_episodes_file(tmp_path / "episodes.json")
    torch.manual_seed(0)
    learners = {"protonet": ProtoNet(create_backbone("conv4", in_channels=1, hidden=4, input_size=8, pooled_blocks=3)),
                "1-nn": PixelNearestNeighbour()}  # an embedding learner (features once) and one scored by predict
    kwargs = dict(settings=SETTINGS, n_query=3, episodes=12, batch_size=5, progress=False, permutations=0)
    seeded = evaluate_settings(learners, dataset, seed=5, **kwargs)
    from_file = evaluate_settings(learners, dataset, seed=999, episodes_file=episodes, **kwargs)  # the seed is unused
    for a, b in zip(seeded, from_file, strict=True):
        for name in learners:
            assert torch.equal(a[name].accuracies, b[name].accuracies)
        assert (b.spec.seed, b.spec.episodes_file, a.spec.episodes_file) == (5, checksum, None)
        assert dataclasses.replace(b.spec, episodes_file=None) == a.spec
    assert "episodes_file" not in seeded[0].to_dict()["spec"]  # seeded results keep their format
    # the gathered batches are the sampler's, bit for bit
    fixed, sampler = FixedEpisodes(dataset, episodes.sets[1]), EpisodeSampler(dataset, n_way=4, n_shot=2, n_query=3,
                                                                               seed=5, num_episodes=12)
    for field in dataclasses.fields(EpisodeBatch):
        assert torch.equal(getattr(fixed.batch([11, 0, 3]), field.name), getattr(sampler.batch([11, 0, 3]), field.name))


def test_the_file_lists_each_item_as_class_and_position_with_a_checksum_of_its_canonical_json(tmp_path: Path) -> None:
    dataset = make_dataset()
    checksum = write_file(tmp_path / "episodes.json", dataset)
    document = json.loads((tmp_path / "episodes.json").read_text())
    body = {k: v for k, v in document.items() if k != "checksum"}
    assert checksum == document["checksum"] == hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert document["dataset"] == {"name": "toy/test", "fingerprint": content_fingerprint(dataset),
                                   "classes": ["c0", "c1", "c2", "c3", "c4", "c5"], "class_sizes": [6, 7, 8, 6, 9, 7]}
    entry = document["sets"][1]
    assert (entry["n_way"], entry["n_shot"], entry["n_query"], entry["seed"], entry["episodes"]) == (4, 2, 3, 5, 12)
    support, query, classes = EpisodeSampler(dataset, n_way=4, n_shot=2, n_query=3, seed=5).indices([7])
    offsets = dataset.offsets.tolist()
    assert entry["classes"][7] == classes[0].tolist()
    assert [offsets[c] + p for c, row in zip(entry["classes"][7], entry["support"][7], strict=True) for p in row] == \
        support[0].tolist()
    assert [offsets[c] + p for c, row in zip(entry["classes"][7], entry["query"][7], strict=True) for p in row] == \
        query[0].tolist()


def test_the_content_fingerprint_is_the_sha256_of_a_header_and_the_pixels(tmp_path: Path) -> None:
    dataset = make_dataset(sizes=(2, 3))
    header = b'{"class_sizes":[2,3],"classes":["c0","c1"],"dtype":"uint8","shape":[1,8,8]}'
    assert content_fingerprint(dataset) == hashlib.sha256(header + dataset.images.numpy().tobytes()).hexdigest()
    renamed = dataclasses.replace(dataset, name="elsewhere", mean=(0.5,), std=(0.25,))
    assert content_fingerprint(renamed) == content_fingerprint(dataset)  # how pixels are fed is not the copy
    changed = dataset.images.clone()
    changed[4, 0, 7, 7] ^= 1
    assert content_fingerprint(dataclasses.replace(dataset, images=changed)) != content_fingerprint(dataset)


def test_two_copies_of_the_same_files_in_different_folders_have_one_fingerprint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "a" / f"class{c}").mkdir(parents=True)
        for i in range(2):
            image = Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8))
            image.save(tmp_path / "a" / f"class{c}" / f"{i}.png")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # new modification times: another cache key, the same content
    load = dict(image_size=8, channels=1, mean=[0.5], std=[0.5])
    a = load_image_folder(tmp_path / "a", cache_dir=tmp_path / "cache-a", **load)
    b = load_image_folder(tmp_path / "b", cache_dir=tmp_path / "cache-b", **load)
    assert content_fingerprint(a) == content_fingerprint(b)


def rewrite(path: Path, edit) -> None:
    """Apply ``edit`` to the document and store it with a valid checksum (a file another tool wrote)."""
    document = json.loads(path.read_text())
    edit(document)
    body = {k: v for k, v in document.items() if k != "checksum"}
    document["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(document))


def test_bad_files_are_refused_saying_what_is_wrong(tmp_path: Path) -> None:
    dataset, path = make_dataset(), tmp_path / "episodes.json"
    write_file(path, dataset)
    text = path.read_text()
    path.write_text(text.replace('"support":[[[', '"support":[[[1', 1))  # one position edited
    with pytest.raises(ValueError, match="was edited or damaged: its checksum does not match"):
        read_episodes_file(path)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"is not a readable episodes file .* truncated or damaged"):
        read_episodes_file(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a fewshot episodes file"):
        read_episodes_file(path)
    cases = [(lambda d: d["sets"][0]["query"][0][0].__setitem__(0, 6), "beyond its class's size"),
             (lambda d: d["sets"][0]["query"][0][0].__setitem__(0, d["sets"][0]["support"][0][0][0]), "image twice"),
             (lambda d: d["sets"][0]["classes"][0].__setitem__(1, d["sets"][0]["classes"][0][0]), "same class twice"),
             (lambda d: d["sets"][0]["classes"][0].__setitem__(1, 6), "class index >= the 6 classes"),
             (lambda d: d["sets"][1].__setitem__("episodes", 13), r"shape \(13, 4\), got \(12, 4\)")]
    for edit, message in cases:
        write_file(path, make_dataset(sizes=(6, 6, 6, 6, 6, 6)))
        rewrite(path, edit)
        with pytest.raises(ValueError, match=message):
            read_episodes_file(path)


def test_a_file_of_another_copy_or_shape_is_refused(tmp_path: Path) -> None:
    dataset, path = make_dataset(), tmp_path / "episodes.json"
    write_file(path, dataset)
    episodes = read_episodes_file(path)
    changed = dataset.images.clone()
    changed[0, 0, 0, 0] ^= 1
    with pytest.raises(ValueError, match=r"made on another copy of the data.*same classes and image counts but "
                                         r"other pixels"):
        episodes.check_dataset(dataclasses.replace(dataset, images=changed))
    with pytest.raises(ValueError, match="other classes or counts"):
        episodes.check_dataset(make_dataset(sizes=(6, 7, 8, 6, 9, 8)))
    with pytest.raises(ValueError, match=r"holds no 5-way 1-shot episodes \(it holds: 3-way 1-shot"):
        episodes.select([(5, 1)], n_query=3, episodes=12)
    with pytest.raises(ValueError, match=r"set evaluation\.n_query=3 evaluation\.episodes=12"):
        episodes.select([(4, 2)], n_query=3, episodes=600)
    with pytest.raises(ValueError, match="made on another copy"):  # through the harness too
        evaluate_settings({"1-nn": PixelNearestNeighbour()}, make_dataset(seed=1), settings=SETTINGS, n_query=3,
                          episodes=12, progress=False, episodes_file=episodes)
