"""Live training progress: per-epoch rows and resumable checkpoints, for any training table.

While a training table's ``make_compute`` trains, :class:`ProgressRecorder` (the trainer's
callback) writes one progress row per epoch and every ``SYSID_CHECKPOINT_EVERY`` epochs (default
1) replaces the key's checkpoint row. These tables are keyed like the training table but reference
its parents, not the table itself: its row does not exist until training has finished.

A training table keyed by other parents gets its own pair, declared like the two below from
:func:`progress_definition` and :func:`checkpoint_definition` with its key.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import datajoint as dj

from pipeline.contracts import finite_or_none

from . import state_io
from ._schema import schema
from .configs import Dataset, Model, Seed, Trainer  # noqa: F401  (used in the definitions)
from .connection import backend_of
from .reconnect import retry_transient
from .stopping import stop_requested

logger = logging.getLogger(__name__)

__all__ = [
    "RECORD_COLUMNS",
    "TRAINED_MODEL_KEY_DEFINITION",
    "Checkpoint",
    "ProgressRecorder",
    "TrainingProgress",
    "checkpoint_definition",
    "EPOCH_CHECKS",
    "delete_present",
    "latest_checkpoint",
    "progress_definition",
    "register_epoch_check",
    "replace_row",
]

#: share of MySQL's max_allowed_packet a checkpoint may use (escaped bytes can grow on the wire)
MYSQL_PACKET_SHARE = 0.5

#: the fields of the trainer's epoch record (``pipeline.training.EpochRecord``) stored as columns
RECORD_COLUMNS = ("train_loss", "val_correlation", "lr", "seconds")

#: the key of TrainedModel (and of its progress and checkpoint rows): one trained model per combination
TRAINED_MODEL_KEY_DEFINITION = """
    -> Model
    -> Dataset
    -> Trainer
    -> Seed
