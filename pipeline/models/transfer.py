"""Transfer learning: a model whose core comes from a trained model, with readouts for new sessions.

The recipe of Lurz et al. 2021: train a core on many sessions, then fit only new readouts (frozen
core) or fine-tune the core at its own learning rate, for a new recording with few images.

* :func:`core_state` — the core's entries of a ``FiringRateEncoder`` state dict (``core.*``), or a
  core state dict as it is;
* :func:`transfer` — copy a source state into a model built for the new data (core always; readout,
  shifter and modulator entries of the sessions both have, when asked), then freeze the core or set
  its learning rate, and initialise the other readouts from the new sessions' mean activity;
* :func:`add_sessions` — add readouts (and shifters / modulators) for new sessions to an existing
  multi-session model.

Incompatible sources (another core architecture, other channel counts) raise
:class:`TransferError` (a ``ValueError``) naming the mismatching entries, before anything is copied.
No database code lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.utils import get_module_output

__all__ = [
    "TRANSFER_PARTS",
    "TransferError",
    "TransferRecipe",
    "add_sessions",
    "check_core_compatible",
    "core_state",
    "transfer",
]

#: the parts of a model a transfer can copy; "core" is always copied
TRANSFER_PARTS = ("core", "readout", "shifter", "modulator")


class TransferError(ValueError):
    """A source state that cannot be transferred into the target model (names the mismatch)."""


@dataclass(frozen=True)
class TransferRecipe:
    """How to transfer: freeze or fine-tune the core, its learning rate, which parts to copy.

    Attributes:
        freeze_core: True: the core gets no gradient, no regularizer and stays in eval mode
            (batch-norm statistics of the source data); False: it is fine-tuned.
        core_lr: the fine-tuned core's learning rate (None: the trainer's ``lr_init``); must be None
            with a frozen core.
        copy: the parts copied from the source: ``"core"`` plus any of ``"readout"``, ``"shifter"``,
            ``"modulator"`` (those copy the sessions the source and target share, by data key).
        init_readouts: initialise the readouts that are not copied from the new sessions' mean
            activity (their biases), when :func:`transfer` is given it.
    """

    freeze_core: bool = True
    core_lr: float | None = None
    copy: tuple[str, ...] = field(default=("core",))
    init_readouts: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_core, bool):
            raise TypeError(f"freeze_core must be True or False, got {self.freeze_core!r}")
        if self.core_lr is not None:
            if (
                isinstance(self.core_lr, bool)
                or not isinstance(self.core_lr, int | float)
                or self.core_lr <= 0
            ):
                raise ValueError(f"core_lr must be a positive number or None, got {self.core_lr!r}")
            if self.freeze_core:
                raise ValueError(
                    "core_lr is the learning rate of a fine-tuned core: set freeze_core=False or drop it"
                )
        copy = tuple(self.copy)
        unknown = [p for p in copy if p not in TRANSFER_PARTS]
        if unknown:
            raise ValueError(f"copy names unknown part(s) {unknown}; the parts are {list(TRANSFER_PARTS)}")
        if "core" not in copy:
            raise ValueError(f"a transfer copies the core: copy must include 'core', got {list(copy)}")
        if len(set(copy)) != len(copy):
            raise ValueError(f"copy names a part twice: {list(copy)}")
        object.__setattr__(self, "copy", copy)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransferRecipe:
        """A recipe from a config dict (``freeze_core``, ``core_lr``, ``copy``, ``init_readouts``).

        Raises:
            ValueError: unknown keys (named) or bad values.
        """
        allowed = {"freeze_core", "core_lr", "copy", "init_readouts"}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ValueError(f"transfer config has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        config = dict(config)
        if "copy" in config:
            if isinstance(config["copy"], str):
                raise TypeError(f"copy must be a list of parts, got the string {config['copy']!r}")
            config["copy"] = tuple(config["copy"])
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        """The recipe as a plain JSON-able dict (what the ``Transfer`` table stores)."""
        return {
            "freeze_core": self.freeze_core,
            "core_lr": self.core_lr,
            "copy": list(self.copy),
            "init_readouts": self.init_readouts,
        }


def _part_state(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def core_state(source_state: Mapping[str, Any]) -> dict[str, Any]:
    """The core's state dict from a model's (its ``core.*`` entries) or a core's own state dict.

    Raises:
        TransferError: the state is empty or not a mapping.
    """
    if not isinstance(source_state, Mapping) or not source_state:
        raise TransferError("the source state must be a non-empty state dict (of a model or of a core)")
    if any(k.startswith("core.") for k in source_state):
        return _part_state(source_state, "core.")
    return dict(source_state)


def _mismatches(module: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Why ``state`` does not load strictly into ``module`` (missing, unexpected, other shapes)."""
    own = module.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for key, value in own.items():
        if key in state:
            shape = tuple(np.shape(state[key]))
            if shape != tuple(value.shape):
                problems.append(f"{key}: source {shape} vs target {tuple(value.shape)}")
    return problems


