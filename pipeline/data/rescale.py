"""Image rescaling that gives the values sensorium's ``scale`` option gives.

sensorium resizes each image with ``skimage.transform.rescale(order=1, mode="reflect",
anti_aliasing=False)``: bilinear interpolation on pixel centres (output pixel ``o`` reads the input
at ``(o + 0.5) * n_in / n_out - 0.5``) with mirror boundaries, output size ``round(n * scale)``.
Pretrained Sensorium models were trained on such images, so ours are resized the same way — as two
small interpolation matrices applied to the whole tier, without scikit-image.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["interpolation_matrix", "rescaled_size", "rescale_images"]

#: images resized per chunk, which bounds the float32 working memory for large uint8 tiers
_CHUNK = 256


def rescaled_size(size: int, scale: float) -> int:
    """``round(size * scale)`` (half to even, as numpy), at least 1."""
    return max(1, int(np.round(size * scale)))


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) float64 matrix of linear interpolation with mirror boundaries.

    Row ``o`` interpolates the input at ``x = (o + 0.5) * n_in / n_out - 0.5``; indices outside
    ``0 .. n_in - 1`` are mirrored about the edge pixels (``-1 -> 1``, ``n_in -> n_in - 2``).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    matrix = np.zeros((n_out, n_in))
    if n_in == 1:
        matrix[:, 0] = 1.0
        return torch.from_numpy(matrix)
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(x).astype(np.int64)
    weight = x - left
    period = 2 * (n_in - 1)
    for index, w in ((left, 1.0 - weight), (left + 1, weight)):
        folded = np.mod(index, period)
        folded = np.where(folded >= n_in, period - folded, folded)
        np.add.at(matrix, (np.arange(n_out), folded), w)
    return torch.from_numpy(matrix)


def rescale_images(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize (n, C, H, W) images by ``scale`` in height and width; float32 out.

    Returns ``images`` unchanged when the size does not change.
    """
    height, width = images.shape[-2:]
    size = (rescaled_size(height, scale), rescaled_size(width, scale))
    if size == (height, width):
        return images
    rows = interpolation_matrix(height, size[0]).float()
    cols = interpolation_matrix(width, size[1]).float()
    out = torch.empty(*images.shape[:-2], *size, dtype=torch.float32)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK].float()
        out[start : start + _CHUNK] = rows @ chunk @ cols.t()
    return out
