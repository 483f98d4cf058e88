"""Shifter networks: map the eye position of each trial to a shift of every readout position.

A shifter is a ``ModuleDict`` with one small network per session (data_key). Given the pupil
centre ``(B, 2)`` it returns a shift ``(B, 2)`` in grid units that the Gaussian readouts add to the
positions where they sample the core's feature map (x along width, y along height).

State-dict names match neuralpredictors 0.3.0 (``{data_key}.mlp.{i}.weight`` for the MLP shifter,
``{data_key}.weight`` for the affine one), so Sinz-lab checkpoints load with ``strict=True``. A new
shifter has PyTorch's default ``nn.Linear`` initialisation, drawn in the same order as the peer's,
so a builder with the same seed gives the same initial weights; ``initialize()`` (a no-op in the
peer) re-initialises to a zero / near-zero shift.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pipeline.contracts import resolve_data_key

__all__ = ["MLP", "MLPShifter", "StaticAffine2d", "StaticAffine2dShifter"]


def _check_data_keys(data_keys: Iterable[str]) -> list[str]:
    if isinstance(data_keys, str):
        raise TypeError(f"data_keys must be a list of session names, got the single string {data_keys!r}")
    keys = list(data_keys)
    if not keys:
        raise ValueError("data_keys is empty: a shifter needs at least one session")
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"every data_key must be a string, got {key!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"data_keys contains duplicates: {keys}")
    return keys


def _add_sessions(modules: nn.ModuleDict, data_keys: Iterable[str], make) -> list[str]:
    """Add ``make()`` under each new key of ``data_keys`` to ``modules`` (a ValueError for an existing key)."""
    keys = _check_data_keys(data_keys)
    existing = [k for k in keys if k in modules]
    if existing:
        raise ValueError(f"sessions {existing} exist already; add_sessions adds new ones only")
    for key in keys:
        module = make()
        if hasattr(module, "initialize"):
            module.initialize()
        modules.add_module(key, module)
    return keys


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _append_trial_idx(pupil_center: torch.Tensor, trial_idx: torch.Tensor | None) -> torch.Tensor:
    if pupil_center.dim() != 2:
        raise ValueError(f"pupil_center must have shape (batch, features), got {tuple(pupil_center.shape)}")
    if trial_idx is None:
        return pupil_center
    if trial_idx.dim() == 1:
        trial_idx = trial_idx[:, None]
    return torch.cat((pupil_center, trial_idx.to(pupil_center.dtype)), dim=1)


class MLP(nn.Module):
    """One session's shifter: an MLP from eye position to a (x, y) shift in [-1, 1].

    Layout (kept identical to neuralpredictors for checkpoint compatibility): ``mlp`` is an
    ``nn.Sequential`` of ``shift_layers`` Linear layers, each followed by ``Tanh``; the hidden layers
    have ``hidden_channels`` units and the last one has 2 outputs.

    Args:
        input_features: number of input features (2 for the pupil centre; +1 when ``trial_idx`` is
            appended to it).
        hidden_channels: width of the hidden layers.
        shift_layers: number of Linear layers (1 = no hidden layer).
    """

    def __init__(self, input_features: int = 2, hidden_channels: int = 10, shift_layers: int = 1, **kwargs):
        super().__init__()
        _positive_int("input_features", input_features)
        _positive_int("hidden_channels", hidden_channels)
        _positive_int("shift_layers", shift_layers)
        layers: list[nn.Module] = []
        width = input_features
        for _ in range(shift_layers - 1):
            layers += [nn.Linear(width, hidden_channels), nn.Tanh()]
            width = hidden_channels
        layers += [nn.Linear(width, 2), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)  # PyTorch's default Linear init, as the peer (see module doc)

    @property
    def linear_layers(self) -> list[nn.Linear]:
        """The Linear layers of the MLP, first to last."""
        return [m for m in self.mlp if isinstance(m, nn.Linear)]

    def initialize(self) -> None:
        """Xavier-normal hidden weights, zero biases, and a zero last layer.

        The zero last layer makes the initial shift exactly 0 for every eye position, so a model
        with a shifter starts out identical to one without; gradients still reach the last layer
        (its inputs are non-zero) and, once it moves, the earlier layers.
        """
        layers = self.linear_layers
        for layer in layers[:-1]:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)

    def regularizer(self) -> torch.Tensor:
        """Sum of squared weights of all Linear layers (an L2 penalty on the mapping, biases excluded)."""
        return sum(layer.weight.pow(2).sum() for layer in self.linear_layers)

    def forward(self, pupil_center: torch.Tensor, trial_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Shift ``(B, 2)`` from the eye position ``pupil_center`` ``(B, input_features)``.

        ``trial_idx`` ``(B,)`` or ``(B, 1)``, when given, is appended to the eye position as one more
        input feature (the MLP must have been built with ``input_features`` counting it).
        """
        x = _append_trial_idx(pupil_center, trial_idx)
        expected = self.linear_layers[0].in_features
        if x.shape[1] != expected:
            raise ValueError(
                f"the shifter expects {expected} input features but got {x.shape[1]} "
                f"(pupil_center {tuple(pupil_center.shape)}"
                f"{', with trial_idx appended' if trial_idx is not None else ''})"
            )
        return self.mlp(x)


