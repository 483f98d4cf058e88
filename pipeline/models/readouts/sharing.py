"""Parameters shared across sessions by match id (sensorium's ``share_features`` / ``share_grid``).

Neurons recorded in several sessions carry the same match id. A shared parameter has one row per
distinct id; the first session's readout creates (owns) it and every later session's readout is
handed the same ``nn.Parameter``. Each readout keeps a buffer that maps its neurons to rows of the
shared parameter (``feature_sharing_index`` / ``grid_sharing_index``, in the sorted order of the
distinct ids), and shared features are scaled per neuron by the readout's own ``scales``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import ConfigurationError

__all__ = ["SharedFeatures", "match_id_index", "shared_parameter"]


def match_id_index(match_ids: Any, outdims: int, what: str) -> tuple[int, torch.Tensor]:
    """Map per-neuron match ids to rows of a shared parameter.

    Args:
        match_ids: (N,) ids; neurons with equal ids share a row (within or across sessions).
        outdims: number of neurons N (checked against ``match_ids``).
        what: name of the shared thing, for error messages.

    Returns:
        (number of unique ids U, LongTensor (N,) with each neuron's row in the sorted unique ids).
    """
    if match_ids is None:
        raise ConfigurationError(f"match_ids must be given to share the {what}")
    ids = np.asarray(match_ids).reshape(-1)
    if ids.size != outdims:
        raise ValueError(
            f"match_ids for the shared {what} must have one entry per neuron ({outdims}), got {ids.size}"
        )
    unique, inverse = np.unique(ids, return_inverse=True)
    return len(unique), torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def shared_parameter(
    match_ids: Any,
    outdims: int,
    what: str,
    shape: Callable[[int], tuple[int, ...]],
    given: nn.Parameter | None,
) -> tuple[nn.Parameter, torch.Tensor, bool]:
    """The parameter with one row per distinct match id, and each neuron's row.

    Args:
        match_ids: (N,) ids (see :func:`match_id_index`).
        outdims: number of neurons N.
        what: the shared thing ("features", "grid"), for messages.
        shape: the parameter's shape for a given number of rows.
        given: the parameter of the readout that owns it, or None to create it (uninitialised).

    Returns:
        ``(parameter, index (N,), owned)``; ``owned`` is False when ``given`` was used.
    """
    n_unique, index = match_id_index(match_ids, outdims, what)
    expected = shape(n_unique)
    if given is None:
        return nn.Parameter(torch.empty(expected)), index, True
    if tuple(given.shape) != expected:
        raise ValueError(f"shared_{what} must have shape {expected}, got {tuple(given.shape)}")
    return given, index, False


class SharedFeatures:
    """Mixin for readouts whose feature vectors can be shared across sessions by match id.

    The readout class defines :meth:`_feature_shape` (where the neuron and channel axes are) and
    calls :meth:`_init_features` in its constructor. Without match ids the readout owns
    ``_features`` with one row per neuron; with them ``_features`` has one row per distinct id (owned
    by the first session), ``scales`` holds a gain per neuron and the buffer
    ``feature_sharing_index`` maps neurons to rows.
    """

    in_shape: tuple[int, int, int]
    outdims: int
    _features: nn.Parameter

    def _feature_shape(self, rows: int, channels: int) -> tuple[int, ...]:
        """Shape of a feature tensor with ``rows`` neurons (or ids) and ``channels`` channels."""
        raise NotImplementedError

    def _init_features(self, match_ids: Any = None, shared_features: nn.Parameter | None = None) -> None:
        """Create ``_features`` (and, when shared, ``scales`` and ``feature_sharing_index``)."""
        channels = self.in_shape[0]
        self._original_features = True
        self._shared_features = match_ids is not None
        if match_ids is None:
            if shared_features is not None:
                raise ConfigurationError("shared_features needs match_ids")
            self._features = nn.Parameter(torch.empty(self._feature_shape(self.outdims, channels)))
            return
        self._features, index, self._original_features = shared_parameter(
            match_ids,
            self.outdims,
            "features",
            lambda rows: self._feature_shape(rows, channels),
            shared_features,
        )
        self.scales = nn.Parameter(torch.empty(self._feature_shape(self.outdims, 1)))
        self.register_buffer("feature_sharing_index", index)

    @property
    def shared_features(self) -> nn.Parameter:
        """The feature Parameter another readout can share."""
        return self._features

    def _initialize_scales(self) -> None:
        """Reset the per-neuron gains of shared features to 1 (call under ``torch.no_grad()``)."""
        if self._shared_features:
            self.scales.fill_(1.0)

    def _features_repr(self) -> str:
        if not self._shared_features:
            return ""
        return ", with {} features".format("original" if self._original_features else "shared")
