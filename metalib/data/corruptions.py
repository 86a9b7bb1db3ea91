"""Glyphs-C: common corruptions of images at five severities, for test-time adaptation.

CIFAR-10-C and ImageNet-C (Hendrycks & Dietterich, 2019) measure robustness to shifts that keep
the label: 15 corruptions (noise, blur, weather, digital) at severities 1 to 5, applied to the test
set only. This module applies five of that kind to any image dataset of the book's convention
(single channel, float in ``[0, 1]``, ink 1 on a background of 0):

* ``gaussian_noise``: add ``N(0, sigma^2)`` pixel noise, then clip to ``[0, 1]``;
* ``blur``: a Gaussian blur (zero padding: the background is 0);
* ``contrast``: pull every pixel towards the image's mean (ink fades into a grey background);
* ``elastic``: move pixels along a smooth random displacement field (Simard et al., 2003);
* ``inversion``: ``1 - x``, white background and black ink. It has no strength to grade, so it
  is the same at every severity.

Noise and elastic are random: pass a seeded ``torch.Generator`` to make them repeatable (draws
happen on the CPU, so the same seed gives the same corruption on every device).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "blur", "contrast", "elastic", "inversion")

# Strength per severity 1..5, chosen so that severity 1 barely hurts a Conv4 trained on clean
# Glyphs and severity 5 makes it mostly wrong, as CIFAR-10-C's levels do for a CIFAR network
# (whose noise std runs 0.04..0.10: glyphs are bold binary strokes and take more).
NOISE_STD = (0.06, 0.1, 0.15, 0.2, 0.3)  # standard deviation of the added noise
BLUR_SIGMA = (0.4, 0.6, 0.8, 1.0, 1.25)  # pixels
CONTRAST = (0.7, 0.5, 0.4, 0.3, 0.2)  # the fraction of each pixel's deviation from the mean kept
ELASTIC_PIXELS = (0.75, 1.0, 1.5, 2.0, 2.5)  # standard deviation of the displacement, pixels
_ELASTIC_GRID = 4  # the random field is drawn on a 4 x 4 grid and smoothly upsampled


def _gaussian_noise(x: torch.Tensor, s: int, g: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    return (x + NOISE_STD[s - 1] * noise).clamp(0.0, 1.0)


def _blur(x: torch.Tensor, s: int, g: torch.Generator | None) -> torch.Tensor:
    sigma = BLUR_SIGMA[s - 1]
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()  # weights sum to 1: a blurred image stays in [0, 1]
    flat = x.reshape(-1, 1, *x.shape[-2:])  # (N, 1, H, W)
    # separable: rows then columns
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1), padding=(0, radius))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1), padding=(radius, 0))
    return flat.reshape(x.shape).clamp(0.0, 1.0)


def _contrast(x: torch.Tensor, s: int, g: torch.Generator | None) -> torch.Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - mean) * CONTRAST[s - 1] + mean).clamp(0.0, 1.0)


def _elastic(x: torch.Tensor, s: int, g: torch.Generator | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)  # (N, 1, H, W)
    n = flat.shape[0]
    coarse = torch.randn(n, 2, _ELASTIC_GRID, _ELASTIC_GRID, generator=g, dtype=x.dtype)
    field = F.interpolate(coarse.to(x.device), size=(h, w), mode="bicubic", align_corners=True)
    field = field * ELASTIC_PIXELS[s - 1]  # (N, 2, H, W) displacement in pixels (x, y)
    # grid_sample's coordinates run from -1 to 1 across the image: one pixel is 2 / size
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device),
        torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    grid = torch.stack(
        [xs + field[:, 0] * 2 / max(w - 1, 1), ys + field[:, 1] * 2 / max(h - 1, 1)], dim=-1
    )  # (N, H, W, 2)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(x.shape).clamp(0.0, 1.0)


def _inversion(x: torch.Tensor, s: int, g: torch.Generator | None) -> torch.Tensor:
    return 1.0 - x


_APPLY = {
    "gaussian_noise": _gaussian_noise,
    "blur": _blur,
    "contrast": _contrast,
    "elastic": _elastic,
    "inversion": _inversion,
}


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply one corruption at one severity to a batch of images.

    Args:
        images: ``(..., 1, H, W)`` or ``(..., H, W)`` floats in ``[0, 1]``, ink 1 on 0.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (severe), as in CIFAR-10-C.
        generator: the randomness of ``gaussian_noise`` and ``elastic`` (``None``: torch's
            global generator); the other corruptions are deterministic.

    Returns:
        The corrupted images: same shape, dtype and device, values in ``[0, 1]``.

    Raises:
        ValueError: an unknown name, a severity outside 1..5, images that are not floating point,
            have fewer than 2 axes or leave ``[0, 1]``.

    Example:
        >>> x = torch.zeros(2, 1, 28, 28)
        >>> corrupt(x, "inversion", 3).min().item()
        1.0
    """
    if name not in _APPLY:
        raise ValueError(
            f"unknown corruption {name!r}; choose one of {CORRUPTIONS}",
        )
    is_int = isinstance(severity, int) and not isinstance(severity, bool)
    if not is_int or not 1 <= severity <= 5:
        raise ValueError(
            f"severity must be an int from 1 to 5, got {severity!r}",
        )
    is_tensor = isinstance(images, torch.Tensor)
    if not is_tensor or not images.is_floating_point():
        raise ValueError(
            "images must be a floating-point tensor in [0, 1] "
            "(convert uint8 with x / 255)"
        )  # fmt: skip
    if images.dim() < 2:
        raise ValueError(
            "images need at least the (H, W) axes, "
            f"got shape {tuple(images.shape)}"
        )  # fmt: skip
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must lie in [0, 1], got values from "
            f"{images.min().item():.3g} to {images.max().item():.3g}; "
            f"rescale them first",
        )
    return _APPLY[name](images, severity, generator)
