"""Turning trained-model artefacts into database values and back (no database access here)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "from_bytes",
    "numpy_to_torch",
    "plain_output",
    "state_nbytes",
    "state_to_numpy",
    "to_bytes",
]


def state_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Return a model state dict as ``{name: numpy array}`` (CPU copies; what ``<blob>`` stores)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"the trainer must return a state dict (a mapping), got {type(state_dict).__name__}")
    out = {}
    for name, value in state_dict.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[str(name)] = np.asarray(value)
    return out


def numpy_to_torch(state: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: numpy array}`` -> ``{name: torch tensor}`` (copies: stored arrays may be read-only)."""
    import torch

    return {str(k): torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}


def state_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Total size in bytes of a numpy state dict."""
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def to_bytes(obj: Any) -> bytes:
    """Serialise tensors / dicts of tensors with ``torch.save`` into bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, device: str = "cpu") -> Any:
    """Load what :func:`to_bytes` wrote onto ``device`` with ``torch.load(weights_only=True)``.

    Only tensors, numbers, strings and containers load: a database row cannot run code in a worker.
    """
    import torch

    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def plain_output(value: Any) -> Any:
    """Convert a trainer's ``output`` to what ``<blob>`` stores: tensors become numpy arrays."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {str(k): plain_output(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_output(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
