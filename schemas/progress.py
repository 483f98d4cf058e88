"""Live training progress: per-epoch rows, resumable checkpoints and the stop request.

While ``TrainedModel.make_compute`` trains, :class:`ProgressRecorder` (the trainer's callback)
writes one ``TrainingProgress`` row per epoch and every ``SYSID_CHECKPOINT_EVERY`` epochs (default
1) replaces the key's ``Checkpoint`` row. These tables reference the config tables, not
TrainedModel: its row does not exist until training has finished.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import datajoint as dj

from . import state_io
from ._schema import schema
from .configs import Dataset, Model, Seed, Trainer  # noqa: F401  (used in the definitions)
from .connection import backend_of

logger = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "ProgressRecorder",
    "TrainingInterrupted",
    "TrainingProgress",
    "clear_stop",
    "request_stop",
    "stop_requested",
]

#: share of MySQL's max_allowed_packet a checkpoint may use (escaped bytes can grow on the wire)
MYSQL_PACKET_SHARE = 0.5
_stop_event = threading.Event()


def request_stop() -> None:
    """Ask the running training to checkpoint and stop; its job goes back to the queue.

    Safe to call from a signal handler. The flag stays set (so a worker loop can exit) until
    :func:`clear_stop`.
    """
    _stop_event.set()


def clear_stop() -> None:
    """Reset the stop flag set by :func:`request_stop`."""
    _stop_event.clear()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared)."""
    return _stop_event.is_set()


class TrainingInterrupted(SystemExit):
    """Training stopped on request; the job is released, nothing is inserted.

    A ``SystemExit`` so that DataJoint's populate loop ends instead of starting the next key.
    """


_KEY_DEFINITION = """
    -> Model
    -> Dataset
    -> Trainer
    -> Seed
"""


@schema
class TrainingProgress(dj.Manual):
    definition = f"""
    # per-epoch progress of a training run (written while it trains; kept as the learning curve)
    {_KEY_DEFINITION}
    epoch: int32
    ---
    train_loss=null: float64
    val_correlation=null: float64
    lr=null: float64
    seconds=null: float64          # wall time of the epoch
    host="": varchar(255)
    progress_ts=CURRENT_TIMESTAMP: datetime
    """


@schema
class Checkpoint(dj.Manual):
    definition = f"""
    # latest resumable training state of an unfinished run (removed when the run is stored)
    {_KEY_DEFINITION}
    ---
    epoch: int32
    state: bytes                   # torch.save of EpochRecord.training_state()
    nbytes: int64
    host="": varchar(255)
    checkpoint_ts=CURRENT_TIMESTAMP: datetime
    """


def _number(value: Any) -> float | None:
    """A finite float, or None (SQL NULL) for None/NaN/inf."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _checkpoint_every() -> int:
    raw = os.environ.get("SYSID_CHECKPOINT_EVERY", "1")
    try:
        every = int(raw)
    except ValueError:
        raise ValueError(f"SYSID_CHECKPOINT_EVERY must be a positive integer, got {raw!r}") from None
    if every < 1:
        raise ValueError(f"SYSID_CHECKPOINT_EVERY must be a positive integer, got {raw!r}")
    return every


class ProgressRecorder:
    """The training callback: progress rows every epoch, checkpoints every ``every`` epochs.

    Returns True (stop training cleanly) once a stop was requested, after writing a checkpoint.
    """

    def __init__(self, key: Mapping[str, Any], connection, every: int = 1):
        self.key = dict(key)
        self.connection = connection
        self.every = every
        self.calls = 0
        self.last_epoch: int | None = None
        self.host = socket.gethostname()
        self.checkpoint_too_large = False
        self._limit: float | None = None

    def __call__(self, record) -> bool:
        self.calls += 1
        epoch = int(record.epoch)
        self.last_epoch = epoch
        row = {
            **self.key,
            "epoch": epoch,
            "train_loss": _number(getattr(record, "train_loss", None)),
            "val_correlation": _number(getattr(record, "val_correlation", None)),
            "lr": _number(getattr(record, "lr", None)),
            "seconds": _number(getattr(record, "seconds", None)),
            "host": self.host,
        }
        progress = TrainingProgress()
        with self.connection.transaction:
            (progress & {**self.key, "epoch": epoch}).delete_quick()  # a resumed run rewrites its epochs
            progress.insert1(row)
        stop = stop_requested()
        if stop or self.calls % self.every == 0:
            self.save_checkpoint(record)
        return stop

    def checkpoint_limit(self) -> float:
        """Largest checkpoint the server accepts in one statement (MySQL: half of max_allowed_packet)."""
        if self._limit is None:
            if backend_of(self.connection) == "mysql":
                packet = int(self.connection.query("SELECT @@max_allowed_packet").fetchone()[0])
                self._limit = packet * MYSQL_PACKET_SHARE
            else:
                self._limit = float("inf")  # PostgreSQL bytea holds up to 1 GB
        return self._limit

    def save_checkpoint(self, record) -> None:
        """Replace the key's checkpoint with ``record.training_state()``."""
        if not hasattr(record, "training_state"):
            return
        data = state_io.to_bytes(record.training_state())
        if len(data) > self.checkpoint_limit():
            if not self.checkpoint_too_large:
                logger.warning(
                    "checkpoint of %d bytes exceeds the server's packet budget (%d bytes): not saved; "
                    "raise max_allowed_packet to checkpoint this model",
                    len(data),
                    self.checkpoint_limit(),
                )
            self.checkpoint_too_large = True
            return
        checkpoint = Checkpoint()
        row = {**self.key, "epoch": int(record.epoch), "state": data, "nbytes": len(data), "host": self.host}
        with self.connection.transaction:
            (checkpoint & self.key).delete_quick()
            checkpoint.insert1(row)
