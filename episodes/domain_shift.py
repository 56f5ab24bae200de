"""A deterministic domain shift of a dataset's uint8 images: inverted contrast and a Gaussian blur.

Used by the transfer-learning study (:mod:`fewshot.training.transfer_study`) as its far domain: Omniglot drawings
as dark, out-of-focus strokes on a bright page. Why this is a shift a pretrained stroke detector must cope with:

- Omniglot is stored as bright ink (255) on a black page (0), so a backbone pretrained on it learns first-layer
  filters that fire on thin bright strokes, and its batch norm keeps running statistics of nearly black images
  (about 8% ink). Inverting the contrast, as handwriting is actually scanned or photographed (dark ink on light
  paper), flips the sign of every oriented-edge response and moves the mean input from about 0.08 to 0.92, so the
  stored statistics no longer standardise the activations of the layers that are frozen.
- A Gaussian blur (sigma 1 pixel at 28x28, an out-of-focus photograph or a low-resolution scan) widens the strokes
  and removes the sharp edges those filters match.
- The characters stay as legible to a person as before: the label information is all there, so accuracy lost on
  this domain is the pretrained features failing to transfer, not missing evidence.

The transform acts once on the whole uint8 tensor (about a second for Omniglot's 13,180 evaluation images on one
core) and returns a new :class:`~episodes.dataset.FewShotDataset` with the same classes and class sizes, so a seeded
:class:`~episodes.sampler.EpisodeSampler` draws the same episodes (the same drawings, shifted) from it as from the
original: near- and far-domain accuracies pair up episode by episode. No random numbers are drawn.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from episodes.dataset import FewShotDataset

__all__ = ["gaussian_blur_uint8", "gaussian_kernel", "shift_domain"]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """(2r + 1,) float64 weights ``exp(-i^2 / (2 sigma^2))`` for ``i`` in ``[-r, r]``, ``r = ceil(3 sigma)``,
    normalised to sum to 1 (``[1.0]`` for ``sigma == 0``)."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"blur sigma must be a finite number >= 0 (pixels; 0 = no blur), got {sigma!r}")
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-offsets**2 / (2 * sigma**2)) if sigma > 0 else torch.ones(1, dtype=torch.float64)
    return weights / weights.sum()


def gaussian_blur_uint8(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 images, borders extended by replication, rounded half to even.

    Args:
        images: (N, C, H, W) uint8.
        sigma: standard deviation in pixels (:func:`gaussian_kernel`); 0 returns a copy.
    Returns:
        (N, C, H, W) uint8 ``round(sum_ij k_i k_j x[h + i, w + j])``, computed in float64.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) uint8 images, got {images.dtype} of shape {tuple(images.shape)}")
    kernel = gaussian_kernel(sigma).to(images.device)
    radius = len(kernel) // 2
    if radius == 0:
        return images.clone()
    n, c, h, w = images.shape
    x = images.to(torch.float64).reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.round().clamp(0, 255).to(torch.uint8).reshape(n, c, h, w)


def shift_domain(dataset: FewShotDataset, *, invert: bool = True, blur_sigma: float = 1.0,
                 name: str | None = None) -> FewShotDataset:
    """``dataset`` with every image blurred (:func:`gaussian_blur_uint8`), then inverted (``255 - x``).

    Args:
        dataset: uint8 images (N, C, H, W).
        invert: turn bright-on-dark into dark-on-bright.
        blur_sigma: Gaussian blur in pixels; 0 skips the blur.
        name: the new dataset's name; default ``<name>+inverted+blur<sigma>`` (the parts applied).
    Returns:
        The same classes, class sizes, class names and normalisation over the shifted (N, C, H, W) uint8 images.
    """
    if dataset.images.dtype != torch.uint8 or dataset.images.ndim != 4:
        raise ValueError(f"{dataset.name}: shift_domain acts on (N, C, H, W) uint8 images, got "
                         f"{dataset.images.dtype} of shape {tuple(dataset.images.shape)} (features cannot be shifted)")
    gaussian_kernel(blur_sigma)  # validates sigma
    if not invert and blur_sigma == 0:
        raise ValueError("shift_domain with invert=False and blur_sigma=0 changes nothing; set invert=True and/or "
                         "blur_sigma > 0")
    images = gaussian_blur_uint8(dataset.images, blur_sigma) if blur_sigma > 0 else dataset.images
    if invert:
        images = 255 - images
    parts = (["inverted"] if invert else []) + ([f"blur{blur_sigma:g}"] if blur_sigma > 0 else [])
    return dataset.with_images(images, name=name or "+".join([dataset.name, *parts]))
