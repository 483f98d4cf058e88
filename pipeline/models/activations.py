"""Pointwise activation functions used by cores and encoders."""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AdaptiveELU", "Elu1", "adaptive_elu", "elu1"]


def adaptive_elu(x: torch.Tensor, xshift: float = 0.0, yshift: float = 0.0) -> torch.Tensor:
    """Return ``elu(x - xshift) + yshift``.

    Args:
        x: input tensor of any shape.
        xshift: horizontal shift applied before the ELU.
        yshift: vertical shift added after the ELU.

    Returns:
        A new tensor of the same shape as ``x`` (the input is never modified in place).

    Zero shifts cost nothing: with both 0 this is one ``F.elu``. Only tensors created here are
    modified in place, and only where autograd allows it: ``x - xshift`` is a temporary, so the ELU
    runs in place on it (the in-place ELU saves its output for the backward pass, so ``yshift`` is then
    added out of place); without ``xshift`` the out-of-place ELU saves its input, so ``yshift`` can be
    added in place to the fresh output.
    """
    if xshift != 0:
        out = F.elu(x - xshift, inplace=True)
        return out + yshift if yshift != 0 else out
    out = F.elu(x)
    return out.add_(yshift) if yshift != 0 else out


def elu1(x: torch.Tensor) -> torch.Tensor:
    """Return ``elu(x) + 1``, a smooth strictly positive nonlinearity (shape preserved)."""
    return F.elu(x) + 1.0


class AdaptiveELU(nn.Module):
    """ELU with a shifted input and output: ``elu(x - xshift) + yshift``.

    Args:
        xshift: horizontal shift applied before the ELU.
        yshift: vertical shift added after the ELU.
    """

    def __init__(self, xshift: float = 0.0, yshift: float = 0.0) -> None:
        super().__init__()
        for name, value in (("xshift", xshift), ("yshift", yshift)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"AdaptiveELU: {name} must be a number, got {type(value).__name__}")
        self.xshift = float(xshift)
        self.yshift = float(yshift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the shifted ELU to ``x`` (any shape)."""
        return adaptive_elu(x, self.xshift, self.yshift)

    def extra_repr(self) -> str:
        return f"xshift={self.xshift}, yshift={self.yshift}"


class Elu1(nn.Module):
    """``elu(x) + 1``: keeps firing-rate predictions positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``elu(x) + 1`` to ``x`` (any shape)."""
        return elu1(x)