def check_core_compatible(model: nn.Module, source_state: Mapping[str, Any]) -> None:
    """Raise :class:`TransferError` unless the source's core loads strictly into ``model.core``."""
    core = getattr(model, "core", None)
    if not isinstance(core, nn.Module):
        raise TransferError(f"the target model ({type(model).__name__}) has no core to transfer into")
    problems = _mismatches(core, core_state(source_state))
    if problems:
        raise TransferError(
            "the source core does not fit the target model's core (another core architecture or "
            "input channels?): " + "; ".join(problems[:10])
        )


def _as_tensors(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in state.items()}


def _copy_sessions(model: nn.Module, source_state: Mapping[str, Any], part: str) -> list[str]:
    """Copy ``part``'s per-session modules of the sessions the source has; returns their keys."""
    modules = getattr(model, part, None)
    if not isinstance(modules, nn.ModuleDict):
        return []
    copied = []
    for data_key, module in modules.items():
        state = _part_state(source_state, f"{part}.{data_key}.")
        if not state:
            continue
        problems = _mismatches(module, state)
        if problems:
            raise TransferError(
                f"the source {part} of session {data_key!r} does not fit: " + "; ".join(problems[:10])
            )
        module.load_state_dict(_as_tensors(state), strict=True)
        copied.append(data_key)
    return copied


def transfer(
    model: nn.Module,
    source_state: Mapping[str, Any],
    recipe: TransferRecipe | None = None,
    mean_activity: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, list[str]]:
    """Copy a trained model's core (and, per ``recipe.copy``, shared sessions' modules) into ``model``.

    ``model`` is built for the new data (e.g. by the builder of the target model config); its core
    must have the source core's architecture. Then the core is frozen (``recipe.freeze_core``) or
    given ``recipe.core_lr``, and the readouts not copied are initialised from ``mean_activity``.

    Args:
        model: a :class:`~pipeline.models.FiringRateEncoder` (``core``, ``readout`` keyed by data key).
        source_state: a model's state dict (``core.*``, ``readout.<key>.*`` ...) or a core's state dict,
            torch tensors or numpy arrays.
        recipe: how to transfer (default :class:`TransferRecipe`: frozen core, copy the core only).
        mean_activity: ``{data_key: (N,) mean responses}`` of the new sessions (``data_info_from_loaders(
            loaders, mean_activity=True)`` gives them), used with ``recipe.init_readouts``.

    Returns:
        ``{part: [data keys copied]}`` for the per-session parts (``"core": []``).

    Raises:
        TransferError: the source core (or a copied session's module) does not load strictly; nothing
            is changed then.
    """
    recipe = recipe or TransferRecipe()
    check_core_compatible(model, source_state)
    copied: dict[str, list[str]] = {"core": []}
    for part in recipe.copy:
        if part != "core":
            state = _part_state(source_state, f"{part}.")
            copied[part] = [k for k in getattr(model, part, {}) or {} if _part_state(state, f"{k}.")]
    # every check first: a failing copy leaves the model as it was
    for part in copied:
        if part != "core":
            for data_key in copied[part]:
                problems = _mismatches(
                    getattr(model, part)[data_key], _part_state(source_state, f"{part}.{data_key}.")
                )
                if problems:
                    raise TransferError(
                        f"the source {part} of session {data_key!r} does not fit: " + "; ".join(problems[:10])
                    )
    model.core.load_state_dict(_as_tensors(core_state(source_state)), strict=True)
    for part in copied:
        if part != "core":
            _copy_sessions(model, source_state, part)
    readout = getattr(model, "readout", None)
    if recipe.init_readouts and mean_activity is not None and isinstance(readout, nn.ModuleDict):
        for data_key, module in readout.items():
            if data_key not in copied.get("readout", []) and data_key in mean_activity:
                module.initialize(torch.as_tensor(np.asarray(mean_activity[data_key], dtype=np.float32)))
    if recipe.freeze_core:
        model.freeze_core(True)
    else:
        model.freeze_core(False)
        model.core_lr = recipe.core_lr
    return copied


