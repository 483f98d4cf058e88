"""TrainedModel: one row per (model, dataset, trainer, seed), trained by populate workers.

Training runs in ``make_compute`` outside any database transaction. While it runs, a callback
writes one ``TrainingProgress`` row per epoch (the learning curve, readable in SQL) and every
``SYSID_CHECKPOINT_EVERY`` epochs replaces the key's ``Checkpoint`` row, from which a restarted
job resumes. ``make_insert`` writes the result (and the large-state part) in one transaction and
drops the checkpoint. A stop request (:func:`request_stop`, also installed as the SIGTERM handler
while a model trains) checkpoints, ends training and hands the job back to the queue.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import datajoint as dj

from pipeline import builder

from . import state_io
from ._schema import schema
from .configs import Dataset, Model, Seed, Trainer  # noqa: F401  (Seed: in the definitions)
from .progress import (  # noqa: F401  (re-exported)
    _KEY_DEFINITION,
    Checkpoint,
    ProgressRecorder,
    TrainingInterrupted,
    TrainingProgress,
    _checkpoint_every,
    _number,
    clear_stop,
    request_stop,
    stop_requested,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "TrainedModel",
    "TrainingInterrupted",
    "TrainingProgress",
    "clear_stop",
    "request_stop",
    "stop_requested",
]

#: model states up to this size are stored inline (MariaDB's packet limit makes larger blobs fail)
INLINE_STATE_LIMIT = 8 * 2**20
#: the named object store for large model states (configured through DJ_STORES)
STATE_STORE = "models"


class hybridmethod:
    """A method callable on the class (``TrainedModel.load_model(key)``) or on a restricted instance."""

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, obj, objtype=None):
        target = obj if obj is not None else objtype()
        return self.function.__get__(target, objtype)


def _model_nbytes(model) -> int:
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _store_configured() -> bool:
    return STATE_STORE in dict(dj.config.stores or {})


@schema
class TrainedModel(dj.Computed):
    definition = f"""
    # a model trained on a dataset by a trainer from a seed
    {_KEY_DEFINITION}
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
    trainedmodel_ts=CURRENT_TIMESTAMP: datetime
    """

    class StoredState(dj.Part):
        definition = f"""
        # a model state too large to store inline, in the object store '{STATE_STORE}'
        -> master
        ---
        model_state: <object@{STATE_STORE}>   # torch.save bytes of the state dict
        """

    # ------------------------------------------------------------------------------------------
    # three-method make

    def make_fetch(self, key: Mapping[str, Any]):
        """Fetch the configs of ``key`` (cheap and deterministic: DataJoint calls it twice)."""
        dataset_fn, dataset_config = Dataset.get_config(key)
        model_fn, model_config = Model.get_config(key)
        trainer_fn, trainer_config = Trainer.get_config(key)
        return (
            dataset_fn,
            dataset_config,
            model_fn,
            model_config,
            trainer_fn,
            trainer_config,
            int(key["seed"]),
        )

    def make_compute(
        self, key, dataset_fn, dataset_config, model_fn, model_config, trainer_fn, trainer_config, seed
    ):
        """Build loaders, model and trainer, train (resuming from a checkpoint), return the result."""
        key = _primary_key(self, key)
        if stop_requested():
            raise TrainingInterrupted("stop requested before training started")
        started = time.time()
        dataloaders = build_dataloaders(dataset_fn, dataset_config, seed)
        model = builder.get_model(model_fn, model_config, dataloaders=dataloaders, seed=seed)
        if _model_nbytes(model) > INLINE_STATE_LIMIT and not _store_configured():
            raise ValueError(
                f"the model state ({_model_nbytes(model) / 2**20:.1f} MiB) is too large to store inline and no "
                f"object store '{STATE_STORE}' is configured: set DJ_STORES='{{\"{STATE_STORE}\": "
                '{"protocol": "file", "location": "/path/to/models"}}\''
            )
        trainer = builder.get_trainer(trainer_fn, trainer_config)
        resume_state, resumed_from = self._resume_state(key)
        callback = ProgressRecorder(key, self.connection, every=_checkpoint_every())
        kwargs: dict[str, Any] = {"uid": dict(key), "cb": callback}
        if resume_state is not None:
            kwargs["resume_state"] = resume_state
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            # SIGTERM while training: checkpoint and stop at the end of the epoch (the worker exits after)
            previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
        try:
            score, output, state_dict = trainer(model, dataloaders, seed, **kwargs)
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if stop_requested():
            raise TrainingInterrupted(f"stop requested; checkpoint saved after epoch {callback.last_epoch}")
        score = _number(score)
        if score is None:
            raise ValueError("the trainer returned no finite score")
        output = state_io.plain_output(dict(output or {}))
        if resumed_from is not None:
            output["resumed_from_epoch"] = resumed_from
        state = state_io.state_to_numpy(state_dict)
        device = device_used(model, output)
        meta = {
            "seconds": time.time() - started,
            "host": socket.gethostname()[:255],
            "device": device[:64],
            "package_versions": state_io.package_versions(),
            "git_commit": state_io.git_commit(),
        }
        return score, output, state, meta

    def make_insert(self, key, score, output, state, meta):
        """Insert the master row (and the large-state part) and drop the checkpoint, in one transaction."""
        key = _primary_key(self, key)
        nbytes = state_io.state_nbytes(state)
        inline = nbytes <= INLINE_STATE_LIMIT
        if not inline and not _store_configured():
            raise ValueError(
                f"model state of {nbytes} bytes needs the object store '{STATE_STORE}' (DJ_STORES)"
            )
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
        (Checkpoint() & key).delete_quick()

    def _resume_state(self, key):
        """Return ``(training_state, epoch)`` of the key's checkpoint, or ``(None, None)``."""
        rows = (Checkpoint() & key).to_dicts()
        if not rows:
            return None, None
        row = rows[0]
        logger.info("resuming %s from the checkpoint of epoch %s", key, row["epoch"])
        return state_io.from_bytes(row["state"]), int(row["epoch"])

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
        release_interrupted_jobs(self)
        return result

    def delete(self, *args, **kwargs):
        """Delete trained models with their parts, dependents, progress rows and checkpoints."""
        keys = self.proj().to_dicts()
        result = super().delete(*args, **kwargs)
        # progress and checkpoints reference the config tables (the master row does not exist
        # while training), so they are removed here for every key whose model is gone
        gone = [k for k in keys if not (TrainedModel() & k)]
        if gone:
            (TrainingProgress() & gone).delete_quick()
            (Checkpoint() & gone).delete_quick()
        return result

    @hybridmethod
    def load_model(
        self,
        key=None,
        device: str = "cpu",
        include_dataloaders: bool = False,
        include_state_dict: bool = True,
    ):
        """Rebuild a trained model (and optionally its loaders) from the database.

        Args:
            key: restriction selecting exactly one trained model (None: this restricted table).
            device: where the parameters go (``map_location`` semantics).
            include_dataloaders: also build and return the loaders (reads the data).
            include_state_dict: load the trained parameters (False: freshly initialised model).

        Returns:
            ``model`` in eval mode, or ``(dataloaders, model)`` with ``include_dataloaders``.

        Raises:
            ValueError: the restriction matches no row or several rows.
        """
        query = self & key if key is not None else self
        keys = query.keys()
        if len(keys) != 1:
            raise ValueError(
                f"load_model needs exactly one trained model, the restriction matches {len(keys)}"
            )
        key = keys[0]
        dataset_fn, dataset_config, model_fn, model_config, _, _, seed = self.make_fetch(key)
        state = self.fetch_state(key, device=device) if include_state_dict else None
        if include_dataloaders:
            dataloaders = build_dataloaders(dataset_fn, dataset_config, seed)
            model = builder.get_model(
                model_fn, model_config, dataloaders=dataloaders, seed=seed, state_dict=state
            )
        else:
            dataloaders = None
            data_info = _stored_data_info(key)
            if data_info is None:  # DataInfo not populated yet: read the data once
                loaders = build_dataloaders(dataset_fn, dataset_config, seed)
                model = builder.get_model(
                    model_fn, model_config, dataloaders=loaders, seed=seed, state_dict=state
                )
            else:
                model = builder.get_model(
                    model_fn, model_config, data_info=data_info, seed=seed, state_dict=state
                )
        model = model.to(device).eval()
        return (dataloaders, model) if include_dataloaders else model

    @hybridmethod
    def fetch_state(self, key=None, device: str = "cpu") -> dict:
        """Return the state dict (torch tensors on ``device``) of one trained model."""
        import torch

        query = self & key if key is not None else self
        rows = query.to_dicts()
        if len(rows) != 1:
            raise ValueError(
                f"fetch_state needs exactly one trained model, the restriction matches {len(rows)}"
            )
        row = rows[0]
        if row["model_state"] is not None:
            return {k: v.to(device) for k, v in state_io.numpy_to_torch(row["model_state"]).items()}
        stored = (self.StoredState() & _primary_key(self, row)).fetch1("model_state")
        data = stored.read() if hasattr(stored, "read") else bytes(stored)
        state = state_io.from_bytes(data, device=device)
        return {k: torch.as_tensor(v).to(device) for k, v in state.items()}


