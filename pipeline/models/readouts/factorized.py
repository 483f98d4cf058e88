"""Factorized readout (Klindt et al. 2017): per neuron, a spatial mask times a feature vector.

The weight of neuron n on core channel c at pixel (i, j) is ``mask[n, i, j] * features[n, c]``;
the prediction is that weighted sum of the core output plus a bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .base import NeuronPosition, Readout, Reduction, clamp_straight_through
from .sharing import SharedFeatures

__all__ = ["FullFactorized2d", "FullSXF", "SpatialXFeatureLinear", "factorized_readout"]

_NORM_EPS = 1e-6


def _grid_coordinates(size: int) -> torch.Tensor:
    """Pixel centres in grid units with align_corners=True: -1 .. 1 (0 for a single pixel)."""
    if size == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(-1.0, 1.0, size, dtype=torch.float64)


def shift_feature_map(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B, C, H, W) so that output pixel p holds the input at p + shift[b].

    ``shift`` (B, 2) is in grid units (x along width, y along height; the map spans [-1, 1] with
    align_corners=True). Reading a fixed mask from this map is the same as moving the mask by
    +shift, which is how a Gaussian readout's position moves with ``shift``. Outside the map is 0.
    """
    batch, _, height, width = x.shape
    ys = _grid_coordinates(height).to(x)
    xs = _grid_coordinates(width).to(x)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    grid = base.unsqueeze(0) + shift.to(x)[:, None, None, :]
    return F.grid_sample(x, grid, align_corners=True)


class _FactorizedReadout(torch.autograd.Function):
    """``out[b, n] = sum_c scale[n, c] * (x[b, c] . mask[n])`` with one GEMM forward and two backward.

    Why: autograd through ``spatial / |spatial|`` followed by einsum materialises the normalised
    (N, H, W) mask, keeps it for the backward pass and adds several passes over it there. Here the
    normalisation ``1 / (|m_n|_2 + 1e-6)`` is folded into the small (N, C) features, so the forward
    is the GEMM ``(B*C, S) @ (S, N)`` plus (B, C, N) work, and the backward is the two GEMMs for the
    input and mask gradients, with the norm's gradient added to the mask gradient in the same
    ``addmm_``. Values and gradients are those of the unfused formula (tested with gradcheck).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x2: torch.Tensor,
        spatial: torch.Tensor,
        features: torch.Tensor,
        normalize: bool,
        clamp_mask: bool,
    ) -> torch.Tensor:
        """``x2`` (B*C, S) core output, ``spatial`` (N, S) raw masks, ``features`` (N, C) -> (B, N)."""
        n_neurons, channels = features.shape
        batch = x2.shape[0] // channels
        mask = spatial.clamp(min=0.0) if clamp_mask else spatial
        y1 = x2 @ mask.t()  # (B*C, N): the only large product
        length = torch.linalg.vector_norm(spatial, dim=1) if normalize else None
        scale = features / (length + _NORM_EPS)[:, None] if length is not None else features
        out = (y1.view(batch, channels, n_neurons) * scale.t()).sum(1)
        ctx.save_for_backward(x2, spatial, features, y1, length)
        ctx.normalize, ctx.clamp_mask = normalize, clamp_mask
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients of ``x2``, ``spatial`` and ``features``; None for the two flags."""
        x2, spatial, features, y1, length = ctx.saved_tensors
        need_x, need_spatial, need_features = ctx.needs_input_grad[:3]
        n_neurons, channels = features.shape
        batch = x2.shape[0] // channels
        denom = length + _NORM_EPS if ctx.normalize else None
        scale = features / denom[:, None] if denom is not None else features
        grad_x2 = grad_spatial = grad_features = None
        # d out / d y1, (B*C, N)
        grad_y1 = (grad_out[:, None, :] * scale.t()).reshape(batch * channels, n_neurons)
        if need_x:
            mask = spatial.clamp(min=0.0) if ctx.clamp_mask else spatial
            grad_x2 = grad_y1 @ mask
            del mask
        grad_scale = None
        if need_features or (need_spatial and denom is not None and not ctx.clamp_mask):
            grad_scale = (grad_out[:, None, :] * y1.view(batch, channels, n_neurons)).sum(0).t()  # (N, C)
        if need_features:
            grad_features = grad_scale / denom[:, None] if denom is not None else grad_scale
        if need_spatial:
            # the clamp of the mask is straight-through: its gradient passes as if unclamped
            if denom is None:
                grad_spatial = grad_y1.t() @ x2
            elif not ctx.clamp_mask:
                # d/d|m| of scale = features / (|m| + eps), then d|m|/dm = m / |m| (0 for an all-zero mask)
                grad_denom = -(grad_scale * features).sum(1) / denom.square()
                coef = torch.where(length > 0, grad_denom / length, torch.zeros_like(length))
                grad_spatial = spatial * coef[:, None]
                grad_spatial.addmm_(grad_y1.t(), x2)
            else:
                # the norm is of the unclamped mask, so its gradient needs <dL/dmask, m> per neuron
                grad_spatial = grad_y1.t() @ x2
                dot = (grad_spatial.unsqueeze(1) @ spatial.unsqueeze(2)).view(-1)  # (N,)
                coef = torch.where(length > 0, -dot / (denom * length), torch.zeros_like(length))
                grad_spatial.addcmul_(spatial, coef[:, None])
        return grad_x2, grad_spatial, grad_features, None, None


