"""EpisodeSampler: episode contents, determinism, uniformity and input validation on tiny synthetic data."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from episodes import FewShotDataset, rng
from episodes import sampler as sampler_module
from episodes.augment import RandomCropFlip
from episodes.episode import EpisodeBatch
from episodes.sampler import EpisodeSampler


def make_dataset(sizes: list[int], *, channels: int = 1, side: int = 4) -> FewShotDataset:
    """Classes of the given sizes; every image is unique (its first pixels encode its row)."""
    n = sum(sizes)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    images = torch.zeros(n, channels, side, side, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    images[:, 0, 1, 0] = labels.to(torch.uint8)
    return FewShotDataset.from_tensors(images, labels, [f"class{i}" for i in range(len(sizes))], name="tiny",
                                       mean=(0.5,) * channels, std=(0.25,) * channels)


@pytest.fixture(params=["key-sort", "floyd"])
def image_draw(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with each of the sampler's two ways of drawing images within a class."""
    if request.param == "floyd":
        monkeypatch.setattr(sampler_module, "_KEY_SORT_MAX_CLASS_SIZE", 0)
    return request.param


@pytest.fixture(scope="module")
def dataset() -> FewShotDataset:
    return make_dataset([6, 9, 7, 20, 5, 8, 6, 11, 6, 7])