class MLPShifter(nn.ModuleDict):
    """One :class:`MLP` shifter per session, e.g. ``shifter["21067-10-18"](pupil_center)``.

    Args:
        data_keys: the session names.
        input_channels: input features of each MLP (2 = horizontal and vertical pupil position).
        hidden_channels_shifter: hidden units per layer.
        shift_layers: number of Linear layers per MLP.
        gamma_shifter: weight of :meth:`regularizer`. (neuralpredictors 0.3.0 ignores it and always
            returns 0; with the default 0 the two agree.)
    """

    def __init__(
        self,
        data_keys: Iterable[str],
        input_channels: int = 2,
        hidden_channels_shifter: int = 2,
        shift_layers: int = 1,
        gamma_shifter: float = 0,
        **kwargs,
    ):
        super().__init__()
        self.gamma_shifter = float(gamma_shifter)
        self._session_args = (input_channels, hidden_channels_shifter, shift_layers)
        for key in _check_data_keys(data_keys):
            self.add_module(key, MLP(*self._session_args))

    def add_sessions(self, data_keys: Iterable[str]) -> list[str]:
        """Add a freshly initialised shifter per new session (same sizes as the others); returns the keys."""
        return _add_sessions(self, data_keys, lambda: MLP(*self._session_args))

    def initialize(self, **kwargs) -> None:
        """Re-initialise every session's MLP (see :meth:`MLP.initialize`); keyword arguments are ignored."""
        for mlp in self.values():
            mlp.initialize()

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        """``gamma_shifter`` × the L2 penalty of session ``data_key`` (optional with one session)."""
        return self[resolve_data_key(self.keys(), data_key, "shifter")].regularizer() * self.gamma_shifter


class StaticAffine2d(nn.Linear):
    """One session's affine shifter: ``tanh(W @ pupil_center + b)``, shape (B, in) → (B, out).

    Args:
        input_channels: input features (2 for the pupil centre).
        output_channels: output features (2 for an (x, y) shift).
        bias: whether the affine map has a bias.
    """

    def __init__(self, input_channels: int = 2, output_channels: int = 2, bias: bool = True):
        super().__init__(
            _positive_int("input_channels", input_channels),
            _positive_int("output_channels", output_channels),
            bias=bias,
        )  # PyTorch's default Linear init, as the peer; initialize() gives a near-zero shift

    def initialize(self, bias: torch.Tensor | None = None) -> None:
        """Near-zero weights (N(0, 1e-6)) so the initial shift is ~0; bias from ``bias`` or ~0."""
        with torch.no_grad():
            self.weight.normal_(0, 1e-6)
            if self.bias is not None:
                if bias is not None:
                    self.bias.copy_(torch.as_tensor(bias, dtype=self.bias.dtype))
                else:
                    self.bias.normal_(0, 1e-6)

    def regularizer(self) -> torch.Tensor:
        """Mean squared weight."""
        return self.weight.pow(2).mean()

    def forward(self, x: torch.Tensor, trial_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Shift ``(B, output_channels)``; ``trial_idx`` is not supported by this shifter."""
        if trial_idx is not None:
            raise ValueError(
                "StaticAffine2d does not use trial_idx; use the MLP shifter for trial-dependent shifts"
            )
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input of shape (batch, {self.in_features}), got {tuple(x.shape)}")
        return torch.tanh(super().forward(x))


class StaticAffine2dShifter(nn.ModuleDict):
    """One :class:`StaticAffine2d` per session.

    Args:
        data_keys: the session names.
        input_channels, output_channels, bias: see :class:`StaticAffine2d`.
        gamma_shifter: weight of :meth:`regularizer`.
    """

    def __init__(
        self,
        data_keys: Iterable[str],
        input_channels: int = 2,
        output_channels: int = 2,
        bias: bool = True,
        gamma_shifter: float = 0,
    ):
        super().__init__()
        self.gamma_shifter = float(gamma_shifter)
        self._session_args = (input_channels, output_channels, bias)
        for key in _check_data_keys(data_keys):
            self.add_module(key, StaticAffine2d(input_channels, output_channels, bias=bias))

    def add_sessions(self, data_keys: Iterable[str]) -> list[str]:
        """Add a freshly initialised shifter per new session (same sizes as the others); returns the keys."""
        i, o, b = self._session_args
        return _add_sessions(self, data_keys, lambda: StaticAffine2d(i, o, bias=b))

    def initialize(self, bias: dict[str, torch.Tensor] | None = None) -> None:
        """Re-initialise every session; ``bias`` optionally gives ``{data_key: bias}``."""
        for key, module in self.items():
            module.initialize(bias=None if bias is None else bias[key])

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        """``gamma_shifter`` × the mean squared weight of session ``data_key``."""
        return self[resolve_data_key(self.keys(), data_key, "shifter")].regularizer() * self.gamma_shifter