def device_used(model, output: Mapping[str, Any] | None = None) -> str:
    """The device a training actually ran on, as stored in ``TrainedModel.device`` (at most 64 characters).

    The trainer config may say ``"auto"`` or ``"cuda"``; what counts is where the model ended up:
    the trainer's ``output["device"]`` when it reports one, else the device of the model's first
    parameter or buffer (the trainer moves the model in place), else ``"cpu"``. A CUDA device gets
    its index and the GPU's name: ``"cuda:0 (NVIDIA H100 80GB HBM3)"``.

    Args:
        model: the trained ``torch.nn.Module``.
        output: the trainer's output dict.
    """
    import torch

    reported = (output or {}).get("device")
    if reported:
        try:
            device = torch.device(str(reported))
        except RuntimeError:  # not a torch device string: keep what the trainer said
            return str(reported)[:64]
    else:
        tensors = itertools.chain(model.parameters(), model.buffers())
        first = next(tensors, None)
        device = first.device if first is not None else torch.device("cpu")
    if device.type != "cuda":
        return str(device)[:64]
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
    except (RuntimeError, AssertionError):  # CUDA not usable in this process: keep the bare device
        return str(device)[:64]
    return f"cuda:{index} ({name})"[:64]


def _primary_key(table, row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in table.primary_key}


