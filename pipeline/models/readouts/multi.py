"""Multi-session readouts: one readout per recording session, keyed by ``data_key``.

All sessions share the core; each session has its own neurons and thus its own readout.
``MultiReadoutBase`` is a ``torch.nn.ModuleDict`` (``readout["21067-10-18"]``) whose ``forward``
dispatches on ``data_key``. The ``Multiple*`` subclasses fix the readout class and turn
per-session arguments (cortical source grids, match ids for shared parameters) into each
session's readout arguments, as sensorium's ``MultipleFullGaussian2d`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.contracts import UnknownDataKeyError, resolve_data_key

from .base import ConfigurationError, NeuronPosition, Readout, Reduction
from .factorized import FullFactorized2d
from .gaussian import FullGaussian2d, Gaussian2d
from .point_pooled import PointPooled2d

__all__ = [
    "ClonedReadout",
    "MultiReadoutBase",
    "MultiReadoutSharedParametersBase",
    "MultipleFullFactorized2d",
    "MultipleFullGaussian2d",
    "MultipleGaussian2d",
    "MultiplePointPooled2d",
    "UnknownDataKeyError",
]

# keyword arguments consumed by the multi-readout itself, never passed to a session's readout
_MULTI_ONLY_KWARGS = ("source_grids", "shared_match_ids", "grid_mean_predictor_type", "loader", "loaders")


class ClonedReadout(Readout):
    """A session readout that reuses another session's readout, with a per-neuron gain and offset.

    For sessions that record the same neurons (matched one-to-one, same order) under different
    conditions: positions and features are shared with (the same Parameters as) the source
    readout; only ``alpha`` (N,) and ``beta`` (N,) are learned: ``y = alpha * source(x) + beta``.

    Args:
        source: the readout to clone (its ``in_shape`` and ``outdims`` are used).

    The regularizer is the source's feature L1 penalty on the gain-scaled features
    ``|alpha_n * features_n|`` times the source's regularisation weight; the source's own
    regularizer is counted with the source's session.
    """

    def __init__(self, source: Readout) -> None:
        if not isinstance(source, Readout):
            raise TypeError(f"ClonedReadout needs a Readout to clone, got {type(source).__name__}")
        super().__init__(source.in_shape, source.outdims)
        self._source = source
        self.register_parameter("bias", None)
        self.alpha = nn.Parameter(torch.ones(source.outdims))
        self.beta = nn.Parameter(torch.zeros(source.outdims))

    @property
    def source(self) -> Readout:
        """The cloned readout."""
        return self._source

    def initialize(self, mean_activity: Any = None) -> None:
        """Reset the gain to 1 and the offset to 0 (the source keeps its parameters)."""
        with torch.no_grad():
            self.alpha.fill_(1.0)
            self.beta.fill_(0.0)

    def forward(self, x, sample=None, shift=None, out_idx=None, **kwargs) -> torch.Tensor:
        """``alpha * source(x, ...) + beta``; same arguments and output shape as the source."""
        y = self._source(x, sample=sample, shift=shift, out_idx=out_idx, **kwargs)
        index = self.resolve_out_idx(out_idx, y.device)
        if index is None:
            return y * self.alpha + self.beta
        return y * self.alpha[index] + self.beta[index]

    def _reg_weight(self) -> float:
        for name in ("feature_reg_weight", "spatial_and_feature_reg_weight"):
            if hasattr(self._source, name):
                return float(getattr(self._source, name))
        return 1.0

    def neuron_features(self) -> torch.Tensor:
        """Gain-scaled source features (N, C')."""
        return self._source.neuron_features() * self.alpha[:, None]

    def regularizer(self, reduction: Reduction = "sum", average: bool | None = None) -> torch.Tensor:
        """Source weight times the reduced ``|alpha_n * features_n|``."""
        return self.apply_reduction(self.neuron_features().abs(), reduction, average) * self._reg_weight()

    def neuron_parameters(self) -> dict[str, np.ndarray]:
        """The source's parameters with effective features ``alpha * f`` and bias ``alpha * b + beta``."""
        source = self._source.neuron_parameters()
        position = NeuronPosition(*(source[key] for key in NeuronPosition._fields))
        alpha = self.alpha.detach().cpu()
        beta = self.beta.detach().cpu().double().numpy()
        features = torch.from_numpy(source["features"]) * alpha[:, None]
        bias = np.where(np.isnan(source["bias"]), 0.0, source["bias"]) * alpha.double().numpy() + beta
        return self._neuron_parameters(position, features, bias=bias)

    def __repr__(self) -> str:
        return f"ClonedReadout of {self._source!r}"


class MultiReadoutBase(nn.ModuleDict):
    """One readout per session, keyed by data_key.

    Args:
        in_shape_dict: {data_key: (channels, height, width)} of the core output per session.
        n_neurons_dict: {data_key: N}; sessions are built in this dict's order.
        base_readout: the readout class (needed unless the subclass fixes ``_base_readout``).
        mean_activity_dict: {data_key: (N,) mean responses} to initialise the biases (else 0).
        clone_readout: every session after the first gets a :class:`ClonedReadout` of the first
            session's readout (sharing its parameters; only a per-neuron gain and offset are
            learned). Requires every session to have the first session's in_shape and neuron
            count (neurons matched in order); otherwise a ValueError explains the mismatch.
        **kwargs: passed to every session's readout (e.g. ``bias=True``, ``gamma_readout=...``).
    """

    _base_readout: type[Readout] | None = None

    def __init__(
        self,
        in_shape_dict: Mapping[str, Any],
        n_neurons_dict: Mapping[str, int],
        base_readout: type[Readout] | None = None,
        mean_activity_dict: Mapping[str, Any] | None = None,
        clone_readout: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        readout_cls = type(self)._base_readout or base_readout
        if readout_cls is None:
            raise ValueError(f"{type(self).__name__} needs base_readout (a Readout class)")
        if base_readout is not None and type(self)._base_readout not in (None, base_readout):
            raise ConfigurationError(
                f"{type(self).__name__} always uses {type(self)._base_readout.__name__}; "
                f"got base_readout={base_readout.__name__}"
            )
        if not isinstance(readout_cls, type) or not issubclass(readout_cls, nn.Module):
            raise TypeError(f"base_readout must be a readout class, got {readout_cls!r}")
        self.base_readout = readout_cls
        # the options every session's readout was built with, for add_sessions (not in the state dict)
        self._session_kwargs = dict(kwargs)
        self._clone_readout = bool(clone_readout)
        if not n_neurons_dict:
            raise ValueError("n_neurons_dict is empty: at least one session is needed")
        missing = [k for k in n_neurons_dict if k not in in_shape_dict]
        if missing:
            raise ValueError(f"in_shape_dict has no shape for sessions {missing}")
        if mean_activity_dict is not None:
            missing = [k for k in n_neurons_dict if k not in mean_activity_dict]
            if missing:
                raise ValueError(f"mean_activity_dict has no entry for sessions {missing}")
        for key in n_neurons_dict:
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"data_key must be a non-empty string without '.', got {key!r}")

        first_key = next(iter(n_neurons_dict))
        for i, data_key in enumerate(n_neurons_dict):
            mean_activity = mean_activity_dict[data_key] if mean_activity_dict is not None else None
            readout_kwargs = self.prepare_readout_kwargs(i, data_key, first_key, **kwargs)
            if i > 0 and clone_readout:
                self._check_clonable(first_key, data_key, in_shape_dict, n_neurons_dict)
                self.add_module(data_key, ClonedReadout(self[first_key]))
            else:
                self.add_module(
                    data_key,
                    readout_cls(
                        in_shape=in_shape_dict[data_key],
                        outdims=n_neurons_dict[data_key],
                        mean_activity=mean_activity,
                        **readout_kwargs,
                    ),
                )
        # neuralpredictors initialises twice (in each readout and here): kept so that a seeded
        # build draws the same random numbers and gives the same initial parameters
        self.initialize(mean_activity_dict)

    def add_sessions(
        self,
        in_shape_dict: Mapping[str, Any],
        n_neurons_dict: Mapping[str, int],
        mean_activity_dict: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add a readout for each new session (e.g. a new recording read from a pretrained core).

        The new readouts are built with the options this multi-readout was built with (``kwargs``
        given here override them; per-session entries such as ``source_grids`` or
        ``shared_match_ids`` must include the new sessions), and initialised with the new sessions'
        mean activity when given. The existing sessions are untouched.

        Args:
            in_shape_dict: ``{data_key: (c, h, w)}`` of the core output for the new sessions.
            n_neurons_dict: ``{data_key: N}`` of the new sessions (in the order they are added).
            mean_activity_dict: ``{data_key: (N,) mean responses}`` to initialise the biases.
            **kwargs: readout options overriding the stored ones.

        Returns:
            The data keys added.

        Raises:
            ValueError: a session that exists already, or a shape/mean-activity entry missing.
        """
        existing = [k for k in n_neurons_dict if k in self]
        if existing:
            raise ValueError(f"the readout already has sessions {existing}; add_sessions adds new ones only")
        missing = [k for k in n_neurons_dict if k not in in_shape_dict]
        if missing:
            raise ValueError(f"in_shape_dict has no shape for sessions {missing}")
        if mean_activity_dict is not None:
            missing = [k for k in n_neurons_dict if k not in mean_activity_dict]
            if missing:
                raise ValueError(f"mean_activity_dict has no entry for sessions {missing}")
        options = {**self._session_kwargs, **kwargs}
        first_key = next(iter(self.keys()))
        added = []
        for data_key, n_neurons in n_neurons_dict.items():
            if not isinstance(data_key, str) or not data_key or "." in data_key:
                raise ValueError(f"data_key must be a non-empty string without '.', got {data_key!r}")
            mean_activity = mean_activity_dict[data_key] if mean_activity_dict is not None else None
            if self._clone_readout:
                self._check_clonable(
                    first_key,
                    data_key,
                    {**in_shape_dict, first_key: self[first_key].in_shape},
                    {**n_neurons_dict, first_key: self[first_key].outdims},
                )
                readout = ClonedReadout(self[first_key])
            else:
                readout_kwargs = self.prepare_readout_kwargs(len(self), data_key, first_key, **options)
                readout = self.base_readout(
                    in_shape=in_shape_dict[data_key],
                    outdims=int(n_neurons),
                    mean_activity=mean_activity,
                    **readout_kwargs,
                )
            readout.initialize(mean_activity)
            self.add_module(data_key, readout)
            added.append(data_key)
        return added

    @staticmethod
    def _check_clonable(first_key, data_key, in_shape_dict, n_neurons_dict) -> None:
        first = (tuple(in_shape_dict[first_key]), n_neurons_dict[first_key])
        this = (tuple(in_shape_dict[data_key]), n_neurons_dict[data_key])
        if first != this:
            raise ValueError(
                f"clone_readout: session {data_key!r} (in_shape {this[0]}, {this[1]} neurons) cannot reuse the "
                f"readout of {first_key!r} (in_shape {first[0]}, {first[1]} neurons): cloning needs the same "
                "shape and the same, matched neurons"
            )

    def prepare_readout_kwargs(
        self, i: int, data_key: str, first_data_key: str, **kwargs: Any
    ) -> dict[str, Any]:
        """Arguments for session ``data_key`` (the ``i``-th); the base passes ``kwargs`` through."""
        return {k: v for k, v in kwargs.items() if k not in _MULTI_ONLY_KWARGS}

    def forward(self, *args: Any, data_key: str | None = None, **kwargs: Any) -> torch.Tensor:
        """Run session ``data_key``'s readout (optional with one session); returns (B, N_session)."""
        return self[resolve_data_key(self.keys(), data_key, "readout")](*args, **kwargs)

    def initialize(self, mean_activity_dict: Mapping[str, Any] | None = None) -> None:
        """Re-initialise every session's readout (biases from ``mean_activity_dict`` when given)."""
        for data_key, readout in self.items():
            mean_activity = mean_activity_dict[data_key] if mean_activity_dict is not None else None
            readout.initialize(mean_activity)

    def regularizer(
        self, data_key: str | None = None, reduction: Reduction = "sum", average: bool | None = None
    ) -> torch.Tensor:
        """Session ``data_key``'s readout regularizer; with several sessions and no key, their sum."""
        if data_key is None and len(self) > 1:
            return sum(r.regularizer(reduction=reduction, average=average) for r in self.values())
        return self[resolve_data_key(self.keys(), data_key, "readout")].regularizer(
            reduction=reduction, average=average
        )

    def neuron_parameters(self, data_key: str | None = None) -> dict[str, np.ndarray]:
        """Per-neuron parameters of session ``data_key`` (see ``Readout.neuron_parameters``)."""
        return self[resolve_data_key(self.keys(), data_key, "readout")].neuron_parameters()


class MultiReadoutSharedParametersBase(MultiReadoutBase):
    """Multi-readout whose sessions can share features or positions, or predict positions.

    Extra keyword arguments (sensorium / neuralpredictors names):
        grid_mean_predictor: dict for FullGaussian2d's position predictor ({"type": "cortex",
            "input_dimensions": 2, "hidden_layers": ..., "hidden_features": ..., "final_tanh": ...});
            each session uses its own ``source_grids[data_key]`` (N, d), e.g. cortical x, y.
        grid_mean_predictor_type: the predictor type when it is not inside the dict ("cortex").
        source_grids: {data_key: (N, d) array}.
        share_features: neurons with the same match id share one feature vector across sessions
            (the first session owns it).
        share_grid: the same for positions (FullGaussian2d only).
        shared_match_ids: {data_key: (N,) ids} for the two options above.
    """

    def prepare_readout_kwargs(
        self,
        i: int,
        data_key: str,
        first_data_key: str,
        grid_mean_predictor: Mapping[str, Any] | None = None,
        grid_mean_predictor_type: str | None = None,
        share_transform: bool = False,
        share_grid: bool = False,
        share_features: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Build session ``data_key``'s arguments from the shared and per-session ones."""
        readout_kwargs = super().prepare_readout_kwargs(i, data_key, first_data_key, **kwargs)
        if share_transform:
            raise NotImplementedError(
                "share_transform (one grid predictor for all sessions) is not supported"
            )
        match_ids = kwargs.get("shared_match_ids")
        if (share_grid or share_features) and (match_ids is None or data_key not in match_ids):
            raise ConfigurationError(
                f"share_grid/share_features need shared_match_ids for session {data_key!r}"
            )
        if grid_mean_predictor:
            predictor = dict(grid_mean_predictor)
            predictor_type = predictor.pop("type", None) or grid_mean_predictor_type or "cortex"
            if predictor_type != "cortex":
                raise ValueError(
                    f"grid mean predictor type {predictor_type!r} does not exist (only 'cortex')"
                )
            source_grids = kwargs.get("source_grids")
            if source_grids is None or data_key not in source_grids:
                raise ConfigurationError(
                    f"grid_mean_predictor needs source_grids[{data_key!r}] (neurons x dims)"
                )
            readout_kwargs["grid_mean_predictor"] = predictor
            readout_kwargs["source_grid"] = source_grids[data_key]
        elif share_grid:
            readout_kwargs["shared_grid"] = {
                "match_ids": match_ids[data_key],
                "shared_grid": None if i == 0 else self[first_data_key].shared_grid,
            }
        if share_features:
            readout_kwargs["shared_features"] = {
                "match_ids": match_ids[data_key],
                "shared_features": None if i == 0 else self[first_data_key].shared_features,
            }
        return readout_kwargs


class MultipleFullGaussian2d(MultiReadoutSharedParametersBase):
    """One :class:`FullGaussian2d` per session (sensorium's readout); see the base for sharing options."""

    _base_readout = FullGaussian2d


class MultipleGaussian2d(MultiReadoutBase):
    """One :class:`Gaussian2d` per session."""

    _base_readout = Gaussian2d


class MultipleFullFactorized2d(MultiReadoutSharedParametersBase):
    """One :class:`FullFactorized2d` per session (``share_features`` with ``shared_match_ids`` supported)."""

    _base_readout = FullFactorized2d

    def prepare_readout_kwargs(self, i, data_key, first_data_key, **kwargs):
        if kwargs.get("grid_mean_predictor") or kwargs.get("share_grid"):
            raise ConfigurationError(
                "FullFactorized2d has no positions: grid_mean_predictor/share_grid do not apply"
            )
        return super().prepare_readout_kwargs(i, data_key, first_data_key, **kwargs)


class MultiplePointPooled2d(MultiReadoutBase):
    """One :class:`PointPooled2d` per session."""

    _base_readout = PointPooled2d
