"""The readout base class: logic shared by every per-session readout.

A readout maps core features (B, C, H, W) to one prediction per neuron (B, N). Subclasses define
their parameters and ``forward``; this class provides input validation, neuron selection
(``out_idx``), the regularizer reduction, bias initialisation, the grid-sampling step shared by the
Gaussian-like readouts, ``neuron_parameters()`` helpers and the neuralpredictors-style ``repr``.
"""

from __future__ import annotations

import abc
import logging
import numbers
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from pipeline.kernels import sample_and_weight

__all__ = [
    "ConfigurationError",
    "FeatureL1Readout",
    "Readout",
    "Reduction",
    "NEURON_PARAMETER_KEYS",
    "NeuronPosition",
    "clamp_straight_through",
]

logger = logging.getLogger(__name__)

Reduction = Literal["sum", "mean"] | None


class NeuronPosition(NamedTuple):
    """Where each neuron reads the core, as (N,) float64 arrays in grid units [-1, 1] (x along the
    width, y along the height); NaN where a readout does not define a value.

    Attributes:
        mu_x, mu_y: the position (the mean of a Gaussian, a point, the peak of a factorized mask).
        sigma_x, sigma_y, sigma_xy: the spread: standard deviations and covariance (of the sampling
            Gaussian, or of |mask| for factorized readouts).
    """

    mu_x: np.ndarray
    mu_y: np.ndarray
    sigma_x: np.ndarray
    sigma_y: np.ndarray
    sigma_xy: np.ndarray


#: the keys of every ``Readout.neuron_parameters()`` dict, in order: the position, then the L2 norm
#: of each neuron's feature vector, its bias (N,) float64 and its features (N, C) float32
NEURON_PARAMETER_KEYS = (*NeuronPosition._fields, "feature_norm", "bias", "features")


class ConfigurationError(ValueError):
    """Raised for readout arguments that contradict each other."""


