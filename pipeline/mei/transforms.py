"""Image operations of MEI optimisation, each over a batch of images (one per neuron)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["gaussian_blur", "per_image_shift", "project"]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur every channel of ``x`` (B, C, H, W) with a separable Gaussian of std ``sigma`` pixels.

    Borders replicate the edge pixels (so the blur of a constant image is that constant). ``sigma`` 0
    returns ``x`` itself.
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def per_image_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift image i of ``x`` (B, C, H, W) circularly by ``shifts[i] = (dy, dx)`` pixels (differentiable)."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] - shifts[:, :1]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]) % w  # (B, W)
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def project(
    x: torch.Tensor,
    norm: float | None,
    fixed: bool,
    pixel_range: tuple[float, float] | None,
    rounds: int = 10,
) -> torch.Tensor:
    """Bring every image of ``x`` (B, ...) onto the constraint set: its norm and its pixel range.

    With both a fixed norm and a pixel range the two are alternated (rescale, clip) until the norm is
    within 0.1 % of ``norm`` or ``rounds`` is reached: clipping shrinks the norm, rescaling may push
    pixels out of range again. A new tensor is returned; ``x`` is not modified.
    """
    flat_dims = tuple(range(1, x.dim()))
    for _ in range(rounds):
        if norm is not None:
            current = torch.linalg.vector_norm(x, dim=flat_dims, keepdim=True).clamp_min(1e-12)
            scale = norm / current
            if not fixed:
                scale = scale.clamp(max=1.0)
            x = x * scale
        if pixel_range is not None:
            x = x.clamp(pixel_range[0], pixel_range[1])
        if norm is None or pixel_range is None or not fixed:
            break
        error = (torch.linalg.vector_norm(x, dim=flat_dims) / norm - 1).abs().max()
        if error < 1e-3:
            break
    return x
