"""External checkpoints as trained models: read a state-dict file safely, and the "trainer" that imports it.

:func:`read_state_file` loads a ``torch.save`` file of a state dict (e.g. a Sensorium 2022 pretrained
model) with ``weights_only=True`` onto the CPU, refusing files above a size bound, and returns its
sha256. :func:`imported_checkpoint` has a trainer's signature: it loads the file into the model
strictly (checking the sha256 first) and returns its validation correlation, so an imported
checkpoint goes through the same code as a trained model (scores, readout parameters, reports).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.contracts import resolve_device
from pipeline.measures import get_correlations

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "CheckpointError",
    "imported_checkpoint",
    "load_strictly",
    "read_state_file",
]

#: files above this size are refused (a model state of a few hundred MB at most is expected)
MAX_CHECKPOINT_BYTES = 2 * 2**30


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (missing, too large, not a state dict, wrong hash, not loadable)."""


def read_state_file(
    path: str | os.PathLike, max_bytes: int = MAX_CHECKPOINT_BYTES
) -> tuple[dict[str, torch.Tensor], str, int]:
    """Read a state-dict file: ``(state dict of CPU tensors, sha256 hex, size in bytes)``.

    Args:
        path: a file written by ``torch.save(model.state_dict(), path)``.
        max_bytes: refuse larger files.

    Raises:
        CheckpointError: no such file, too large, unreadable with ``weights_only=True``, or not a
            mapping of names to tensors.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"no checkpoint file at {file}")
    size = file.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{file} has {size} bytes, more than the limit of {max_bytes}")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, unsafe globals, truncated files
        raise CheckpointError(
            f"{file} is not a torch state dict readable with weights_only=True: {error}"
        ) from None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict {{name: tensor}}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: entries {bad[:5]} are not name -> tensor pairs of a state dict")
    return dict(state), digest, size


def load_strictly(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "the checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming what does not fit.

    Raises:
        CheckpointError: missing or unexpected entries, or other shapes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if shapes:
            parts.append("other shapes (file vs model) " + "; ".join(shapes[:6]))
        raise CheckpointError(f"{what} does not load strictly into the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def imported_checkpoint(
    model: nn.Module,
    dataloaders: Mapping[str, Mapping[str, Any]],
    seed: int,
    path: str,
    sha256: str,
    uid: Any = None,
    cb: Callable | None = None,
    resume_state: Any = None,
    device: str = "cpu",
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> tuple[float, dict[str, Any], dict[str, torch.Tensor]]:
    """A trainer (nnfabrik signature) that imports a checkpoint instead of training.

    Args:
        model: the model built from the dataset and model config.
        dataloaders: ``{tier: {data_key: loader}}`` with a validation tier.
        seed: unused (kept for the trainer signature).
        path: the checkpoint file.
        sha256: its expected sha256 (hex); another file content is refused.
        uid, cb, resume_state: unused (nothing is trained).
        device: where the validation correlation is computed ("auto" for CUDA when available).
        max_bytes: see :func:`read_state_file`.

    Returns:
        ``(validation correlation, output, state dict)``; ``output`` names the source file and sha256.

    Raises:
        CheckpointError: see :func:`read_state_file` and :func:`load_strictly`; a changed file.
    """
    state, digest, size = read_state_file(path, max_bytes)
    if digest != sha256:
        raise CheckpointError(f"{path} changed since it was registered: sha256 {digest} instead of {sha256}")
    load_strictly(model, state, what=str(path))
    dev = resolve_device(device)
    model.to(dev).eval()
    score = float(get_correlations(model, dataloaders["validation"], device=dev, per_neuron=False))
    output = {
        "imported_from": str(path),
        "sha256": digest,
        "file_nbytes": size,
        "validation_correlation": score,
    }
    return score, output, {k: v.detach().cpu() for k, v in model.state_dict().items()}
