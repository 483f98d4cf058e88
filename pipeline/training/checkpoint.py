"""Save and load training states (``EpochRecord.training_state()``) as files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_training_state", "load_training_state"]


def save_training_state(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a training state atomically (a temporary file renamed into place).

    Args:
        state: the dict from ``EpochRecord.training_state()``.
        path: the file to write; its folder must exist.

    Returns:
        The path written.
    """
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError("save_training_state needs the dict returned by EpochRecord.training_state()")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a half-written checkpoint at `path`
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training state saved by :func:`save_training_state` onto the CPU (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)
