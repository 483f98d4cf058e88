"""Point-pooled readout: one learned point per neuron, read from the core and its average-pooled copies.

Each neuron samples the feature map at its position ``grid`` and at the same position in
``pool_steps`` successively average-pooled maps (kernel = stride = ``pool_kern``), and weights the
concatenated channels. Pooling widens the region a point sees, which helps the search early on.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import FeatureL1Readout, NeuronPosition, _as_float64, clamp_straight_through

__all__ = ["PointPooled2d"]

logger = logging.getLogger(__name__)


class PointPooled2d(FeatureL1Readout):
    """Point readout with multi-scale average pooling.

    Args:
        in_shape: (channels, height, width) of the core output.
        outdims: number of neurons N.
        pool_steps: number of pooling stages (>= 0).
        bias: learn a bias per neuron.
        pool_kern: kernel size and stride of the average pooling.
        init_range: positions ~ U(-init_range, init_range), in (0, 1].
        align_corners: ``F.grid_sample`` convention.
        mean_activity: (N,) initial bias.
        feature_reg_weight: weight of the L1 penalty on the features.
        gamma_readout: old name of ``feature_reg_weight`` (wins when given).

    Parameters: ``grid`` (1, N, 1, 2), ``features`` (1, C * (pool_steps + 1), 1, N), ``bias`` (N).
    """

    def __init__(
        self,
        in_shape,
        outdims: int,
        pool_steps: int,
        bias: bool,
        pool_kern: int,
        init_range: float,
        align_corners: bool = True,
        mean_activity=None,
        feature_reg_weight: float = 1.0,
        gamma_readout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_shape, outdims, mean_activity=mean_activity)
        if (
            isinstance(init_range, bool)
            or not isinstance(init_range, numbers.Real)
            or not 0 < init_range <= 1
        ):
            raise ValueError(f"init_range must be in (0, 1], got {init_range!r}")
        if isinstance(pool_steps, bool) or not isinstance(pool_steps, numbers.Integral) or pool_steps < 0:
            raise ValueError(f"pool_steps must be a non-negative int, got {pool_steps!r}")
        if isinstance(pool_kern, bool) or not isinstance(pool_kern, numbers.Integral) or pool_kern < 1:
            raise ValueError(f"pool_kern must be a positive int, got {pool_kern!r}")
        self._pool_steps = int(pool_steps)
        self.feature_reg_weight = self.resolve_deprecated_gamma_readout(feature_reg_weight, gamma_readout)
        c = self.in_shape[0]
        self.grid = nn.Parameter(torch.empty(1, self.outdims, 1, 2))
        self.features = nn.Parameter(torch.empty(1, c * (self._pool_steps + 1), 1, self.outdims))
        self.register_bias(bias)
        self.pool_kern = int(pool_kern)
        self.avg = nn.AvgPool2d(
            (self.pool_kern, self.pool_kern), stride=self.pool_kern, count_include_pad=False
        )
        self.init_range = float(init_range)
        self.align_corners = bool(align_corners)
        self.initialize(mean_activity)

    @property
    def pool_steps(self) -> int:
        """Number of pooling stages."""
        return self._pool_steps

    @pool_steps.setter
    def pool_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"pool_steps must be a non-negative int, got {value!r}")
        if value != self._pool_steps:
            # the feature vector grows or shrinks with the number of stages: start it afresh
            self._pool_steps = int(value)
            c = self.in_shape[0]
            self.features = nn.Parameter(torch.full((1, c * (value + 1), 1, self.outdims), 1.0 / c))

    def initialize(self, mean_activity=None) -> None:
        """Positions ~ U(±init_range), features 1/C, bias = mean activity or 0."""
        if mean_activity is None:
            mean_activity = self.mean_activity
        with torch.no_grad():
            self.grid.uniform_(-self.init_range, self.init_range)
            self.features.fill_(1.0 / self.in_shape[0])
        self.initialize_bias(mean_activity)

    def forward(self, x, sample=None, shift=None, out_idx=None, **kwargs) -> torch.Tensor:
        """Predict (B, N) responses from core features ``x`` (B, C, H, W).

        Args:
            x: core features.
            sample: ignored (the readout is deterministic).
            shift: (B, 2) shift added to the positions of each image.
            out_idx: neurons to predict (indices or boolean mask); output is (B, len(out_idx)).
        """
        batch, c, _, _ = self.check_input(x)
        shift = self.check_shift(shift, batch)
        stages = self._pool_steps + 1  # the unpooled map is the first stage
        grid = clamp_straight_through(self.grid, -1.0, 1.0)
        feat = self.features.view(1, stages * c, self.outdims)
        index = self.resolve_out_idx(out_idx, x.device)
        grid, feat, bias = self.select_neurons(index, grid, feat, self.bias)
        grid = grid.expand(batch, grid.shape[1], 1, 2)
        if shift is not None:
            grid = grid + shift[:, None, None, :]
        pools = [nn.functional.grid_sample(x, grid, align_corners=self.align_corners)]
        for _ in range(self._pool_steps):
            if x.shape[-1] * x.shape[-2] == 1:
                logger.info("PointPooled2d: the pooled map is already 1x1; consider fewer pool_steps")
            x = self.avg(x)
            pools.append(nn.functional.grid_sample(x, grid, align_corners=self.align_corners))
        y = (torch.cat(pools, dim=1).squeeze(-1) * feat).sum(1)
        if bias is not None:
            y = y + bias
        return y

    def neuron_features(self) -> torch.Tensor:
        """Features (N, C * (pool_steps + 1))."""
        return self.features.reshape(-1, self.outdims).t()

    def neuron_parameters(self) -> dict[str, np.ndarray]:
        """mu_x, mu_y (the point), sigma_* = NaN, feature_norm, bias, features."""
        grid = self.grid.detach().clamp(-1, 1).reshape(self.outdims, 2)
        nan = np.full(self.outdims, np.nan)
        position = NeuronPosition(
            mu_x=_as_float64(grid[:, 0]),
            mu_y=_as_float64(grid[:, 1]),
            sigma_x=nan.copy(),
            sigma_y=nan.copy(),
            sigma_xy=nan.copy(),
        )
        return self._neuron_parameters(position, self.neuron_features())

    def _repr_extras(self) -> str:
        return f" and pooling for {self._pool_steps} steps\n"