def add_sessions(
    model: nn.Module, data_info: Mapping[str, Mapping[str, Any]], **readout_kwargs: Any
) -> list[str]:
    """Add new sessions to an existing multi-session model: a readout each (and a shifter / modulator).

    The new readouts read the model's core (their input shape is the core's output for the session's
    image shape), are built like the model's other readouts (``MultiReadoutBase.add_sessions``) and
    start from the sessions' ``mean_activity`` when ``data_info`` has it. A model with a shifter or
    modulator gets a freshly initialised one per new session.

    Args:
        model: a :class:`~pipeline.models.FiringRateEncoder`.
        data_info: ``{data_key: {"n_neurons": N, "input_shape": [C, H, W], "mean_activity": ...,
            "cortex_coordinates": ...}}`` of the new sessions (``data_info_from_loaders``).
        **readout_kwargs: per-session readout options (e.g. ``source_grids`` for a readout whose
            positions are predicted from cortex coordinates).

    Returns:
        The data keys added.

    Raises:
        ValueError: a session the model has already, or an input shape the core cannot take.
    """
    readout = getattr(model, "readout", None)
    if not hasattr(readout, "add_sessions"):
        raise TypeError(f"the model's readout ({type(readout).__name__}) cannot add sessions")
    if not data_info:
        raise ValueError("data_info names no session to add")
    in_shapes, n_neurons, means = {}, {}, {}
    for data_key, entry in data_info.items():
        shape = tuple(int(s) for s in entry["input_shape"])
        in_shapes[data_key] = get_module_output(model.core, (1, *shape))[1:]
        n_neurons[data_key] = int(entry["n_neurons"])
        if entry.get("mean_activity") is not None:
            means[data_key] = torch.as_tensor(np.asarray(entry["mean_activity"], dtype=np.float32))
    if "grid_mean_predictor" in readout._session_kwargs and readout._session_kwargs["grid_mean_predictor"]:
        if "source_grids" not in readout_kwargs:
            dims = int(readout[next(iter(readout.keys()))].source_grid.shape[1])
            readout_kwargs["source_grids"] = {
                k: np.asarray(e["cortex_coordinates"], dtype=np.float64)[:, :dims]
                for k, e in data_info.items()
            }
    added = readout.add_sessions(
        in_shapes,
        n_neurons,
        mean_activity_dict=means if len(means) == len(n_neurons) else None,
        **readout_kwargs,
    )
    if getattr(model, "shifter", None) is not None:
        model.shifter.add_sessions(list(n_neurons))
    if getattr(model, "modulator", None) is not None:
        model.modulator.add_sessions(n_neurons)
    return added
