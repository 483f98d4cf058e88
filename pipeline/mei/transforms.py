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
    iterations: int = 40,
) -> torch.Tensor:
    """Bring every image of ``x`` (B, ...) onto the constraint set: its norm and its pixel range.

    Without a pixel range: rescale to ``norm`` (``fixed``) or down to it (bound). With one, the image
    becomes ``clip(s * x)`` with the scale ``s`` chosen per image so that the clipped image has norm
    ``norm`` (fixed; found by bisection, since that norm grows with ``s`` when the range holds 0) or
    at most ``norm`` (bound). A new tensor is returned; ``x`` is not modified.
    """
    flat_dims = tuple(range(1, x.dim()))
    shape = (-1,) + (1,) * (x.dim() - 1)
    if norm is None:
        return x if pixel_range is None else x.clamp(pixel_range[0], pixel_range[1])
    current = torch.linalg.vector_norm(x, dim=flat_dims).clamp_min(1e-12)
    scale = norm / current
    if not fixed:
        scale = scale.clamp(max=1.0)
    if pixel_range is None:
        return x * scale.view(shape)
    low, high = pixel_range

    def clipped_norm(s: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm((x * s.view(shape)).clamp(low, high), dim=flat_dims)

    short = clipped_norm(scale) < norm * (1 - 1e-4)
    if fixed and bool(short.any()):
        # clipping took some norm away: find the larger scale that gives it back (bracket, then bisect)
        lower, upper = scale.clone(), scale.clone()
        for _ in range(60):
            reached = ~short | (clipped_norm(upper) >= norm)
            if bool(reached.all()):
                break
            upper = torch.where(reached, upper, upper * 2)
        for _ in range(iterations):
            middle = (lower + upper) / 2
            enough = clipped_norm(middle) >= norm
            lower = torch.where(short & ~enough, middle, lower)
            upper = torch.where(short & enough, middle, upper)
        scale = torch.where(short, upper, scale)
    return (x * scale.view(shape)).clamp(low, high)
