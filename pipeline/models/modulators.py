"""Behavioural modulators: scale each neuron's predicted drive by a positive gain from behaviour.

A modulator is a ``ModuleDict`` with one network per session. Given the readout output ``x``
``(B, N)`` and the trial's behaviour ``(B, n_behavior)`` (pupil dilation, its derivative, running
speed in Sensorium data) it returns ``x * gain`` with ``gain > 0`` of shape ``(B, N)``. The encoder
applies it between the readout and the output non-linearity, as neuralpredictors does.
(neuralpredictors 0.3.0 ships no modulator; this one is our own design.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.contracts import resolve_data_key

__all__ = ["MLP", "MLPModulator"]


class MLP(nn.Module):
    """One session's modulator: behaviour → hidden ReLU layers → one gain per neuron.

    ``gain = elu(linear(mlp(behavior))) + 1``, which is positive and equals 1 at the start because
    :meth:`initialize` zeroes the last layer (the model starts out unmodulated).

    Args:
        n_neurons: number of neurons N of the session.
        input_channels: behaviour features per trial.
        hidden_channels: width of the hidden layers.
        layers: number of hidden layers (0 = a direct linear map from behaviour to log-gain-like drive).
        bias: whether the Linear layers have biases.
    """

    def __init__(
        self,
        n_neurons: int,
        input_channels: int = 3,
        hidden_channels: int = 10,
        layers: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        for name, value, minimum in (
            ("n_neurons", n_neurons, 1),
            ("input_channels", input_channels, 1),
            ("hidden_channels", hidden_channels, 1),
            ("layers", layers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        hidden: list[nn.Module] = []
        width = input_channels
        for _ in range(layers):
            hidden += [nn.Linear(width, hidden_channels, bias=bias), nn.ReLU()]
            width = hidden_channels
        self.mlp = nn.Sequential(*hidden)
        self.linear = nn.Linear(width, n_neurons, bias=bias)
        self.n_neurons = n_neurons
        self.input_channels = input_channels
        self.initialize()

    def initialize(self) -> None:
        """Xavier-normal hidden weights, zero biases, zero output layer (initial gain exactly 1)."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)

    def gain(self, behavior: torch.Tensor) -> torch.Tensor:
        """Positive gain ``(B, N)`` for behaviour ``(B, input_channels)``."""
        if behavior.dim() != 2 or behavior.shape[1] != self.input_channels:
            raise ValueError(
                f"behavior must have shape (batch, {self.input_channels}), got {tuple(behavior.shape)}"
            )
        return F.elu(self.linear(self.mlp(behavior))) + 1

    def regularizer(self) -> torch.Tensor:
        """L1 norm of the output layer's weights (keeps per-neuron modulation sparse)."""
        return self.linear.weight.abs().sum()

    def forward(self, x: torch.Tensor, behavior: torch.Tensor) -> torch.Tensor:
        """Modulated drive ``x * gain(behavior)``, shape ``(B, N)``."""
        if x.dim() != 2 or x.shape[1] != self.n_neurons:
            raise ValueError(f"x must have shape (batch, {self.n_neurons}), got {tuple(x.shape)}")
        if behavior.shape[0] != x.shape[0]:
            raise ValueError(f"behavior has {behavior.shape[0]} trials but x has {x.shape[0]}")
        return x * self.gain(behavior)


class MLPModulator(nn.ModuleDict):
    """One :class:`MLP` modulator per session.

    Args:
        n_neurons: ``{data_key: N}``.
        input_channels: behaviour features per trial (3 in Sensorium data).
        hidden_channels: width of each hidden layer.
        layers: number of hidden layers.
        gamma_modulator: weight of :meth:`regularizer`.
        bias: whether the Linear layers have biases.
    """

    def __init__(
        self,
        n_neurons: Mapping[str, int],
        input_channels: int = 3,
        hidden_channels: int = 10,
        layers: int = 1,
        gamma_modulator: float = 0,
        bias: bool = True,
        **kwargs,
    ):
        super().__init__()
        if not isinstance(n_neurons, Mapping) or not n_neurons:
            raise TypeError(f"n_neurons must be a non-empty dict {{data_key: N}}, got {n_neurons!r}")
        self.gamma_modulator = float(gamma_modulator)
        self._session_args = (input_channels, hidden_channels, layers, bias)
        for key, n in n_neurons.items():
            self.add_module(key, MLP(int(n), input_channels, hidden_channels, layers, bias=bias))

    def add_sessions(self, n_neurons: Mapping[str, int]) -> list[str]:
        """Add a freshly initialised modulator per new session ``{data_key: N}``; returns the keys.

        Raises:
            ValueError: a session that exists already.
        """
        existing = [k for k in n_neurons if k in self]
        if existing:
            raise ValueError(f"sessions {existing} exist already; add_sessions adds new ones only")
        channels, hidden, layers, bias = self._session_args
        for key, n in n_neurons.items():
            module = MLP(int(n), channels, hidden, layers, bias=bias)
            module.initialize()
            self.add_module(key, module)
        return list(n_neurons)

    def initialize(self, **kwargs) -> None:
        """Re-initialise every session (initial gain 1); keyword arguments are ignored."""
        for module in self.values():
            module.initialize()

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        """``gamma_modulator`` × the L1 penalty of session ``data_key`` (optional with one session)."""
        return self[resolve_data_key(self.keys(), data_key, "modulator")].regularizer() * self.gamma_modulator