def reference_derive(key: int, counter: int) -> int:
    """SplitMix64 output ``counter`` of state ``key``, in unsigned Python integers."""
    mask = (1 << 64) - 1
    z = (key + (counter + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_rng_matches_unsigned_python_reference() -> None:
    r = random.Random(0)
    keys = [r.getrandbits(64) for _ in range(500)]
    counters = [r.randrange(1 << 40) for _ in range(500)]
    signed = [k - (1 << 64) if k >> 63 else k for k in keys]
    out = rng.derive(torch.tensor(signed), torch.tensor(counters)).tolist()
    assert [o % (1 << 64) for o in out] == [reference_derive(k, c) for k, c in zip(keys, counters, strict=True)]


def test_rng_rejects_non_int_seed() -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        rng.seed_key(1.5)  # type: ignore[arg-type]


def test_batch_shapes_labels_and_class_major_order(dataset: FewShotDataset) -> None:
    sampler = EpisodeSampler(dataset, n_way=4, n_shot=2, n_query=3, seed=1)
    batch = sampler.batch([0, 5, 7])
    assert batch.support_x.shape == (3, 8, 1, 4, 4) and batch.query_x.shape == (3, 12, 1, 4, 4)
    assert batch.support_x.dtype == torch.float32
    assert torch.equal(batch.support_y, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).repeat(3, 1))
    assert torch.equal(batch.query_y, torch.arange(4).repeat_interleave(3).repeat(3, 1))
    assert torch.equal(batch.episode_ids, torch.tensor([0, 5, 7]))
    assert (batch.n_way, batch.n_shot, batch.n_query) == (4, 2, 3)


def test_rows_match_labels_classes_and_gathered_pixels(dataset: FewShotDataset, image_draw: str) -> None:
    sampler = EpisodeSampler(dataset, n_way=5, n_shot=2, n_query=3, seed=3)
    ids = torch.arange(40)
    support_idx, query_idx, classes = sampler.indices(ids)
    batch = sampler.batch(ids)
    assert torch.equal(batch.classes, classes)
    labels = dataset.labels
    assert torch.equal(labels[support_idx], classes.gather(1, batch.support_y))
    assert torch.equal(labels[query_idx], classes.gather(1, batch.query_y))
    assert torch.equal(batch.support_x, dataset.to_float(dataset.images[support_idx]))
    assert torch.equal(batch.query_x, dataset.to_float(dataset.images[query_idx]))


def test_cpu_block_gather_equals_one_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_dataset([7] * 6, channels=3)
    monkeypatch.setattr(sampler_module, "_CPU_BLOCK_ELEMENTS", 3 * data.images[0].numel())  # blocks of 3 rows
    monkeypatch.setattr(sampler_module, "_CPU_BLOCKS_ABOVE", 0)
    sampler = EpisodeSampler(data, n_way=3, n_shot=2, n_query=2, seed=0)
    batch = sampler.batch(torch.arange(5))  # 60 rows: 20 blocks
    support_idx, query_idx, _ = sampler.indices(torch.arange(5))
    assert torch.equal(batch.support_x, data.to_float(data.images[support_idx]))
    assert torch.equal(batch.query_x, data.to_float(data.images[query_idx]))


def test_classes_distinct_and_support_query_disjoint(dataset: FewShotDataset, image_draw: str) -> None:
    sampler = EpisodeSampler(dataset, n_way=6, n_shot=2, n_query=3, seed=4)
    support_idx, query_idx, classes = sampler.indices(torch.arange(300))
    for s, q, c in zip(support_idx.tolist(), query_idx.tolist(), classes.tolist(), strict=True):
        assert len(set(c)) == 6
        assert len(set(s) | set(q)) == len(s) + len(q)
        assert all(0 <= x < 10 for x in c)


def test_episodes_are_pure_functions_of_seed_and_id(dataset: FewShotDataset) -> None:
    sampler = EpisodeSampler(dataset, n_way=3, n_shot=1, n_query=2, seed=7, num_episodes=20)
    forward = sampler.batch(torch.arange(20))
    again = EpisodeSampler(dataset, n_way=3, n_shot=1, n_query=2, seed=7, num_episodes=20)
    for i in [19, 3, 0, 11]:
        single = again[i]
        assert torch.equal(single.support_x, forward.support_x[i]) and torch.equal(single.classes, forward.classes[i])
        assert single.episode_id == i
    shuffled = again.batch([4, 2, 9])
    assert torch.equal(shuffled.query_x, forward.query_x[[4, 2, 9]])
    chunks = list(again.batches(6))
    assert [len(c.episode_ids) for c in chunks] == [6, 6, 6, 2]
    assert torch.equal(torch.cat([c.support_x for c in chunks]), forward.support_x)
    assert torch.equal(again[-1].query_x, forward.query_x[19])


def test_dataloader_with_two_workers_gives_the_in_process_episodes(dataset: FewShotDataset) -> None:
    sampler = EpisodeSampler(dataset, n_way=3, n_shot=2, n_query=2, seed=11, num_episodes=12)
    loader = torch.utils.data.DataLoader(sampler, batch_size=4, num_workers=2, collate_fn=EpisodeBatch.stack)
    loaded = list(loader)
    expected = sampler.batch(torch.arange(12))
    assert torch.equal(torch.cat([b.support_x for b in loaded]), expected.support_x)
    assert torch.equal(torch.cat([b.query_x for b in loaded]), expected.query_x)
    assert torch.equal(torch.cat([b.classes for b in loaded]), expected.classes)
    assert torch.equal(torch.cat([b.episode_ids for b in loaded]), torch.arange(12))


def test_golden_episode_is_stable_across_versions_and_machines(image_draw: str) -> None:
    # Changing the sampling algorithm changes every fixed evaluation set: these values must not move.
    sampler = EpisodeSampler(make_dataset([5] * 8), n_way=3, n_shot=1, n_query=2, seed=0)
    support_idx, query_idx, classes = sampler.indices([0, 1])
    assert classes.tolist() == GOLDEN_CLASSES
    assert support_idx.tolist() == GOLDEN_SUPPORT[image_draw]
    assert query_idx.tolist() == GOLDEN_QUERY[image_draw]


GOLDEN_CLASSES = [[4, 7, 2], [4, 2, 0]]
GOLDEN_SUPPORT = {"key-sort": [[22, 38, 12], [21, 12, 1]], "floyd": [[24, 39, 12], [21, 14, 2]]}
GOLDEN_QUERY = {"key-sort": [[20, 24, 39, 37, 14, 13], [23, 22, 11, 13, 3, 0]],
                "floyd": [[23, 22, 37, 36, 11, 10], [22, 20, 12, 10, 4, 3]]}


def test_seeds_and_episodes_differ(dataset: FewShotDataset) -> None:
    a = EpisodeSampler(dataset, n_way=5, n_shot=1, n_query=1, seed=0).indices(torch.arange(50))
    b = EpisodeSampler(dataset, n_way=5, n_shot=1, n_query=1, seed=1).indices(torch.arange(50))
    assert not torch.equal(a[2], b[2])
    assert len({tuple(c) for c in a[2].tolist()}) > 40


def test_class_and_label_frequencies_are_uniform() -> None:
    num_classes, n_way, episodes = 12, 4, 3000
    sampler = EpisodeSampler(make_dataset([3] * num_classes), n_way=n_way, n_shot=1, n_query=1, seed=5)
    classes = sampler.indices(torch.arange(episodes))[2]
    expected = episodes * n_way / num_classes
    counts = torch.bincount(classes.flatten(), minlength=num_classes).double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0, f"class counts {counts.tolist()} far from uniform (chi2={chi2:.1f}, 11 dof)"
    first_label = torch.bincount(classes[:, 0], minlength=num_classes).double()
    expected_first = episodes / num_classes
    chi2_first = float(((first_label - expected_first) ** 2 / expected_first).sum())
    assert chi2_first < 50.0, f"label 0 is not a uniform class: {first_label.tolist()}"


def test_image_choice_and_support_membership_are_uniform(image_draw: str) -> None:
    size, episodes = 10, 4000
    sampler = EpisodeSampler(make_dataset([size, size]), n_way=2, n_shot=1, n_query=3, seed=9)
    support_idx, query_idx, _ = sampler.indices(torch.arange(episodes))
    for rows, per_episode in [(support_idx, 1), (torch.cat([support_idx, query_idx], 1), 4)]:
        counts = torch.bincount(rows.flatten(), minlength=2 * size).double()
        expected = episodes * per_episode / size
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 70.0, f"image counts {counts.tolist()} far from uniform (chi2={chi2:.1f}, 19 dof)"


def test_unequal_class_sizes_stay_inside_their_class(image_draw: str) -> None:
    sizes = [3, 50, 4, 7, 3]
    data = make_dataset(sizes)
    sampler = EpisodeSampler(data, n_way=5, n_shot=1, n_query=2, seed=2)
    support_idx, query_idx, classes = sampler.indices(torch.arange(400))
    rows = torch.cat([support_idx.view(400, 5, 1), query_idx.view(400, 5, 2)], 2)
    start, stop = data.offsets[classes].unsqueeze(-1), data.offsets[classes + 1].unsqueeze(-1)
    assert bool(((rows >= start) & (rows < stop)).all())
    assert set(rows[classes == 1].flatten().tolist()) == set(range(3, 53))  # every image of the big class


def test_feature_rows_are_gathered_unchanged(dataset: FewShotDataset) -> None:
    features = torch.randn(len(dataset), 6)
    sampler = EpisodeSampler(dataset.with_images(features), n_way=3, n_shot=2, n_query=1, seed=0)
    batch = sampler.batch([1, 2])
    support_idx, _, _ = sampler.indices([1, 2])
    assert batch.support_x.shape == (2, 6, 6)
    assert torch.equal(batch.support_x, features[support_idx])


def test_augmented_episodes_are_reproducible(dataset: FewShotDataset) -> None:
    plain = EpisodeSampler(dataset, n_way=3, n_shot=2, n_query=2, seed=0)
    augmented = EpisodeSampler(dataset, n_way=3, n_shot=2, n_query=2, seed=0, augment=RandomCropFlip(padding=2))
    a, b = augmented.batch([0, 1, 2]), augmented.batch([2, 1, 0])
    assert torch.equal(a.query_x, b.query_x.flip(0)) and torch.equal(a.classes, plain.batch([0, 1, 2]).classes)
    assert not torch.equal(a.support_x, plain.batch([0, 1, 2]).support_x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_gpu_give_identical_episodes(dataset: FewShotDataset) -> None:
    kwargs = {"n_way": 5, "n_shot": 2, "n_query": 3, "seed": 13, "augment": RandomCropFlip(padding=1)}
    cpu = EpisodeSampler(dataset, **kwargs).batch(torch.arange(64))
    gpu = EpisodeSampler(dataset.to("cuda"), **kwargs).batch(torch.arange(64)).to("cpu")
    assert torch.equal(cpu.classes, gpu.classes)
    assert torch.equal(cpu.support_x, gpu.support_x) and torch.equal(cpu.query_x, gpu.query_x)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_way": 0}, "n_way must be a positive int"),
    ({"n_shot": -1}, "n_shot must be a positive int"),
    ({"n_query": 0}, "n_query must be a positive int"),
    ({"n_way": True}, "n_way must be a positive int"),
    ({"num_episodes": 0}, "num_episodes must be a positive int"),
    ({"n_way": 11}, "n_way=11 but the dataset has only 10 classes"),
    ({"n_shot": 3, "n_query": 3}, r"n_shot \+ n_query = 6 but class 4 \('class4'\) has only 5 images"),
])
def test_bad_shapes_are_refused(dataset: FewShotDataset, kwargs: dict, message: str) -> None:
    settings = {"n_way": 2, "n_shot": 1, "n_query": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(dataset, **settings)


def test_bad_episode_ids_and_lengths_are_refused(dataset: FewShotDataset) -> None:
    endless = EpisodeSampler(dataset, n_way=2, n_shot=1, n_query=1, seed=0)
    with pytest.raises(TypeError, match="endless stream"):
        len(endless)
    with pytest.raises(ValueError, match="episode ids must be >= 0"):
        endless.batch([3, -1])
    with pytest.raises(ValueError, match="at least one episode"):
        endless.batch([])
    finite = EpisodeSampler(dataset, n_way=2, n_shot=1, n_query=1, seed=0, num_episodes=5)
    assert len(finite) == 5
    with pytest.raises(IndexError, match="out of range"):
        finite[5]
    with pytest.raises(ValueError, match="beyond num_episodes=5"):
        finite.batch([0, 5])
    with pytest.raises(ValueError, match="start <= stop"):
        next(finite.batches(2, start=4, stop=2))
    with pytest.raises(ValueError, match="augmentation needs"):
        EpisodeSampler(dataset.with_images(torch.zeros(len(dataset), 3)), n_way=2, n_shot=1, n_query=1, seed=0,
                       augment=RandomCropFlip())


@st.composite
def valid_shapes(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    """Class sizes and an (n_way, n_shot, n_query) that the sampler must accept."""
    sizes = draw(st.lists(st.integers(min_value=2, max_value=40), min_size=2, max_size=12))
    n_way = draw(st.integers(min_value=1, max_value=len(sizes)))
    n_shot = draw(st.integers(min_value=1, max_value=min(sizes) - 1))
    n_query = draw(st.integers(min_value=1, max_value=min(sizes) - n_shot))
    return sizes, n_way, n_shot, n_query


@settings(max_examples=60, deadline=None)
@given(shape=valid_shapes(), seed=st.integers(min_value=-(2**62), max_value=2**62),
       ids=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=6))
def test_episode_invariants_hold_for_any_valid_shape(shape: tuple[list[int], int, int, int], seed: int,
                                                     ids: list[int]) -> None:
    """Property test: for any dataset and shape the sampler accepts, every episode has distinct classes,
    rows inside their class, disjoint support and query, and equals itself drawn alone."""
    sizes, n_way, n_shot, n_query = shape
    data = make_dataset(sizes)
    sampler = EpisodeSampler(data, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=seed)
    support, query, classes = sampler.indices(ids)
    assert support.shape == (len(ids), n_way * n_shot) and query.shape == (len(ids), n_way * n_query)
    for b in range(len(ids)):
        assert len(set(classes[b].tolist())) == n_way
        rows = torch.cat([support[b].view(n_way, n_shot), query[b].view(n_way, n_query)], 1)  # (n_way, m)
        start, stop = data.offsets[classes[b]], data.offsets[classes[b] + 1]
        assert bool(((rows >= start[:, None]) & (rows < stop[:, None])).all())
        assert all(len(set(r.tolist())) == n_shot + n_query for r in rows)  # distinct: support, query disjoint
        alone = sampler.indices([ids[b]])
        assert torch.equal(alone[0][0], support[b]) and torch.equal(alone[1][0], query[b])
