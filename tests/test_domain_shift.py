"""The domain shift of the transfer study (episodes/domain_shift.py): pixels checked by hand, deterministic, same
classes and episodes as the original."""

from __future__ import annotations

import math

import pytest
import torch

from episodes import EpisodeSampler, FewShotDataset
from episodes.domain_shift import gaussian_blur_uint8, gaussian_kernel, shift_domain


def _dataset() -> FewShotDataset:
    images = torch.zeros(6, 1, 9, 9, dtype=torch.uint8)
    images[0, 0, 4, 4] = 255  # one ink pixel in the middle
    images[1] = 100  # a uniform page
    images[2:] = torch.randint(0, 256, (4, 1, 9, 9), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return FewShotDataset.from_tensors(images, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], name="toy")


def test_kernel_is_the_normalised_gaussian_to_three_sigma() -> None:
    weights = [math.exp(-i * i / 2) for i in range(-3, 4)]  # sigma 1: radius ceil(3 * 1) = 3
    expected = torch.tensor([w / sum(weights) for w in weights], dtype=torch.float64)
    torch.testing.assert_close(gaussian_kernel(1.0), expected, rtol=0, atol=1e-15)
    assert len(gaussian_kernel(0.5)) == 5 and gaussian_kernel(0.0).tolist() == [1.0]
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(-1.0)


def test_one_ink_pixel_blurred_and_inverted_by_hand() -> None:
    # kernel sum 1 + 2 (e^-0.5 + e^-2 + e^-4.5) = 2.505950, k0 = 0.399050, k1 = 0.241971 (= e^-0.5 / 2.50595),
    # k2 = 0.054005, k3 = 0.004431. Blurred pixel (i, j) = round(255 k_i k_j), then inverted 255 - it:
    # centre 255 k0^2 = 40.61 -> 41 -> 214; (0, 1) 255 k0 k1 = 24.63 -> 25 -> 230; (1, 1) 255 k1^2 = 14.94 -> 15 ->
    # 240; (0, 2) 255 k0 k2 = 5.495 -> 5 -> 250; (0, 3) 255 k0 k3 = 0.45 -> 0 -> 255.
    shifted = shift_domain(_dataset(), invert=True, blur_sigma=1.0).images[0, 0]
    assert shifted[4, 4] == 214
    assert shifted[4, 5] == shifted[4, 3] == shifted[3, 4] == shifted[5, 4] == 230
    assert shifted[5, 5] == shifted[3, 3] == 240
    assert shifted[4, 6] == shifted[2, 4] == 250
    assert shifted[4, 7] == shifted[1, 4] == shifted[0, 0] == 255


def test_uniform_page_stays_uniform_and_invert_alone_is_255_minus() -> None:
    data = _dataset()
    assert bool((gaussian_blur_uint8(data.images[1:2], 2.0) == 100).all())  # replicated borders: no dark frame
    inverted = shift_domain(data, invert=True, blur_sigma=0.0)
    assert torch.equal(inverted.images, 255 - data.images)
    assert inverted.name == "toy+inverted"
    blurred = shift_domain(data, invert=False, blur_sigma=1.0)
    assert blurred.name == "toy+blur1" and blurred.images[0, 0, 4, 4] == 41


def test_deterministic_same_classes_same_episodes() -> None:
    data = _dataset()
    a, b = shift_domain(data), shift_domain(data)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert a.name == "toy+inverted+blur1" and a.class_names == data.class_names
    assert torch.equal(a.offsets, data.offsets) and (a.mean, a.std) == (data.mean, data.std)
    ids = torch.arange(5)
    near = EpisodeSampler(data, n_way=2, n_shot=1, n_query=1, seed=3).indices(ids)
    far = EpisodeSampler(a, n_way=2, n_shot=1, n_query=1, seed=3).indices(ids)
    for x, y in zip(near, far, strict=True):
        assert torch.equal(x, y)


def test_refuses_what_it_cannot_shift() -> None:
    data = _dataset()
    with pytest.raises(ValueError, match="changes nothing"):
        shift_domain(data, invert=False, blur_sigma=0.0)
    with pytest.raises(ValueError, match="uint8"):
        shift_domain(data.with_images(torch.zeros(6, 4)))
    with pytest.raises(ValueError, match="sigma"):
        shift_domain(data, blur_sigma=float("nan"))
