"""Weight regularizers for convolutional cores.

The Laplace regularizers penalise the roughness of 2d filters (smooth receptive fields generalise
better); the group-sparsity helper pushes whole input-output filter pairs to zero. Numbers match
neuralpredictors 0.3.0 so that regularised losses (and hence training runs) are comparable.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Laplace",
    "LaplaceL2",
    "LaplaceL2norm",
    "group_sparsity",
    "input_regularizer",
    "laplace_kernel",
    "INPUT_REGULARIZERS",
]


def laplace_kernel(size: int = 3) -> torch.Tensor:
    """Return a discrete Laplace (or Laplacian-of-Gaussian) filter of shape (1, 1, size, size).

    Args:
        size: 3 gives the 4-neighbour Laplacian [[0,-1,0],[-1,4,-1],[0,-1,0]]; 5 and 7 give
            Laplacian-of-Gaussian approximations.
    """
    if size == 3:
        rows = [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]
    elif size == 5:
        rows = [[0, 0, 1, 0, 0], [0, 1, 2, 1, 0], [1, 2, -16, 2, 1], [0, 1, 2, 1, 0], [0, 0, 1, 0, 0]]
    elif size == 7:
        rows = [
            [0, 0, 1, 1, 1, 0, 0],
            [0, 1, 3, 3, 3, 1, 0],
            [1, 3, 0, -7, 0, 3, 1],
            [1, 3, -7, -24, -7, 3, 1],
            [1, 3, 0, -7, 0, 3, 1],
            [0, 1, 3, 3, 3, 1, 0],
            [0, 0, 1, 1, 1, 0, 0],
        ]
    else:
        raise ValueError(f"laplace_kernel: size must be 3, 5 or 7, got {size!r}")
    return torch.tensor(rows, dtype=torch.float32)[None, None]


class Laplace(nn.Module):
    """Convolve a stack of single-channel images with a Laplace filter.

    Args:
        padding: zero padding of the convolution; None means half the filter size ("same").
        filter_size: 3, 5 or 7 (see :func:`laplace_kernel`).

    The filter is a buffer named ``filter`` (state-dict compatible with neuralpredictors).
    """

    def __init__(self, padding: int | None = None, filter_size: int = 3) -> None:
        super().__init__()
        self.register_buffer("filter", laplace_kernel(filter_size))
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int) or padding < 0):
            raise ValueError(f"Laplace: padding must be None or a non-negative int, got {padding!r}")
        self.padding_size = filter_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter ``x`` of shape (n, 1, h, w); returns (n, 1, h', w')."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"Laplace expects input of shape (n, 1, h, w), got {tuple(x.shape)}")
        return F.conv2d(x, self.filter.to(x.dtype), bias=None, padding=self.padding_size)


def _as_filter_stack(weight: torch.Tensor) -> torch.Tensor:
    """Reshape conv weights (out, in, kh, kw) into a stack of single-channel images (out*in, 1, kh, kw)."""
    if weight.dim() != 4:
        raise ValueError(f"expected conv weights of shape (out, in, kh, kw), got {tuple(weight.shape)}")
    out_c, in_c, kh, kw = weight.shape
    return weight.reshape(out_c * in_c, 1, kh, kw)


class _LaplacePenalty(nn.Module):
    """What the Laplace penalties share: a Laplace filter applied to each conv filter of the weights.

    Args:
        padding: padding of the Laplace convolution (None: "same").
        filter_size: size of the Laplace filter (3, 5, 7).
    """

    def __init__(self, padding: int | None = None, filter_size: int = 3) -> None:
        super().__init__()
        self.laplace = Laplace(padding=padding, filter_size=filter_size)

    def _filters_and_squared_laplace(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The filter stack (out*in, 1, kh, kw) of conv weights (out, in, kh, kw) and its ``laplace(.)^2``."""
        stack = _as_filter_stack(weight)
        return stack, self.laplace(stack).pow(2)


class LaplaceL2(_LaplacePenalty):
    """Unnormalised Laplace smoothness penalty: ``agg(laplace(w)^2) / 2``.

    Args:
        padding: padding of the Laplace convolution (None: "same").
        filter_size: size of the Laplace filter (3, 5, 7).
    """

    def forward(self, weight: torch.Tensor, avg: bool = True) -> torch.Tensor:
        """Penalty of conv weights (out, in, kh, kw); mean over entries if ``avg`` else sum. Scalar."""
        _, filtered = self._filters_and_squared_laplace(weight)
        return (filtered.mean() if avg else filtered.sum()) / 2


class LaplaceL2norm(_LaplacePenalty):
    """Laplace penalty normalised by the filter energy: ``agg(laplace(w)^2) / agg(w^2)``.

    Scale-invariant in the weights, so it only measures roughness.

    Args:
        padding: padding of the Laplace convolution (None: "same").
        filter_size: size of the Laplace filter (3, 5, 7).
    """

    def forward(self, weight: torch.Tensor, avg: bool = False) -> torch.Tensor:
        """Penalty of conv weights (out, in, kh, kw); mean-based if ``avg`` else sum-based. Scalar."""
        stack, filtered = self._filters_and_squared_laplace(weight)
        energy = stack.pow(2)
        if avg:
            return filtered.mean() / energy.mean()
        return filtered.sum() / energy.sum()


INPUT_REGULARIZERS: dict[str, type[nn.Module]] = {"LaplaceL2": LaplaceL2, "LaplaceL2norm": LaplaceL2norm}


def input_regularizer(name: str, padding: int | None = None) -> nn.Module:
    """Build the input-layer regularizer called ``name`` ("LaplaceL2" or "LaplaceL2norm").

    Args:
        name: regularizer name as used in neuralpredictors / sensorium configs.
        padding: padding of the Laplace convolution (None: "same").
    """
    if name not in INPUT_REGULARIZERS:
        raise ValueError(f"unknown input_regularizer {name!r}; choose one of {sorted(INPUT_REGULARIZERS)}")
    return INPUT_REGULARIZERS[name](padding=padding)


def group_sparsity(weight: torch.Tensor) -> torch.Tensor:
    """Mean over (out, in) channel pairs of the L2 norm of each spatial filter.

    Args:
        weight: conv weights of shape (out, in, kh, kw).

    Returns:
        A scalar tensor (differentiable); zero only when every filter is zero.
    """
    if weight.dim() != 4:
        raise ValueError(f"group_sparsity expects conv weights (out, in, kh, kw), got {tuple(weight.shape)}")
    # summing width then height keeps float rounding identical to neuralpredictors
    return weight.pow(2).sum(dim=3).sum(dim=2).sqrt().mean()
