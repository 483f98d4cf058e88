"""The worker's log lines: one event when a job starts, and one when it is done, failed or interrupted.

The events come from the tables' own make steps, not from DataJoint's log text: decorate
``make_compute`` with :func:`compute_step` (logs ``start``, and ``FAILED``/``interrupted`` when it
raises) and ``make_insert`` with :func:`insert_step` (logs ``done`` with the job's duration, or
``FAILED``). DataJoint calls ``make_compute`` once per job, after reserving it, and ``make_insert``
last, right before it commits. Every populated table does this (a test checks each table's lines
in a real worker's output). Lines look like::

    start TrainedModel dataset=static_loaders:5ad8a370 model=stacked_core_full_gauss_readout:81fb090f trainer=standard_trainer:11becab1 seed=1
    done  TrainedModel dataset=... seed=1 (12.3 s)
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ._dj_compat import recorded_error_message
from .stopping import TrainingInterrupted

__all__ = ["compute_step", "describe_key", "insert_step", "logger"]

#: the logger the events go to (INFO; FAILED at ERROR)
logger = logging.getLogger("schemas.jobs")

Step = TypeVar("Step", bound=Callable[..., Any])

# start times of the jobs this process is computing, by event name ("TrainedModel dataset=...")
_started: dict[str, float] = {}


def describe_key(key: Mapping[str, Any]) -> str:
    """A short, log-friendly form of a key: function names without module, hashes cut to 8 characters.

    Example: ``dataset=static_loaders:1a2b3c4d model=stacked_core…:9f8e7d6c trainer=…:01234567 seed=1``.
    """
    parts = []
    for role in ("dataset", "model", "trainer"):
        fn, digest = key.get(f"{role}_fn"), key.get(f"{role}_hash")
        if fn is not None or digest is not None:
            parts.append(f"{role}={str(fn).rsplit('.', 1)[-1]}:{str(digest)[:8]}")
    if "seed" in key:
        parts.append(f"seed={key['seed']}")
    rest = {
        k: v for k, v in key.items() if not k.startswith(("dataset_", "model_", "trainer_")) and k != "seed"
    }
    # other tables' functions and hashes (ensemble_hash, mei_fn, mei_hash ...) are shortened the same way
    parts.extend(
        f"{k}={str(v).rsplit('.', 1)[-1] if k.endswith('_fn') else str(v)[:8] if k.endswith('_hash') else v}"
        for k, v in rest.items()
    )
    return " ".join(parts)


def _job(table: Any, key: Mapping[str, Any]) -> str:
    return f"{type(table).__name__} {describe_key(key)}"


def _elapsed(job: str) -> float:
    started = _started.pop(job, None)
    return 0.0 if started is None else time.monotonic() - started


def _failed(job: str, error: BaseException) -> None:
    seconds = _elapsed(job)
    if isinstance(error, TrainingInterrupted):
        logger.info("interrupted %s after %.1f s: checkpoint saved, job released", job, seconds)
    else:
        logger.error("FAILED %s after %.1f s: %s", job, seconds, recorded_error_message(error))


def compute_step(make_compute: Step) -> Step:
    """Decorate a table's ``make_compute``: log ``start``, and the failure when it raises."""

    @functools.wraps(make_compute)
    def step(self, key, *fetched):
        job = _job(self, key)
        _started[job] = time.monotonic()
        logger.info("start %s", job)
        try:
            return make_compute(self, key, *fetched)
        except BaseException as error:
            _failed(job, error)
            raise

    return step  # type: ignore[return-value]


def insert_step(make_insert: Step) -> Step:
    """Decorate a table's ``make_insert``: log ``done`` with the job's duration, or the failure."""

    @functools.wraps(make_insert)
    def step(self, key, *computed):
        job = _job(self, key)
        try:
            result = make_insert(self, key, *computed)
        except BaseException as error:
            _failed(job, error)
            raise
        logger.info("done  %s (%.1f s)", job, _elapsed(job))
        return result

    return step  # type: ignore[return-value]
