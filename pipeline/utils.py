"""Small helpers shared by the model and training code: seeding, loader and module shapes.

``batch_as_dict`` and ``resolve_device`` are re-exported from :mod:`pipeline.contracts`, where they
are defined.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.contracts import batch_as_dict, resolve_device, train_loaders

__all__ = [
    "batch_as_dict",
    "get_dims_for_loader_dict",
    "get_io_dims",
    "get_module_output",
    "resolve_device",
    "set_seed",
]


def set_seed(seed: int, deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device).

    Args:
        seed: the seed; any integer-like value (``int``, ``numpy.int64``, a bool is rejected) is
            converted to a plain Python ``int`` first, because ``random.seed`` hashes a
            ``numpy.int64`` differently from the equal ``int`` (nnfabrik passes numpy integers).
        deterministic: when True, also ask cuDNN for deterministic kernels (no effect on CPU).

    Returns:
        The seed as a plain ``int``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {seed!r} of type {type(seed).__name__}")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy accepts only 32-bit seeds
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def get_io_dims(loader: Any) -> dict[str, tuple[int, ...]]:
    """Return ``{field: shape}`` of the first batch that ``loader`` yields.

    Args:
        loader: any iterable of batches; a batch is a namedtuple or a dict of tensors (arrays).

    Returns:
        The full shape of each field including the batch dimension, e.g.
        ``{"images": (B, C, H, W), "responses": (B, N)}``, in the batch's field order.
    """
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError("the loader yields no batches, so its shapes cannot be read") from None
    fields = batch_as_dict(batch)
    return {name: tuple(value.shape) for name, value in fields.items() if hasattr(value, "shape")}


def get_dims_for_loader_dict(dataloaders: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes of the first batch of every loader, keyed by session.

    Args:
        dataloaders: ``{data_key: loader}``; a nested ``{tier: {data_key: loader}}`` dict is
            accepted and its ``"train"`` tier is used.

    Returns:
        ``{data_key: {field: shape}}`` with shapes including the batch dimension.
    """
    return {key: get_io_dims(loader) for key, loader in train_loaders(dataloaders).items()}


def get_module_output(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of ``module``'s output for an input of ``input_shape`` (batch dimension included).

    A zero tensor is passed through in eval mode without gradients, on the module's own device and
    dtype; the module's train/eval mode is restored afterwards, so BatchNorm statistics are not
    changed.

    Args:
        module: the module to probe.
        input_shape: full input shape, e.g. ``(1, C, H, W)``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if any(s <= 0 for s in input_shape):
        raise ValueError(f"input_shape must have positive entries, got {input_shape}")
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            output = module(torch.zeros(*input_shape, device=device, dtype=dtype))
    finally:
        module.train(was_training)
    return tuple(output.shape)
