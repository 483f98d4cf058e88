"""The training objective of one batch: the only place the per-batch loss is computed.

:class:`BatchLoss` holds what stays fixed for a whole run (the model, how its forward pass runs,
the loss options) and returns one batch's scalar loss: the Poisson loss of the prediction (summed,
or averaged with ``avg_loss``), × sqrt(n_train / batch size) with ``scale_loss``, + the session's
core, readout, shifter and modulator regularizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.contracts import split_batch

__all__ = ["BatchLoss"]


def _poisson_loss(output: torch.Tensor, target: torch.Tensor, avg: bool, eps: float = 1e-12) -> torch.Tensor:
    loss = output - target * torch.log(output + eps)
    return loss.mean() if avg else loss.sum()


def _regularizer(model: nn.Module, data_key: str, detach_core: bool) -> torch.Tensor | float:
    """Core (unless detach_core) + readout(data_key) + shifter/modulator(data_key) regularizers.

    Sensorium adds only core and readout; the shifter and modulator terms are added here too (they
    are zero with the default ``gamma_shifter=0``) so their regularization is not silently ignored.
    """
    core, readout = getattr(model, "core", None), getattr(model, "readout", None)
    if core is None or readout is None:
        if hasattr(model, "regularizer"):
            return model.regularizer(data_key=data_key, detach_core=detach_core)
        return 0.0
    total = readout.regularizer(data_key)
    if not detach_core and hasattr(core, "regularizer"):
        total = total + core.regularizer()
    for name in ("shifter", "modulator"):
        part = getattr(model, name, None)
        if part is not None and hasattr(part, "regularizer"):
            total = total + part.regularizer(data_key=data_key)
    return total


@dataclass(frozen=True)
class BatchLoss:
    """The training objective of one batch, with the settings that stay fixed for the whole run.

    ``loss(data_key, batch)`` = Poisson loss of ``forward_model``'s prediction (summed, or averaged
    with ``avg_loss``) × sqrt(n_train / batch size) with ``scale_loss`` (n_train =
    ``len(train_loaders[data_key].dataset)``) + the session's regularizers of ``model``.

    Attributes:
        model: the model (its regularizers are read from it).
        forward_model: what runs the forward pass (``model`` itself, or its ``torch.compile``).
        train_loaders: ``{data_key: loader}`` of the train tier.
        device: where the batch goes.
        avg_loss, scale_loss, detach_core: as in :func:`standard_trainer`.
        autocast: a context-manager factory the forward pass runs under (bf16 autocast or none).
    """

    model: nn.Module
    forward_model: Callable[..., torch.Tensor]
    train_loaders: Mapping[str, Any]
    device: torch.device
    avg_loss: bool
    scale_loss: bool
    detach_core: bool
    autocast: Callable[[], AbstractContextManager] = nullcontext

    def __call__(self, data_key: str, batch: Any) -> torch.Tensor:
        """The scalar loss of ``batch`` (a namedtuple/dict/tuple batch of session ``data_key``)."""
        images, responses, extra = split_batch(batch)
        kwargs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
        with self.autocast():
            output = self.forward_model(
                images.to(self.device), data_key=data_key, detach_core=self.detach_core, **kwargs
            )
        loss = _poisson_loss(output.float(), responses.to(self.device), avg=self.avg_loss)
        if self.scale_loss:
            loss = loss * math.sqrt(len(self.train_loaders[data_key].dataset) / images.shape[0])
        return loss + _regularizer(self.model, data_key, self.detach_core)
