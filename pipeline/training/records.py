"""The callback contract of the trainer: what a callback receives after every epoch and may raise.

``standard_trainer(..., cb=cb)`` calls ``cb(EpochRecord)`` after every epoch; the database layer's
progress recorder reads these fields, and ``EpochRecord.training_state()`` is what it checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpochRecord", "StopTraining", "TrainingDivergedError"]


class StopTraining(Exception):
    """Raise from a callback to end training cleanly after the current epoch (best state restored)."""


class TrainingDivergedError(ValueError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochRecord:
    """What the callback receives after every epoch.

    Attributes:
        epoch: the epoch just trained (1-based when training starts at ``epoch=0``).
        train_loss: mean over the epoch's batches of the full objective (scaled loss + regularizers).
        val_correlation: the stop-function value (mean validation correlation by default) when it
            was evaluated this epoch, else None.
        lr: the learning rate after this epoch's scheduler step.
        seconds: wall time of this epoch, evaluation included.
        best_epoch: the epoch with the best validation value so far.
        best_val_correlation: that value.
        done: True when this was the last epoch.
    """

    epoch: int
    train_loss: float
    val_correlation: float | None
    lr: float
    seconds: float
    best_epoch: int
    best_val_correlation: float
    done: bool
    _state_fn: Callable[[], dict[str, Any]] = field(repr=False, default=None)

    def training_state(self) -> dict[str, Any]:
        """The full state to resume from (model, optimiser, scheduler, early stopping, RNGs, loaders,
        history); CPU tensors and plain Python values only, loadable with ``torch.load(weights_only=True)``.

        Call it inside the callback: it snapshots the trainer's state at the time of the call
        (:meth:`pipeline.training.run.TrainingRun.state_dict`).
        """
        return self._state_fn()
