"""Gaussian readouts (Lurz et al. 2021): each neuron reads the core at one learned position.

During training the position is drawn from a per-neuron Gaussian N(mu, Sigma) (one draw per image
when ``batch_sample``), which lets the gradient find the receptive field; in evaluation the mean
``mu`` is used, so predictions are deterministic. Positions are in grid units: [-1, 1] spans the
feature map, x along the width and y along the height (``F.grid_sample`` convention).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import (
    ConfigurationError,
    FeatureL1Readout,
    NeuronPosition,
    Reduction,
    _as_float64,
    clamp_straight_through,
)
from .sharing import SharedFeatures, shared_parameter

__all__ = ["FullGaussian2d", "Gaussian2d"]

GAUSS_TYPES = ("full", "uncorrelated", "isotropic")


def _check_range(name: str, value: float, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value <= 0 or (upper is not None and value > upper):
        bound = f"(0, {upper}]" if upper is not None else "> 0"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")
    return float(value)


class _GaussianReadout(FeatureL1Readout):
    """What the Gaussian readouts share: mean positions, and a forward pass that reads the core at
    positions from ``sample_grid`` (one draw per image when ``batch_sample``).

    Subclasses set ``batch_sample``, ``align_corners``, ``feature_reg_weight`` and provide
    ``sample_grid`` and ``features`` (1, C, 1, N).
    """

    batch_sample: bool
    align_corners: bool

    @property
    def grid(self) -> torch.Tensor:
        """Mean positions (1, N, 1, 2), clamped to [-1, 1]."""
        return self.sample_grid(batch_size=1, sample=False)

    def forward(self, x, sample=None, shift=None, out_idx=None, **kwargs) -> torch.Tensor:
        """Predict (B, N) responses from core features ``x`` (B, C, H, W).

        Args:
            x: core features.
            sample: draw positions (True), use the means (False), or follow the training mode (None).
            shift: (B, 2) shift added to the positions of each image (e.g. from eye movements).
            out_idx: neurons to predict (indices or boolean mask); output is (B, len(out_idx)).
        """
        batch, c, _, _ = self.check_input(x)
        shift = self.check_shift(shift, batch)
        if self.batch_sample:
            grid = self.sample_grid(batch, sample)
        else:
            grid = self.sample_grid(1, sample).expand(batch, self.outdims, 1, 2)
        feat = self.features.view(1, c, self.outdims)
        index = self.resolve_out_idx(out_idx, x.device)
        grid, feat, bias = self.select_neurons(index, grid, feat, self.bias)
        return self._read_at_grid(x, grid, feat, bias, shift)

    def _read_at_grid(self, x, grid, feat, bias, shift) -> torch.Tensor:
        """(B, N') predictions: ``x`` read at ``grid`` (see :meth:`Readout.readout_at_grid`)."""
        return self.readout_at_grid(x, grid, feat, bias, shift, self.align_corners)


class Gaussian2d(_GaussianReadout):
    """Gaussian readout with an axis-aligned Gaussian per neuron (the original, older variant).

    Args:
        in_shape: (channels, height, width) of the core output.
        outdims: number of neurons N.
        bias: learn a bias per neuron.
        init_mu_range: mu ~ U(-init_mu_range, init_mu_range), in (0, 1].
        init_sigma_range: sigma ~ U(0, init_sigma_range) (or = init_sigma_range if fixed_sigma).
        batch_sample: draw one position per image (True) or one per batch.
        align_corners: ``F.grid_sample`` convention.
        fixed_sigma: initialise sigma to exactly ``init_sigma_range``.
        mean_activity: (N,) initial bias.
        feature_reg_weight: weight of the L1 penalty on the features.
        gamma_readout: old name of ``feature_reg_weight`` (wins when given).

    Parameters: ``mu`` (1, N, 1, 2), ``sigma`` (1, N, 1, 2), ``features`` (1, C, 1, N), ``bias`` (N).
    """

    def __init__(
        self,
        in_shape,
        outdims: int,
        bias: bool,
        init_mu_range: float = 0.5,
        init_sigma_range: float = 0.5,
        batch_sample: bool = True,
        align_corners: bool = True,
        fixed_sigma: bool = False,
        mean_activity=None,
        feature_reg_weight: float = 1.0,
        gamma_readout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_shape, outdims, mean_activity=mean_activity)
        self.init_mu_range = _check_range("init_mu_range", init_mu_range, upper=1.0)
        self.init_sigma_range = _check_range("init_sigma_range", init_sigma_range)
        self.feature_reg_weight = self.resolve_deprecated_gamma_readout(feature_reg_weight, gamma_readout)
        self.batch_sample = bool(batch_sample)
        self.align_corners = bool(align_corners)
        self.fixed_sigma = bool(fixed_sigma)
        c = self.in_shape[0]
        self.grid_shape = (1, self.outdims, 1, 2)
        self.mu = nn.Parameter(torch.empty(self.grid_shape))
        self.sigma = nn.Parameter(torch.empty(self.grid_shape))
        self.features = nn.Parameter(torch.empty(1, c, 1, self.outdims))
        self.register_bias(bias)
        self.initialize(mean_activity)

    def initialize(self, mean_activity=None) -> None:
        """mu uniform in ±init_mu_range, sigma uniform in [0, init_sigma_range], features 1/C."""
        if mean_activity is None:
            mean_activity = self.mean_activity
        with torch.no_grad():
            self.mu.uniform_(-self.init_mu_range, self.init_mu_range)
            low = self.init_sigma_range if self.fixed_sigma else 0.0
            self.sigma.uniform_(low, self.init_sigma_range)
            self.features.fill_(1.0 / self.in_shape[0])
        self.initialize_bias(mean_activity)

    def sample_grid(self, batch_size: int, sample: bool | None = None) -> torch.Tensor:
        """Positions (batch_size, N, 1, 2) in [-1, 1]: drawn from N(mu, sigma²) or equal to mu.

        Args:
            batch_size: number of independent draws.
            sample: True draws, False uses mu; None draws in training mode only.
        """
        mu = clamp_straight_through(self.mu, -1.0, 1.0)
        sigma = clamp_straight_through(self.sigma, min=0.0)
        shape = (batch_size,) + self.grid_shape[1:]
        sample = self.training if sample is None else sample
        noise = mu.new_empty(shape).normal_() if sample else mu.new_zeros(shape)
        return torch.clamp(noise * sigma + mu, -1.0, 1.0)

    def neuron_features(self) -> torch.Tensor:
        """Features (N, C)."""
        return self.features.view(self.in_shape[0], self.outdims).t()

    def neuron_parameters(self) -> dict[str, np.ndarray]:
        """mu_x, mu_y, sigma_x, sigma_y (sigma_xy = 0), feature_norm, bias, features."""
        mu = self.grid.detach().reshape(self.outdims, 2)
        sigma = self.sigma.detach().clamp(min=0).reshape(self.outdims, 2)
        position = NeuronPosition(
            mu_x=_as_float64(mu[:, 0]),
            mu_y=_as_float64(mu[:, 1]),
            sigma_x=_as_float64(sigma[:, 0]),
            sigma_y=_as_float64(sigma[:, 1]),
            sigma_xy=np.zeros(self.outdims),
        )
        return self._neuron_parameters(position, self.neuron_features())


class FullGaussian2d(SharedFeatures, _GaussianReadout):
    """Gaussian readout with a full, diagonal or isotropic covariance per neuron.

    Args:
        in_shape: (channels, height, width) of the core output.
        outdims: number of neurons N.
        bias: learn a bias per neuron.
        init_mu_range: mu ~ U(-init_mu_range, init_mu_range), in (0, 1].
        init_sigma: "full": the covariance's square root ~ U(-init_sigma, init_sigma) entrywise;
            "uncorrelated"/"isotropic": std dev = init_sigma.
        batch_sample: draw one position per image (True) or one per batch.
        align_corners: ``F.grid_sample`` convention.
        gauss_type: "full" (sigma (1, N, 2, 2), position = mu + sigma @ z), "uncorrelated"
            (sigma (1, N, 1, 2)) or "isotropic" (sigma (1, N, 1, 1)).
        grid_mean_predictor: predict mu from ``source_grid`` (e.g. cortical coordinates) with an MLP
            ``mu_transform``: dict with ``hidden_layers`` (0), ``hidden_features`` (20),
            ``final_tanh`` (False); sensorium's ``type`` and ``input_dimensions`` keys are accepted
            (``input_dimensions`` keeps that many source-grid columns).
        shared_features: {"match_ids": (N,), "shared_features": Parameter (1, C, 1, U) or None}:
            neurons with the same id share one feature vector (times a per-neuron ``scales``);
            given a Parameter (from another readout) it is used instead of creating one.
        shared_grid: {"match_ids": (N,), "shared_grid": Parameter (1, U, 1, 2) or None}: the same for mu.
        source_grid: (N, d) array for the grid-mean predictor; centred and scaled to max |.| = 1.
        mean_activity: (N,) initial bias.
        feature_reg_weight: weight of the L1 penalty on the features.
        gamma_readout: old name of ``feature_reg_weight`` (wins when given).
        return_weighted_features: forward returns the per-channel weighted features (B, C, N')
            instead of their sum.

    Parameters: ``_mu`` (1, N, 1, 2) (absent with a grid predictor), ``sigma``, ``_features``
    (1, C, 1, N), ``bias`` (N); with a grid predictor ``mu_transform.*`` and buffer ``source_grid``.
    """

    def __init__(
        self,
        in_shape,
        outdims: int,
        bias: bool,
        init_mu_range: float = 0.1,
        init_sigma: float = 1.0,
        batch_sample: bool = True,
        align_corners: bool = True,
        gauss_type: str = "full",
        grid_mean_predictor: Mapping[str, Any] | None = None,
        shared_features: Mapping[str, Any] | None = None,
        shared_grid: Mapping[str, Any] | None = None,
        source_grid=None,
        mean_activity=None,
        feature_reg_weight: float = 1.0,
        gamma_readout: float | None = None,
        return_weighted_features: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_shape, outdims, mean_activity=mean_activity)
        self.feature_reg_weight = self.resolve_deprecated_gamma_readout(feature_reg_weight, gamma_readout)
        if gauss_type not in GAUSS_TYPES:
            raise ValueError(f"gauss_type must be one of {GAUSS_TYPES}, got {gauss_type!r}")
        self.gauss_type = gauss_type
        self.init_mu_range = _check_range("init_mu_range", init_mu_range, upper=1.0)
        self.init_sigma = _check_range("init_sigma", init_sigma)
        self.batch_sample = bool(batch_sample)
        self.align_corners = bool(align_corners)
        self.return_weighted_features = bool(return_weighted_features)
        self.grid_shape = (1, self.outdims, 1, 2)

        self._predicted_grid = False
        self._shared_grid = False
        self._original_grid = True
        if grid_mean_predictor is not None and shared_grid is not None:
            raise ConfigurationError("grid_mean_predictor and shared_grid cannot both be set")
        if grid_mean_predictor is not None:
            self._init_grid_predictor(source_grid, **dict(grid_mean_predictor))
        elif shared_grid is not None:
            self._init_shared_grid(**dict(shared_grid))
        else:
            self._mu = nn.Parameter(torch.empty(self.grid_shape))

        sigma_shapes = {"full": (1, self.outdims, 2, 2), "uncorrelated": (1, self.outdims, 1, 2)}
        self.sigma_shape = sigma_shapes.get(gauss_type, (1, self.outdims, 1, 1))
        self.sigma = nn.Parameter(torch.empty(self.sigma_shape))
        self._init_features(**dict(shared_features or {}))
        self.register_bias(bias)
        self.initialize(mean_activity)

    # ------------------------------------------------------------------ construction
    def _init_grid_predictor(
        self,
        source_grid,
        hidden_features: int = 20,
        hidden_layers: int = 0,
        final_tanh: bool = False,
        type: str = "cortex",
        input_dimensions: int | None = None,
    ) -> None:
        if type != "cortex":
            raise ValueError(f"grid_mean_predictor type {type!r} is not supported (only 'cortex')")
        if source_grid is None:
            raise ConfigurationError("grid_mean_predictor needs a source_grid of shape (neurons, dimensions)")
        grid = np.asarray(
            source_grid.detach().cpu().numpy() if isinstance(source_grid, torch.Tensor) else source_grid,
            dtype=np.float64,
        )
        if grid.ndim != 2 or grid.shape[0] != self.outdims:
            raise ValueError(f"source_grid must have shape ({self.outdims}, dimensions), got {grid.shape}")
        if input_dimensions is not None:
            grid = grid[:, :input_dimensions]
        if not np.all(np.isfinite(grid)):
            raise ValueError("source_grid contains NaN or infinite values")
        self._original_grid = False
        layers: list[nn.Module] = [nn.Linear(grid.shape[1], hidden_features if hidden_layers > 0 else 2)]
        for i in range(hidden_layers):
            layers += [nn.ELU(), nn.Linear(hidden_features, hidden_features if i < hidden_layers - 1 else 2)]
        if final_tanh:
            layers.append(nn.Tanh())
        self.mu_transform = nn.Sequential(*layers)
        grid = grid - grid.mean(axis=0, keepdims=True)
        scale = np.abs(grid).max()
        grid = grid / scale if scale > 0 else grid  # a single neuron (or identical ones) stays at 0
        self.register_buffer("source_grid", torch.from_numpy(grid.astype(np.float32)))
        self._predicted_grid = True

    def _init_shared_grid(self, match_ids=None, shared_grid: nn.Parameter | None = None) -> None:
        self._mu, index, self._original_grid = shared_parameter(
            match_ids, self.outdims, "grid", lambda rows: (1, rows, 1, 2), shared_grid
        )
        if not self._original_grid:
            # a per-session affine map of the shared positions, starting at the identity
            self.mu_transform = nn.Linear(2, 2)
            with torch.no_grad():
                self.mu_transform.bias.zero_()
                self.mu_transform.weight.copy_(torch.eye(2))
        self.register_buffer("grid_sharing_index", index)
        self._shared_grid = True

    def _feature_shape(self, rows: int, channels: int) -> tuple[int, ...]:
        return (1, channels, 1, rows)

    def initialize(self, mean_activity=None) -> None:
        """mu ~ U(±init_mu_range), sigma per ``gauss_type``, features 1/C, bias = mean activity or 0.

        Shared parameters owned by another readout are left alone.
        """
        if mean_activity is None:
            mean_activity = self.mean_activity
        with torch.no_grad():
            if not self._predicted_grid and (self._original_grid or not self._shared_grid):
                self._mu.uniform_(-self.init_mu_range, self.init_mu_range)
            if self.gauss_type == "full":
                self.sigma.uniform_(-self.init_sigma, self.init_sigma)
            else:
                self.sigma.fill_(self.init_sigma)
            if self._original_features:
                self._features.fill_(1.0 / self.in_shape[0])
            self._initialize_scales()
        self.initialize_bias(mean_activity)

    # ------------------------------------------------------------------ properties
    @property
    def shared_grid(self) -> nn.Parameter:
        """The position Parameter another readout can share."""
        return self._mu

    @property
    def features(self) -> torch.Tensor:
        """Effective features (1, C, 1, N)."""
        if self._shared_features:
            return self.scales * self._features[..., self.feature_sharing_index]
        return self._features

    @property
    def mu(self) -> torch.Tensor:
        """Unclamped mean positions (1, N, 1, 2)."""
        if self._predicted_grid:
            return self.mu_transform(self.source_grid).view(*self.grid_shape)
        if self._shared_grid:
            if self._original_grid:
                return self._mu[:, self.grid_sharing_index]
            shared = self.mu_transform(self._mu.reshape(-1, 2))
            return shared[self.grid_sharing_index].view(*self.grid_shape)
        return self._mu

    @property
    def mu_dispersion(self) -> torch.Tensor:
        """Summed standard deviation of the mean positions over neurons (x and y)."""
        return self.mu.reshape(-1, 2).std(0).sum()

    # ------------------------------------------------------------------ sampling and forward
    def sample_grid(self, batch_size: int, sample: bool | None = None) -> torch.Tensor:
        """Positions (batch_size, N, 1, 2) in [-1, 1]: mu + sigma @ z (full) / sigma * z, or mu.

        Args:
            batch_size: number of independent draws.
            sample: True draws, False uses mu; None draws in training mode only.
        """
        mu = clamp_straight_through(self.mu, -1.0, 1.0)
        shape = (batch_size,) + self.grid_shape[1:]
        sample = self.training if sample is None else sample
        noise = mu.new_empty(shape).normal_() if sample else mu.new_zeros(shape)
        if self.gauss_type == "full":
            # positions[b, n, 0, i] = sum_j sigma[0, n, i, j] * z[b, n, 0, j]
            spread = torch.einsum("ancd,bnid->bnic", self.sigma, noise)
        else:
            spread = noise * self.sigma
        return torch.clamp(spread + mu, -1.0, 1.0)

    def feature_l1(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """L1 norm of the (effective) features; 0 when the features are owned by another readout."""
        if not self._original_features:
            return self._features.new_zeros(())
        return super().feature_l1(reduction=reduction, average=average)

    def _read_at_grid(self, x, grid, feat, bias, shift) -> torch.Tensor:
        """The predictions, or with ``return_weighted_features`` the weighted features (B, C, N')."""
        if self.return_weighted_features:
            if shift is not None:
                grid = grid + shift[:, None, None, :]
            sampled = nn.functional.grid_sample(x, grid.contiguous(), align_corners=self.align_corners)
            return sampled.squeeze(-1) * feat
        return super()._read_at_grid(x, grid, feat, bias, shift)

    # ------------------------------------------------------------------ inspection
    def covariance(self) -> torch.Tensor:
        """Covariance of the sampling Gaussian per neuron, (N, 2, 2) (x first, then y)."""
        sigma = self.sigma.detach()
        if self.gauss_type == "full":
            root = sigma.reshape(self.outdims, 2, 2)
            return root @ root.transpose(1, 2)
        std = sigma.reshape(self.outdims, -1).expand(self.outdims, 2)
        return torch.diag_embed(std.pow(2))

    def neuron_features(self) -> torch.Tensor:
        """Effective features (N, C)."""
        return self.features.reshape(self.in_shape[0], self.outdims).t()

    def neuron_parameters(self) -> dict[str, np.ndarray]:
        """mu_x, mu_y, sigma_x, sigma_y, sigma_xy (covariance), feature_norm, bias, features."""
        with torch.no_grad():
            mu = self.grid.reshape(self.outdims, 2)
            cov = self.covariance().double()
        position = NeuronPosition(
            mu_x=_as_float64(mu[:, 0]),
            mu_y=_as_float64(mu[:, 1]),
            sigma_x=_as_float64(cov[:, 0, 0].sqrt()),
            sigma_y=_as_float64(cov[:, 1, 1].sqrt()),
            sigma_xy=_as_float64(cov[:, 0, 1]),
        )
        return self._neuron_parameters(position, self.neuron_features())

    def _repr_prefix(self) -> str:
        return self.gauss_type + " "

    def _repr_extras(self) -> str:
        text = self._features_repr()
        if self._predicted_grid:
            text += ", with predicted grid"
        if self._shared_grid:
            text += ", with {} grid".format("original" if self._original_grid else "shared")
        return text
