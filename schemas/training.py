"""The machinery every table of trained models shares: :class:`TrainingTable`.

A training table is a ``dj.Computed`` table whose ``make_compute`` trains a model. This base
gives it, once for every such table:

* the three-method make: ``make_fetch`` (the job spec, cheap), ``make_compute`` (build loaders
  and model, train with no transaction open, resuming from a checkpoint), ``make_insert``
  (master row and large-state part in one transaction, checkpoint dropped);
* per-epoch progress rows and checkpoints (:mod:`schemas.progress`) written while it trains;
* SIGTERM and stop requests during training (:mod:`schemas.stopping`): checkpoint, end
  ``populate``, put the job back into the queue;
* the start/done/failed/interrupted log lines of the worker (:mod:`schemas.job_events`);
* ``load_model`` / ``fetch_state`` (:mod:`schemas.model_loading`) and a ``delete`` that also
  removes progress rows and checkpoints.

A concrete table (:class:`schemas.trained_model.TrainedModel` is the example) sets the class
attributes and the hooks: ``job_spec(key)`` (what to train) and optionally
``initial_model(job, dataloaders)`` (see ``docs/INTERFACES.md``, "Extension points").

Part classes cannot be inherited (DataJoint binds a part to one master): each table declares
its own ``StoredState`` from :data:`STORED_STATE_DEFINITION`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import datajoint as dj

from pipeline import builder
from pipeline.contracts import finite_or_none

from . import _dj_compat, job_events, leases, state_io
from .hybrid import hybridmethod
from .model_loading import TrainingJob, dataloader_flag, rebuild_model, state_from_row
from .progress import ProgressRecorder, delete_present, latest_checkpoint
from .reconnect import retry_transient
from .requeue import release_interrupted_jobs
from .run_info import DEGENERATE_COMMENT, degenerate_check, run_info
from .settings import current_settings
from .stopping import TrainingInterrupted, sigterm_requests_stop, stop_requested

logger = logging.getLogger(__name__)

__all__ = [
    "INLINE_STATE_LIMIT",
    "STATE_STORE",
    "STORED_STATE_DEFINITION",
    "TrainingJob",
    "TrainingTable",
    "hybridmethod",
    "primary_key",
    "trained_model_definition",
]

#: model states up to this size are stored inline (MariaDB's packet limit makes larger blobs fail)
INLINE_STATE_LIMIT = 8 * 2**20
#: the named object store for large model states (configured through DJ_STORES)
STATE_STORE = "models"

#: the definition of every training table's ``StoredState`` part
STORED_STATE_DEFINITION = f"""
        # a model state too large to store inline, in the object store '{STATE_STORE}'
        -> master
        ---
        model_state: <object@{STATE_STORE}>   # torch.save bytes of the state dict
        """


def trained_model_definition(
    comment: str, key_definition: str, timestamp_column: str = "trainedmodel_ts"
) -> str:
    """The definition of a training table: its key, then the columns :class:`TrainingTable` fills.

    Args:
        comment: the table's comment (one line).
        key_definition: the foreign keys that make the primary key; they must include the
            dataset the model predicts as ``dataset_fn``/``dataset_hash`` (through ``-> Dataset``),
            which the score and readout tables join on.
        timestamp_column: name of the insertion-time column.
    """
    return f"""
    # {comment}
    {key_definition}
    ---
    score: float64                  # the trainer's score (mean validation correlation)
    output: <blob>                  # the trainer's output: learning curves etc.
    model_state=null: <blob>        # state dict as numpy arrays when small; else in part StoredState
    state_nbytes: int64
    seconds: float64                # training wall time
    host: varchar(255)
    device: varchar(64)
    package_versions: json
    git_commit=null: varchar(40)
    comment="": varchar(512)
    {timestamp_column}=CURRENT_TIMESTAMP: datetime
    """


#: functions called after every ``TrainingTable.delete`` (e.g. removing transfers whose source is
#: gone: :mod:`schemas.transfers` registers one); each takes no arguments
AFTER_DELETE: list = []


def primary_key(table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The primary-key part of ``row`` for ``table``."""
    return {name: row[name] for name in table.primary_key}


def _model_nbytes(model) -> int:
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _store_configured() -> bool:
    return STATE_STORE in dict(dj.config.stores or {})


def _require_store(nbytes: int) -> None:
    if nbytes > INLINE_STATE_LIMIT and not _store_configured():
        raise ValueError(
            f"the model state ({nbytes / 2**20:.1f} MiB) is too large to store inline and no "
            f"object store '{STATE_STORE}' is configured: set DJ_STORES='{{\"{STATE_STORE}\": "
            '{"protocol": "file", "location": "/path/to/models"}}\''
        )


