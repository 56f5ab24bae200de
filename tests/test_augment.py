"""Batched seeded augmentations: equality with per-image references, key-driven reproducibility, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from episodes import FewShotDataset, rng
from episodes.augment import Compose, RandomCropFlip, RandomRot90Classes
from episodes.sampler import EpisodeSampler


def keys(shape: tuple[int, ...], salt: int = 0) -> torch.Tensor:
    return rng.derive(rng.seed_key(salt), torch.arange(int(torch.tensor(shape).prod())).reshape(shape))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 4, 2, 6, 6, generator=torch.Generator().manual_seed(0))


def reference_crop_flip(x: torch.Tensor, key: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """One image (C, H, W): zero-pad, crop at the key's offsets, maybe flip."""
    dy = int(rng.uniform_int(key, 0, 2 * padding + 1))
    dx = int(rng.uniform_int(key, 1, 2 * padding + 1))
    h, w = x.shape[-2:]
    out = F.pad(x, (padding, padding, padding, padding))[:, dy:dy + h, dx:dx + w]
    if flip and int(rng.uniform_int(key, 2, 2)) == 1:
        out = out.flip(-1)
    return out


@pytest.mark.parametrize(("padding", "flip"), [(0, True), (2, False), (3, True), (8, True)])
def test_crop_flip_matches_per_image_reference(images: torch.Tensor, padding: int, flip: bool) -> None:
    image_keys = keys(images.shape[:2])
    out = RandomCropFlip(padding=padding, flip=flip)(images, image_keys=image_keys, class_keys=image_keys)
    assert out.shape == images.shape
    for b in range(images.shape[0]):
        for k in range(images.shape[1]):
            expected = reference_crop_flip(images[b, k], image_keys[b, k], padding, flip)
            assert torch.equal(out[b, k], expected), (b, k)


def test_crop_flip_without_padding_or_flip_is_identity(images: torch.Tensor) -> None:
    image_keys = keys(images.shape[:2])
    out = RandomCropFlip(padding=0, flip=False)(images, image_keys=image_keys, class_keys=image_keys)
    assert torch.equal(out, images)


def test_flip_happens_about_half_the_time() -> None:
    x = torch.arange(5.0).expand(1, 400, 1, 1, 5)
    out = RandomCropFlip(padding=0)(x, image_keys=keys((1, 400)), class_keys=keys((1, 400)))
    flipped = (out[0, :, 0, 0, 0] == 4.0).sum().item()
    assert torch.equal(out[0, :, 0, 0, 0].unique(), torch.tensor([0.0, 4.0]))
    assert 150 < flipped < 250


def test_augment_depends_only_on_keys(images: torch.Tensor) -> None:
    augment = RandomCropFlip(padding=2)
    a = augment(images, image_keys=keys(images.shape[:2]), class_keys=keys(images.shape[:2]))
    b = augment(images, image_keys=keys(images.shape[:2]), class_keys=keys(images.shape[:2]))
    c = augment(images, image_keys=keys(images.shape[:2], salt=1), class_keys=keys(images.shape[:2]))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rot90_classes_rotates_each_class_by_its_key(images: torch.Tensor) -> None:
    class_keys = keys((3, 2)).repeat_interleave(2, dim=1)  # (3, 4): images 0,1 share a class, 2,3 another
    out = RandomRot90Classes()(images, image_keys=keys(images.shape[:2]), class_keys=class_keys)
    turns = rng.uniform_int(class_keys, 0, 4)
    assert len(turns.unique()) > 1
    for b in range(3):
        for k in range(4):
            assert torch.equal(out[b, k], torch.rot90(images[b, k], int(turns[b, k]), dims=(-2, -1)))


def test_compose_applies_each_with_its_own_keys(images: torch.Tensor) -> None:
    image_keys, class_keys = keys(images.shape[:2]), keys(images.shape[:2], salt=2)
    crop, rot = RandomCropFlip(padding=1), RandomRot90Classes()
    out = Compose([crop, rot])(images, image_keys=image_keys, class_keys=class_keys)
    step = crop(images, image_keys=rng.derive(image_keys, 0), class_keys=rng.derive(class_keys, 0))
    expected = rot(step, image_keys=rng.derive(image_keys, 1), class_keys=rng.derive(class_keys, 1))
    assert torch.equal(out, expected)


def test_sampler_rotates_support_and_query_of_a_class_alike() -> None:
    # Every image of a class is the same asymmetric picture, so after rotation all images of an
    # episode label (support and query) must still be identical.
    picture = torch.zeros(4, 4, dtype=torch.uint8)
    picture[0, 1], picture[2, 3] = 255, 128
    labels = torch.arange(6).repeat_interleave(4)
    data = FewShotDataset.from_tensors(picture.expand(24, 1, 4, 4).clone(), labels, list("abcdef"), name="pic")
    sampler = EpisodeSampler(data, n_way=3, n_shot=2, n_query=2, seed=0, augment=RandomRot90Classes())
    batch = sampler.batch(torch.arange(30))
    support = batch.support_x.view(30, 3, 2, 16)
    query = batch.query_x.view(30, 3, 2, 16)
    assert torch.equal(support[:, :, :1].expand(-1, -1, 2, -1), support)
    assert torch.equal(support[:, :, :1].expand(-1, -1, 2, -1), query)
    rotations = {tuple(v.tolist()) for v in support[:, :, 0].reshape(-1, 16)}
    assert len(rotations) == 4


def test_bad_augment_input_is_refused(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="padding must be a non-negative int"):
        RandomCropFlip(padding=-1)
    with pytest.raises(ValueError, match=r"expected images \(B, K, C, H, W\)"):
        RandomCropFlip()(images[0], image_keys=keys((4,)), class_keys=keys((4,)))
    with pytest.raises(ValueError, match="square images"):
        RandomRot90Classes()(images[..., :5], image_keys=keys((3, 4)), class_keys=keys((3, 4)))
    with pytest.raises(TypeError, match="sequence of Augment"):
        Compose([RandomCropFlip(), "flip"])  # type: ignore[list-item]