"""


#: factories of per-run epoch checks (e.g. a search's pruner, :mod:`schemas.search_tables`):
#: ``factory(recorder) -> check | None`` once per training run; ``check(record) -> bool`` after every
#: epoch's progress row, True ending the training early (cleanly, with its best state kept)
EPOCH_CHECKS: list[Callable[[Any], Callable[[Any], bool] | None]] = []


def register_epoch_check(factory: Callable[[Any], Callable[[Any], bool] | None]) -> None:
    """Add ``factory`` to :data:`EPOCH_CHECKS` (once; registering it again does nothing)."""
    if factory not in EPOCH_CHECKS:
        EPOCH_CHECKS.append(factory)


def progress_definition(key_definition: str) -> str:
    """The definition of a progress table for a training table keyed by ``key_definition``."""
    return f"""
    # per-epoch progress of a training run (written while it trains; kept as the learning curve)
    {key_definition}
    epoch: int32
    ---
    train_loss=null: float64
    val_correlation=null: float64
    lr=null: float64
    seconds=null: float64          # wall time of the epoch
    host="": varchar(255)
    progress_ts=CURRENT_TIMESTAMP: datetime
    """


def checkpoint_definition(key_definition: str) -> str:
    """The definition of a checkpoint table for a training table keyed by ``key_definition``."""
    return f"""
    # latest resumable training state of an unfinished run (removed when the run is stored)
    {key_definition}
    ---
    epoch: int32
    state: bytes                   # torch.save of EpochRecord.training_state()
    nbytes: int64
    host="": varchar(255)
    checkpoint_ts=CURRENT_TIMESTAMP: datetime
    """


@schema
class TrainingProgress(dj.Manual):
    definition = progress_definition(TRAINED_MODEL_KEY_DEFINITION)


@schema
class Checkpoint(dj.Manual):
    definition = checkpoint_definition(TRAINED_MODEL_KEY_DEFINITION)


class ProgressRecorder:
    """The training callback: progress rows every epoch, checkpoints every ``every`` epochs.

    Returns True (stop training cleanly) once a stop was requested, after writing a checkpoint.

    Args:
        key: the training table's key of the run.
        connection: the DataJoint connection (progress rows are written outside any transaction).
        every: checkpoint every this many epochs.
        progress_table, checkpoint_table: the tables to write (those of the training table).
        guard: called first inside each write's transaction; it raises to refuse the write (the
            training table's lease check, :func:`schemas.leases.guard`).

    A write that fails because the connection dropped is retried after reconnecting
    (:func:`schemas.reconnect.retry_transient`, about 90 s), so a server restart costs no epochs.

    The record passed to the callback must have the attributes ``epoch`` and
    :data:`RECORD_COLUMNS` and a ``training_state()`` method (``pipeline.training.EpochRecord``):
    a record without one is an error, not a row of NULLs.
    """

    def __init__(
        self,
        key: Mapping[str, Any],
        connection,
        every: int = 1,
        progress_table: type = TrainingProgress,
        checkpoint_table: type = Checkpoint,
        guard: Callable[[], None] | None = None,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.key = dict(key)
        self.connection = connection
        self.every = every
        self.progress_table = progress_table
        self.checkpoint_table = checkpoint_table
        self.guard = guard
        self.calls = 0
        self.last_epoch: int | None = None
        self.host = socket.gethostname()
        self.checkpoint_too_large = False
        self._limit: float | None = None
        self._checks: list[Callable[[Any], bool]] | None = None
        #: the epoch at which an epoch check ended the training (None: it was not ended early)
        self.stopped_early_at: int | None = None

    def __call__(self, record) -> bool:
        self.calls += 1
        epoch = int(record.epoch)
        self.last_epoch = epoch
        row = {
            **self.key,
            "epoch": epoch,
            **{name: finite_or_none(getattr(record, name)) for name in RECORD_COLUMNS},
            "host": self.host,
        }
        # a resumed run rewrites its epochs
        self._write(self.progress_table, {**self.key, "epoch": epoch}, row, "writing the progress row")
        stop = stop_requested()
        if stop or self.calls % self.every == 0:
            self.save_checkpoint(record)
        if not stop and self._ends_early(record):
            self.stopped_early_at = epoch
            return True
        return stop

    def _ends_early(self, record) -> bool:
        """Whether an epoch check (:data:`EPOCH_CHECKS`) ends this training now."""
        if self._checks is None:
            self._checks = []
            for factory in EPOCH_CHECKS:
                try:
                    check = factory(self)
                except Exception as err:  # as below: train on without the check
                    logger.warning("epoch check %r failed: %s: %s", factory, type(err).__name__, err)
                    continue
                if check is not None:
                    self._checks.append(check)
        for check in self._checks:
            try:
                if check(record):
                    return True
            except Exception as err:  # a check's trouble (e.g. its database) must not end the training
                logger.warning("epoch check %r failed: %s: %s", check, type(err).__name__, err)
        return False

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
        row = {**self.key, "epoch": int(record.epoch), "state": data, "nbytes": len(data), "host": self.host}
        self._write(self.checkpoint_table, self.key, row, "saving the checkpoint")

    def _write(self, table: type, key: Mapping[str, Any], row: Mapping[str, Any], what: str) -> None:
        retry_transient(
            lambda: replace_row(table, key, row, self.connection, guard=self.guard),
            self.connection,
            what=what,
        )


def delete_present(query) -> None:
    """Delete the rows of ``query`` if there are any.

    On MySQL/MariaDB a DELETE that matches no row still locks the gap where the row would be; two
    workers that then insert into the same gap deadlock (error 1213). A plain read first avoids
    the lock when there is nothing to delete.
    """
    if query:
        query.delete_quick()


def replace_row(
    table: type,
    key: Mapping[str, Any],
    row: Mapping[str, Any],
    connection,
    guard: Callable[[], None] | None = None,
) -> None:
    """Write ``row`` as the one row of ``key`` in ``table`` (replacing an earlier one), in one transaction.

    ``guard`` runs first inside the transaction; what it raises cancels the write.
    """
    with connection.transaction:
        if guard is not None:
            guard()
        delete_present(table() & dict(key))
        table().insert1(dict(row))


def latest_checkpoint(checkpoint_table: type, key: Mapping[str, Any]) -> tuple[Any, int | None]:
    """Return ``(training_state, epoch)`` of the key's checkpoint, or ``(None, None)``."""
    rows = (checkpoint_table() & dict(key)).to_dicts()
    if not rows:
        return None, None
    row = rows[0]
    logger.info("resuming %s from the checkpoint of epoch %s", dict(key), row["epoch"])
    return state_io.from_bytes(row["state"]), int(row["epoch"])