def factorized_readout(
    x: torch.Tensor,
    spatial: torch.Tensor,
    features: torch.Tensor,
    normalize: bool = True,
    clamp_mask: bool = False,
) -> torch.Tensor:
    """Factorized readout without bias: ``out[b, n] = sum_{c,i,j} x[b, c, i, j] m[n, i, j] f[n, c]``.

    Args:
        x: core output (B, C, H, W).
        spatial: raw masks (N, H, W) (or (N, H*W)).
        features: effective feature vectors (N, C).
        normalize: use ``m = spatial / (|spatial_n|_2 + 1e-6)`` (the norm of the unclamped mask).
        clamp_mask: use the positive part of the (normalised) mask, with a straight-through gradient.

    Returns:
        (B, N) predictions. The normalised (N, H, W) mask is never materialised.
    """
    batch, channels, height, width = x.shape
    x2 = x.reshape(batch * channels, height * width)
    mask = spatial.reshape(spatial.shape[0], height * width)
    return _FactorizedReadout.apply(x2, mask, features, bool(normalize), bool(clamp_mask))


class FullFactorized2d(SharedFeatures, Readout):
    """Factorized (spatial mask x features) readout.

    Args:
        in_shape: (channels, height, width) of the core output.
        outdims: number of neurons N.
        bias: learn a bias per neuron.
        normalize: divide each neuron's mask by its L2 norm (+1e-6) before use.
        init_noise: std of the normal initialisation of masks and features.
        constrain_pos: use only the positive part of masks and features (values are clamped at
            use time; the stored parameters are never modified).
        positive_weights: use only the positive part of the features (same mechanism).
        shared_features: {"match_ids": (N,), "shared_features": Parameter (U, C) or None}: neurons
            with the same id share one feature vector, times a per-neuron ``scales`` (N, 1).
        mean_activity: (N,) initial bias.
        spatial_and_feature_reg_weight: weight of the regularizer.
        gamma_readout: old name of ``spatial_and_feature_reg_weight`` (wins when given).

    Parameters: ``spatial`` (N, H, W), ``_features`` (N, C), ``bias`` (N).
    """

    def __init__(
        self,
        in_shape,
        outdims: int,
        bias: bool,
        normalize: bool = True,
        init_noise: float = 1e-3,
        constrain_pos: bool = False,
        positive_weights: bool = False,
        shared_features: Mapping[str, Any] | None = None,
        mean_activity=None,
        spatial_and_feature_reg_weight: float = 1.0,
        gamma_readout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_shape, outdims, mean_activity=mean_activity)
        if init_noise <= 0:
            raise ValueError(f"init_noise must be positive, got {init_noise!r}")
        self.normalize = bool(normalize)
        self.init_noise = float(init_noise)
        self.constrain_pos = bool(constrain_pos)
        self.positive_weights = bool(positive_weights)
        self.spatial_and_feature_reg_weight = self.resolve_deprecated_gamma_readout(
            spatial_and_feature_reg_weight, gamma_readout
        )
        self._init_features(**dict(shared_features or {}))
        _, height, width = self.in_shape
        self.spatial = nn.Parameter(torch.empty(self.outdims, height, width))
        self.register_bias(bias)
        self.initialize(mean_activity)

    def _feature_shape(self, rows: int, channels: int) -> tuple[int, ...]:
        return (rows, channels)

    def initialize(self, mean_activity=None) -> None:
        """Masks and features ~ N(0, init_noise); bias = mean activity or 0."""
        if mean_activity is None:
            mean_activity = self.mean_activity
        with torch.no_grad():
            # meta tensors (shape-only builds, e.g. to count parameters) hold no values; their
            # normal_ would import torch's reference kernels, which takes seconds
            if not self.spatial.is_meta:
                self.spatial.normal_(0, self.init_noise)
                self._features.normal_(0, self.init_noise)
            self._initialize_scales()
        self.initialize_bias(mean_activity)

    # ------------------------------------------------------------------ effective weights
    def _effective_features(self, index: torch.Tensor | None = None) -> torch.Tensor:
        if self._shared_features:
            rows = self.feature_sharing_index if index is None else self.feature_sharing_index[index]
            scales = self.scales if index is None else self.scales[index]
            features = scales * self._features[rows]
        else:
            features = self._features if index is None else self._features[index]
        if self.positive_weights or self.constrain_pos:
            features = clamp_straight_through(features, min=0.0)
        return features

    def _effective_mask(self, index: torch.Tensor | None = None) -> torch.Tensor:
        # selecting neurons before normalising avoids a full-size copy of a large mask
        spatial = self.spatial if index is None else self.spatial[index]
        if self.normalize:
            norm = spatial.pow(2).sum(dim=1, keepdim=True).sum(dim=2, keepdim=True).sqrt() + _NORM_EPS
            spatial = spatial / norm
        if self.constrain_pos:
            spatial = clamp_straight_through(spatial, min=0.0)
        return spatial

    @property
    def features(self) -> torch.Tensor:
        """Effective features (N, C) (shared, scaled and constrained as configured)."""
        return self._effective_features()

    @property
    def normalized_spatial(self) -> torch.Tensor:
        """Effective masks (N, H, W) (normalised and constrained as configured)."""
        return self._effective_mask()

    @property
    def weight(self) -> torch.Tensor:
        """Full weight tensor (N, C, H, W) — large; for inspection of small readouts only."""
        return self.normalized_spatial.unsqueeze(1) * self.features[:, :, None, None]

    # ------------------------------------------------------------------ regularisation
    def l1(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """Sum over neurons of ``|mask_n|_1 * |features_n|_1``.

        "mean" divides the sum by N * C * H * W (as neuralpredictors does); None returns the
        per-neuron terms (N,).
        """
        reduction = self.resolve_reduction_method(reduction, average)
        per_neuron = self._mask_l1() * self.features.abs().sum(dim=1)
        if reduction is None:
            return per_neuron
        total = per_neuron.sum()
        if reduction == "mean":
            c, h, w = self.in_shape
            total = total / (self.outdims * c * h * w)
        return total

    def _mask_l1(self) -> torch.Tensor:
        """``|effective mask_n|_1`` (N,) without materialising the normalised mask.

        ``|clamp(m / nu)|_1 = |clamp(m)|_1 / nu`` for ``nu > 0``; with the straight-through clamp the
        gradient is also that of the unfolded ``|clamp_st(m / nu)|_1``.
        """
        spatial = self.spatial.reshape(self.outdims, -1)
        if self.constrain_pos:
            spatial = clamp_straight_through(spatial, min=0.0)
        mask_l1 = torch.linalg.vector_norm(spatial, ord=1, dim=1)
        if self.normalize:
            mask_l1 = mask_l1 / (
                torch.linalg.vector_norm(self.spatial.reshape(self.outdims, -1), dim=1) + _NORM_EPS
            )
        return mask_l1

    def regularizer(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """``spatial_and_feature_reg_weight * l1``."""
        return self.l1(reduction=reduction, average=average) * self.spatial_and_feature_reg_weight

    # ------------------------------------------------------------------ forward
    def forward(self, x, sample=None, shift=None, out_idx=None, **kwargs) -> torch.Tensor:
        """Predict (B, N) responses from core features ``x`` (B, C, H, W).

        Args:
            x: core features.
            sample: ignored (the factorized readout is deterministic).
            shift: (B, 2) in grid units: moves every neuron's mask by +shift for that image
                (implemented by resampling the feature map; content shifted in from outside is 0).
            out_idx: neurons to predict (indices or boolean mask); output is (B, len(out_idx)).
        """
        batch, _, _, _ = self.check_input(x)
        shift = self.check_shift(shift, batch)
        index = self.resolve_out_idx(out_idx, x.device)
        if shift is not None:
            x = shift_feature_map(x, shift)
        # neurons are selected before the product, so out_idx also saves compute
        spatial = self.spatial if index is None else self.spatial[index]
        features = self._effective_features(index)
        y = factorized_readout(x, spatial, features, normalize=self.normalize, clamp_mask=self.constrain_pos)
        if self.bias is not None:
            y = y + (self.bias if index is None else self.bias[index])
        return y

    # ------------------------------------------------------------------ inspection
    def neuron_features(self) -> torch.Tensor:
        """Effective features (N, C)."""
        return self.features

    def neuron_parameters(self, chunk: int = 256) -> dict[str, np.ndarray]:
        """Mask peak (mu_x, mu_y), spread of |mask| (sigma_x, sigma_y, sigma_xy), feature_norm, bias, features.

        Positions are in grid units (x along width, y along height); the spread is the weighted
        standard deviation / covariance of pixel positions with weights |mask| (NaN for an all-zero
        mask). Neurons are processed ``chunk`` at a time to bound memory.
        """
        _, height, width = self.in_shape
        ys, xs = _grid_coordinates(height), _grid_coordinates(width)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        position = NeuronPosition(*(np.empty(self.outdims) for _ in NeuronPosition._fields))
        with torch.no_grad():
            for start in range(0, self.outdims, chunk):
                index = torch.arange(start, min(start + chunk, self.outdims))
                weights = self._effective_mask(index).reshape(len(index), -1).abs().double().cpu()
                peak = weights.argmax(dim=1)
                total = weights.sum(dim=1, keepdim=True)
                p = weights / total.where(total > 0, torch.full_like(total, float("nan")))
                mean_x, mean_y = (p * xx).sum(1), (p * yy).sum(1)
                dx, dy = xx - mean_x[:, None], yy - mean_y[:, None]
                sl = slice(start, start + len(index))
                position.mu_x[sl] = xx[peak].numpy()
                position.mu_y[sl] = yy[peak].numpy()
                position.sigma_x[sl] = (p * dx * dx).sum(1).sqrt().numpy()
                position.sigma_y[sl] = (p * dy * dy).sum(1).sqrt().numpy()
                position.sigma_xy[sl] = (p * dx * dy).sum(1).numpy()
            return self._neuron_parameters(position, self.neuron_features())

    def _repr_extras(self) -> str:
        return self._features_repr() + (", normalized" if self.normalize else ", unnormalized")


class SpatialXFeatureLinear(FullFactorized2d):
    """Old name of :class:`FullFactorized2d` (kept so configs that name it still work)."""


class FullSXF(FullFactorized2d):
    """Old name of :class:`FullFactorized2d`."""
