"""Readouts: map core features (B, C, H, W) to neuron responses (B, N), one readout per session."""

from pipeline.contracts import UnknownDataKeyError

from .base import ConfigurationError, Readout, clamp_straight_through
from .factorized import FullFactorized2d, FullSXF, SpatialXFeatureLinear
from .gaussian import FullGaussian2d, Gaussian2d
from .multi import (
    ClonedReadout,
    MultipleFullFactorized2d,
    MultipleFullGaussian2d,
    MultipleGaussian2d,
    MultiplePointPooled2d,
    MultiReadoutBase,
    MultiReadoutSharedParametersBase,
)
from .point_pooled import PointPooled2d

__all__ = [
    "ClonedReadout",
    "ConfigurationError",
    "FullFactorized2d",
    "FullGaussian2d",
    "FullSXF",
    "Gaussian2d",
    "MultiReadoutBase",
    "MultiReadoutSharedParametersBase",
    "MultipleFullFactorized2d",
    "MultipleFullGaussian2d",
    "MultipleGaussian2d",
    "MultiplePointPooled2d",
    "PointPooled2d",
    "Readout",
    "SpatialXFeatureLinear",
    "UnknownDataKeyError",
    "clamp_straight_through",
]