class TrainingTable:
    """Base of every ``dj.Computed`` table whose rows are trained models (mix in before ``dj.Computed``).

    Class attributes a subclass sets:
        progress_table: the ``dj.Manual`` table of its per-epoch progress rows
            (:func:`schemas.progress.progress_definition` with its key).
        checkpoint_table: the ``dj.Manual`` table of its checkpoints
            (:func:`schemas.progress.checkpoint_definition` with its key).
        timestamp_column: its insertion-time column (see :func:`trained_model_definition`).

    Hooks:
        :meth:`job_spec` (required) and :meth:`initial_model` (optional).
    """

    progress_table: ClassVar[type]
    checkpoint_table: ClassVar[type]
    timestamp_column: ClassVar[str] = "trainedmodel_ts"
    #: the jobs table with leases (:mod:`schemas.leases`), also when populate is called directly
    jobs = _dj_compat.jobs_descriptor(leases.LeasedJob)

    # ------------------------------------------------------------------------------------------
    # hooks

    def job_spec(self, key: Mapping[str, Any]) -> TrainingJob:
        """What to train for ``key``: functions, configs and seed (cheap and deterministic: database reads only)."""
        raise NotImplementedError(f"{type(self).__name__} must define job_spec(key)")

    def initial_model(self, job: TrainingJob, dataloaders: Mapping):
        """The model to train, before training (default: the model function with the job's seed)."""
        return builder.get_model(job.model_fn, job.model_config, dataloaders=dataloaders, seed=job.seed)

    # ------------------------------------------------------------------------------------------
    # three-method make

    def make_fetch(self, key: Mapping[str, Any]) -> tuple[TrainingJob]:
        """The job spec of ``key`` (DataJoint calls this twice and checks that nothing changed)."""
        return (self.job_spec(key),)

    @job_events.compute_step
    def make_compute(self, key: Mapping[str, Any], job: TrainingJob):
        """Build loaders, model and trainer, train (resuming from a checkpoint), return the result."""
        key = primary_key(self, key)
        if stop_requested():
            raise TrainingInterrupted("stop requested before training started")
        started = time.time()
        dataloaders = job.dataloaders()
        model = self.initial_model(job, dataloaders)
        _require_store(_model_nbytes(model))
        trainer = builder.get_trainer(job.trainer_fn, job.trainer_config)
        resume_state, resumed_from = latest_checkpoint(self.checkpoint_table, key)
        # every write of the run first checks, under a row lock, that the job is still ours
        callback = ProgressRecorder(
            key,
            self.connection,
            every=current_settings().checkpoint_every,
            progress_table=self.progress_table,
            checkpoint_table=self.checkpoint_table,
            guard=lambda: leases.guard(self, key, lock=True),
        )
        kwargs: dict[str, Any] = {"uid": dict(key), "cb": callback}
        if resume_state is not None:
            kwargs["resume_state"] = resume_state
        # SIGTERM while training: checkpoint and stop at the end of the epoch (the worker exits after)
        with sigterm_requests_stop():
            score, output, state_dict = trainer(model, dataloaders, job.seed, **kwargs)
        if stop_requested():
            raise TrainingInterrupted(f"stop requested; checkpoint saved after epoch {callback.last_epoch}")
        # the insert follows in DataJoint's transaction: have a live connection and the lease first
        retry_transient(lambda: leases.guard(self, key), self.connection, what="checking the job's lease")
        score = finite_or_none(score)
        if score is None:
            raise ValueError("the trainer returned no finite score")
        output = state_io.plain_output(dict(output or {}))
        if resumed_from is not None:
            output["resumed_from_epoch"] = resumed_from
        state = state_io.state_to_numpy(state_dict)
        meta = run_info(model, output, time.time() - started)
        if degenerate_check(model, dataloaders):  # e.g. lr_init: 1e6 -> one output for every image
            output["degenerate"] = True
            meta["comment"] = DEGENERATE_COMMENT
            logger.warning("%s %s: %s", type(self).__name__, job_events.describe_key(key), DEGENERATE_COMMENT)
        return score, output, state, meta

    @job_events.insert_step
    def make_insert(self, key, score, output, state, meta):
        """Insert the master row (and the large-state part) and drop the checkpoint, in one transaction."""
        key = primary_key(self, key)
        leases.guard(self, key, lock=True)  # the job row stays locked until the insert commits
        nbytes = state_io.state_nbytes(state)
        _require_store(nbytes)
        inline = nbytes <= INLINE_STATE_LIMIT
        self.insert1(
            {
                **key,
                "score": score,
                "output": output,
                "model_state": state if inline else None,
                "state_nbytes": nbytes,
                **meta,
            }
        )
        if not inline:
            self.StoredState.insert1(
                {**key, "model_state": state_io.to_bytes(state_io.numpy_to_torch(state))}
            )
        delete_present(self.checkpoint_table() & key)  # inside DataJoint's transaction

    # ------------------------------------------------------------------------------------------
    # populate, delete, load

    def populate(self, *restrictions, **kwargs):
        """DataJoint's populate; a stop request ends it and re-pends the interrupted job.

        Returns DataJoint's result dict, with ``"interrupted": True`` when a stop ended it.
        """
        try:
            result = super().populate(*restrictions, **kwargs)
        except TrainingInterrupted as stop:
            release_interrupted_jobs(self)
            logger.info("populate stopped: %s", stop)
            return {"success_count": 0, "error_list": [], "interrupted": True}
        finally:
            leases.release_held(self)  # a job populate could not close goes back to the queue
        release_interrupted_jobs(self)
        return result

    def delete(self, *args, **kwargs):
        """Delete trained models with their parts, dependents, progress rows and checkpoints.

        A trained model that is a member of an ensemble (a part row of ``Ensemble``) takes the
        ensemble with it, and everything computed from the ensemble (scores, MEIs): DataJoint's
        ``part_integrity="cascade"`` is the default here (pass ``part_integrity="enforce"`` to be
        refused instead).
        """
        kwargs.setdefault("part_integrity", "cascade")
        keys = self.proj().to_dicts()
        result = super().delete(*args, **kwargs)
        # progress and checkpoints reference the parents (the master row does not exist while
        # training), so they are removed here for every key whose model is gone
        gone = [k for k in keys if not (type(self)() & k)]
        if gone:
            (self.progress_table() & gone).delete_quick()
            (self.checkpoint_table() & gone).delete_quick()
        for hook in AFTER_DELETE:
            hook()
        return result

    @hybridmethod
    def load_model(
        self,
        key=None,
        include_dataloader: bool = True,
        include_trainer: bool = False,
        include_state_dict: bool = True,
        seed: int | None = None,
        *,
        device: Any = "cpu",
        include_dataloaders: bool | None = None,
    ):
        """Rebuild a trained model from the database (nnfabrik's ``TrainedModel.load_model``).

        ``dataloaders, model = TrainedModel().load_model(key)``, as in nnfabrik.

        Args:
            key: restriction selecting exactly one trained model (None: this restricted table).
            include_dataloader: build and return the loaders too (reads the data); False builds the
                model from the dataset's stored ``DataInfo`` when it can (no data read).
            include_trainer: also return the trainer (``functools.partial`` with its config bound).
            include_state_dict: load the trained parameters (False: freshly initialised model).
            seed: build loaders and model with this seed instead of the trained model's.
            device: where the parameters go (``map_location`` semantics); not in nnfabrik.
            include_dataloaders: deprecated alias of ``include_dataloader``.

        Returns:
            ``(dataloaders, model)``; ``(dataloaders, model, trainer)`` with ``include_trainer``;
            without ``include_dataloader``: ``model``, or ``(model, trainer)``. The model is in
            eval mode.

        Raises:
            ValueError: the restriction matches no row or several rows.
        """
        include_dataloader = dataloader_flag(include_dataloader, include_dataloaders)
        key = self._one_key(key, "load_model")
        job = self.job_spec(key)
        if seed is not None:
            job = dataclasses.replace(job, seed=int(seed))
        state = self.fetch_state(key, device=device) if include_state_dict else None
        dataloaders, model = rebuild_model(job, key, state, include_dataloader)
        model = model.to(device).eval()
        parts = (dataloaders, model) if include_dataloader else (model,)
        if include_trainer:
            parts += (builder.get_trainer(job.trainer_fn, job.trainer_config),)
        return parts if len(parts) > 1 else model

    @hybridmethod
    def get_full_config(
        self, key=None, include_state_dict: bool = True, include_trainer: bool = True
    ) -> dict[str, Any]:
        """Functions and configs of one trained model, for ``pipeline.builder.get_all_parts(**config, seed=...)``.

        nnfabrik's ``TrainedModel.get_full_config``.

        Args:
            key: restriction selecting exactly one trained model (None: this restricted table).
            include_state_dict: add ``state_dict`` (torch tensors on the CPU), the trained parameters.
            include_trainer: add ``trainer_fn`` and ``trainer_config``.

        Returns:
            ``{"dataset_fn", "dataset_config", "model_fn", "model_config"[, "trainer_fn",
            "trainer_config"][, "state_dict"]}``.
        """
        key = self._one_key(key, "get_full_config")
        job = self.job_spec(key)
        config: dict[str, Any] = {
            "model_fn": job.model_fn,
            "model_config": dict(job.model_config),
            "dataset_fn": job.dataset_fn,
            "dataset_config": dict(job.dataset_config),
        }
        if include_trainer:
            config.update(trainer_fn=job.trainer_fn, trainer_config=dict(job.trainer_config))
        if include_state_dict:
            config["state_dict"] = self.fetch_state(key)
        return config

    @hybridmethod
    def fetch_state(self, key=None, device: Any = "cpu") -> dict:
        """Return the state dict (torch tensors on ``device``) of one trained model."""
        key = self._one_key(key, "fetch_state")
        row = (self & key).to_dicts()[0]
        return state_from_row(row, self.StoredState() & key, device=device)

    def _one_key(self, key, caller: str) -> dict[str, Any]:
        query = self & key if key is not None else self
        keys = query.keys()
        if len(keys) != 1:
            raise ValueError(f"{caller} needs exactly one trained model, the restriction matches {len(keys)}")
        return keys[0]