def clamp_straight_through(
    x: torch.Tensor, min: float | None = None, max: float | None = None
) -> torch.Tensor:
    """Clamp the values of ``x`` but pass gradients through as if unclamped.

    Why: neuralpredictors clamps parameters in place inside ``forward``. We never modify parameters
    in the forward pass; this gives the same forward values, and gradients still reach a parameter
    that has left the valid range so it can come back (a plain clamp would freeze it there).
    """
    clamped = x.clamp(min=min, max=max)
    return x + (clamped - x).detach()


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(in_shape)
    except TypeError:
        raise TypeError(f"in_shape must be a sequence (channels, height, width), got {in_shape!r}") from None
    if len(values) != 3 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(f"in_shape must be three ints (channels, height, width), got {in_shape!r}")
    if min(values) < 1:
        raise ValueError(f"in_shape entries must be positive, got {in_shape!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _check_outdims(outdims: int) -> int:
    if isinstance(outdims, bool) or not isinstance(outdims, numbers.Integral) or outdims < 1:
        raise ValueError(f"outdims (number of neurons) must be a positive int, got {outdims!r}")
    return int(outdims)


def _as_float64(values: torch.Tensor) -> np.ndarray:
    return values.detach().to("cpu", torch.float64).numpy().reshape(-1).copy()


class Readout(nn.Module, abc.ABC):
    """Abstract per-session readout: core features (B, C, H, W) -> responses (B, N).

    Args:
        in_shape: (channels, height, width) of the core output this readout receives.
        outdims: number of neurons N.
        mean_activity: optional (N,) mean response per neuron used to initialise the bias.

    Subclasses call :meth:`register_bias` where the reference library creates its bias, so that
    parameters appear in the same order.
    """

    bias: nn.Parameter | None

    def __init__(
        self,
        in_shape: Sequence[int],
        outdims: int,
        mean_activity: torch.Tensor | np.ndarray | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _check_in_shape(in_shape)
        self.outdims = _check_outdims(outdims)
        self.mean_activity = mean_activity

    def register_bias(self, bias: bool) -> None:
        """Create the per-neuron ``bias`` parameter (N,) if ``bias``, else register it as None."""
        if bias:
            self.bias = nn.Parameter(torch.empty(self.outdims))
        else:
            self.register_parameter("bias", None)

    # ------------------------------------------------------------------ interface
    @abc.abstractmethod
    def forward(
        self,
        x: torch.Tensor,
        sample: bool | None = None,
        shift: torch.Tensor | None = None,
        out_idx: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Predict responses (B, N) (or (B, len(out_idx))) from core features ``x`` (B, C, H, W)."""

    @abc.abstractmethod
    def initialize(self, mean_activity: Any = None) -> None:
        """Re-initialise all parameters; the bias from ``mean_activity`` (N,) or 0."""

    @abc.abstractmethod
    def regularizer(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """Penalty added to the training loss (scalar unless ``reduction`` is None)."""

    @abc.abstractmethod
    def neuron_features(self) -> torch.Tensor:
        """Effective feature weights of every neuron, shape (N, C') (differentiable)."""

    @abc.abstractmethod
    def neuron_parameters(self) -> dict[str, np.ndarray]:
        """Per-neuron parameters: ``{key: array}`` for every key of :data:`NEURON_PARAMETER_KEYS`
        (the :class:`NeuronPosition` arrays, ``feature_norm`` and ``bias`` (N,) float64, ``features``
        (N, C) float32; see docs/INTERFACES.md)."""

    # ------------------------------------------------------------------ shared helpers
    def check_input(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """Validate core features ``x`` against ``in_shape``; return (B, C, H, W)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects core features of shape (batch, channels, height, width), "
                f"got {tuple(x.shape)}"
            )
        batch, channels, height, width = x.shape
        if (channels, height, width) != self.in_shape:
            raise ValueError(
                f"{type(self).__name__} was built for core features (channels, height, width) = {self.in_shape}, "
                f"got {(channels, height, width)} (input shape {tuple(x.shape)})"
            )
        return batch, channels, height, width

    def check_shift(self, shift: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Validate a per-image shift of shape (B, 2) in grid units (x along width, y along height)."""
        if shift is None:
            return None
        if not isinstance(shift, torch.Tensor):
            raise TypeError(f"shift must be a tensor of shape ({batch}, 2), got {type(shift).__name__}")
        if shift.shape != (batch, 2):
            raise ValueError(f"shift must have shape (batch, 2) = ({batch}, 2), got {tuple(shift.shape)}")
        return shift

    def resolve_out_idx(self, out_idx: Any, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Turn ``out_idx`` into a LongTensor of neuron indices (on ``device``), or None.

        Accepts indices or a boolean mask of length N, as a list, numpy array, torch tensor or slice.
        """
        if out_idx is None:
            return None
        if isinstance(out_idx, slice):
            index = torch.arange(self.outdims)[out_idx]
        else:
            index = self._index_from_array(out_idx)
        return index if device is None else index.to(device)

    def _index_from_array(self, out_idx: Any) -> torch.Tensor:
        if isinstance(out_idx, torch.Tensor):
            index = out_idx.detach().cpu()  # validated on the CPU: one transfer, no per-check syncs
        else:
            index = torch.as_tensor(np.asarray(out_idx))
        if index.dim() != 1:
            raise ValueError(f"out_idx must be one-dimensional, got shape {tuple(index.shape)}")
        if index.dtype == torch.bool:
            if index.numel() != self.outdims:
                raise ValueError(f"boolean out_idx must have {self.outdims} entries, got {index.numel()}")
            return torch.nonzero(index, as_tuple=False).reshape(-1)
        if index.numel() == 0:
            return index.long()
        if index.dtype.is_floating_point or index.dtype.is_complex:
            raise TypeError(f"out_idx must hold integer indices or booleans, got dtype {index.dtype}")
        index = index.long()
        if int(index.min()) < -self.outdims or int(index.max()) >= self.outdims:
            raise ValueError(f"out_idx has indices outside 0..{self.outdims - 1}")
        return index % self.outdims

    @staticmethod
    def resolve_reduction_method(reduction: Reduction = "mean", average: bool | None = None) -> Reduction:
        """Translate the deprecated ``average`` flag into ``reduction`` ("mean"/"sum"), if given."""
        if average is not None:
            return "mean" if average else "sum"
        if reduction not in ("sum", "mean", None):
            raise ValueError(f"reduction must be 'sum', 'mean' or None, got {reduction!r}")
        return reduction

    def apply_reduction(
        self, x: torch.Tensor, reduction: Reduction = "mean", average: bool | None = None
    ) -> torch.Tensor:
        """Reduce a tensor of penalty terms: "sum", "mean" or None (returned unchanged)."""
        reduction = self.resolve_reduction_method(reduction, average)
        if reduction == "sum":
            return x.sum()
        if reduction == "mean":
            return x.mean()
        return x

    @staticmethod
    def resolve_deprecated_gamma_readout(feature_reg_weight: float, gamma_readout: float | None) -> float:
        """``gamma_readout`` (sensorium's name) wins over ``feature_reg_weight`` when given."""
        weight = feature_reg_weight if gamma_readout is None else gamma_readout
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise TypeError(f"the readout regularisation weight must be a number, got {weight!r}")
        return float(weight)

    def initialize_bias(self, mean_activity: Any = None) -> None:
        """Set the bias to ``mean_activity`` (N,) or to 0 when it is None."""
        if self.bias is None:
            return
        with torch.no_grad():
            if mean_activity is None:
                self.bias.zero_()
                return
            values = torch.as_tensor(
                mean_activity.detach()
                if isinstance(mean_activity, torch.Tensor)
                else np.asarray(mean_activity)
            )
            if values.numel() != self.outdims:
                raise ValueError(
                    f"mean_activity must have one entry per neuron ({self.outdims}), got shape {tuple(values.shape)}"
                )
            self.bias.copy_(values.reshape(-1).to(self.bias))

    @staticmethod
    def select_neurons(
        index: torch.Tensor | None, grid: torch.Tensor, features: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keep the neurons ``index`` (from :meth:`resolve_out_idx`; None keeps all) of positions
        (B, N, 1, 2), channel weights (1, C, N) and bias (N,) or None."""
        if index is None:
            return grid, features, bias
        return grid[:, index], features[:, :, index], bias[index] if bias is not None else None

    def readout_at_grid(
        self,
        x: torch.Tensor,
        grid: torch.Tensor,
        features: torch.Tensor,
        bias: torch.Tensor | None,
        shift: torch.Tensor | None = None,
        align_corners: bool = True,
    ) -> torch.Tensor:
        """Sample ``x`` at one position per neuron, weight the channels and add the bias.

        Args:
            x: core features (B, C, H, W).
            grid: positions (B, N', 1, 2) in grid units, already clamped to [-1, 1]
                (last axis: x along width, y along height).
            features: channel weights (1, C, N').
            bias: (N',) or None.
            shift: (B, 2) added to every position of an image (after clamping, as in the peer).
            align_corners: passed to ``F.grid_sample`` (True: -1 and 1 are the centres of the corner pixels).

        Returns:
            (B, N') predictions.
        """
        if shift is not None:
            grid = grid + shift[:, None, None, :]
        y = sample_and_weight(x, grid, features, align_corners)
        if bias is not None:
            y = y + bias
        return y

    def _neuron_parameters(
        self, position: NeuronPosition, features: torch.Tensor, bias: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The :meth:`neuron_parameters` dict (keys :data:`NEURON_PARAMETER_KEYS`).

        Args:
            position: the (N,) position and spread arrays.
            features: the effective features (N, C).
            bias: (N,) biases; default this readout's ``bias`` (NaN without one).
        """
        feats = features.detach().to("cpu", torch.float32)
        if bias is None:
            bias = _as_float64(self.bias) if self.bias is not None else np.full(self.outdims, np.nan)
        values = (*position, _as_float64(feats.double().norm(dim=1)), bias, feats.numpy().copy())
        return dict(zip(NEURON_PARAMETER_KEYS, values, strict=True))

    # ------------------------------------------------------------------ repr
    def _repr_prefix(self) -> str:
        return ""

    def _repr_extras(self) -> str:
        return ""

    def __repr__(self) -> str:
        c, h, w = self.in_shape
        text = f"{self._repr_prefix()}{type(self).__name__} ({c} x {h} x {w} -> {self.outdims})"
        if self.bias is not None:
            text += " with bias"
        text += self._repr_extras()
        for child in self.children():
            text += "  -> " + repr(child) + "\n"
        return text


class FeatureL1Readout(Readout):
    """A readout penalised by ``feature_reg_weight`` times the L1 norm of its ``features``.

    Subclasses set ``self.feature_reg_weight`` and provide ``features`` (a Parameter or property).
    """

    feature_reg_weight: float

    def feature_l1(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """L1 norm of the features, reduced by ``reduction``."""
        return self.apply_reduction(self.features.abs(), reduction=reduction, average=average)

    def regularizer(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """``feature_reg_weight * feature_l1``."""
        return self.feature_l1(reduction=reduction, average=average) * self.feature_reg_weight
