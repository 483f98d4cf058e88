"""Models: a shared convolutional core, per-session readouts, shifters, modulators, the encoder, ensembles, builders.

Everything a model config or a notebook needs is importable from here, e.g.
``from pipeline.models import Stacked2dCore, MultipleFullGaussian2d, FiringRateEncoder``.
"""

from pipeline.models.builders import (
    data_info_from_loaders,
    stacked_core_factorized_readout,
    stacked_core_full_gauss_readout,
)
from pipeline.models.cores import DepthSeparableConv2d, Stacked2dCore
from pipeline.models.encoders import FiringRateEncoder
from pipeline.models.ensemble import EnsembleEncoder
from pipeline.models.modulators import MLPModulator
from pipeline.models.readouts import (
    ClonedReadout,
    FullFactorized2d,
    FullGaussian2d,
    FullSXF,
    Gaussian2d,
    MultipleFullFactorized2d,
    MultipleFullGaussian2d,
    MultipleGaussian2d,
    MultiplePointPooled2d,
    MultiReadoutBase,
    MultiReadoutSharedParametersBase,
    PointPooled2d,
    Readout,
    SpatialXFeatureLinear,
)
from pipeline.models.shifters import MLPShifter, StaticAffine2dShifter

__all__ = [
    "ClonedReadout",
    "DepthSeparableConv2d",
    "EnsembleEncoder",
    "FiringRateEncoder",
    "FullFactorized2d",
    "FullGaussian2d",
    "FullSXF",
    "Gaussian2d",
    "MLPModulator",
    "MLPShifter",
    "MultiReadoutBase",
    "MultiReadoutSharedParametersBase",
    "MultipleFullFactorized2d",
    "MultipleFullGaussian2d",
    "MultipleGaussian2d",
    "MultiplePointPooled2d",
    "PointPooled2d",
    "Readout",
    "SpatialXFeatureLinear",
    "Stacked2dCore",
    "StaticAffine2dShifter",
    "data_info_from_loaders",
    "stacked_core_factorized_readout",
    "stacked_core_full_gauss_readout",
]
