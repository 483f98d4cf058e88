"""Most exciting inputs (MEIs): batched, constrained gradient ascent on a model's input images.

``optimize_meis(model, data_key, neurons, input_shape, config, seed=...)`` returns an
:class:`MEIResult` (images, activations, norms, steps, trace); :class:`MEIConfig` holds the settings
(validated, unknown keys refused, so they can be stored by hash); :func:`data_reference` reads a
session's input shape, pixel range and mean responses from its loader. Works on one encoder or an
:class:`~pipeline.models.EnsembleEncoder`.
"""

from pipeline.mei.config import MEIConfig, MEIConfigError, mei_config
from pipeline.mei.methods import METHODS, validate_method
from pipeline.mei.optimize import MEIResult, optimize_meis
from pipeline.mei.reference import DataReference, data_reference

__all__ = [
    "DataReference",
    "METHODS",
    "MEIConfig",
    "MEIConfigError",
    "MEIResult",
    "data_reference",
    "mei_config",
    "optimize_meis",
    "validate_method",
]