def build_dataloaders(dataset_fn: str, dataset_config: Mapping[str, Any], seed: int):
    """Call the dataset function with the seed (when it takes one) as nnfabrik does."""
    config = dict(dataset_config)
    function = builder.resolve_fn(dataset_fn)
    if "seed" not in config and builder._accepts(function, "seed"):
        config["seed"] = int(seed)
    return builder.get_data(function, config)


def _stored_data_info(key: Mapping[str, Any]):
    """The DataInfo dict of the key's dataset, or None when it is not populated."""
    from .downstream import DataInfo

    rows = (DataInfo() & {k: key[k] for k in ("dataset_fn", "dataset_hash")}).to_dicts()
    return rows[0]["data_info"] if rows else None


def release_interrupted_jobs(table) -> int:
    """Turn jobs that ended with :class:`TrainingInterrupted` back into pending jobs.

    Returns:
        How many jobs were re-pended.
    """
    jobs = table.jobs
    interrupted = jobs & "status='error'" & f"error_message LIKE '{TrainingInterrupted.__name__}%'"
    keys = interrupted.keys()
    for key in keys:
        (jobs & key).delete_quick()
        jobs.insert1(
            {**key, "status": "pending", "priority": dj.config.jobs.default_priority},
            ignore_extra_fields=True,
        )
    return len(keys)
