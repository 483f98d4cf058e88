"""Stopping a running training cleanly: the stop request, SIGTERM while training, and its exception.

A stop request (:func:`request_stop`, from a worker's signal thread, a SIGTERM during training or
a test) makes the training callback save a checkpoint and end training at the end of the epoch;
the training table then raises :class:`TrainingInterrupted`, which ends ``populate``, and puts the
job back into the queue, so that the next worker resumes from the checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from ._dj_compat import PopulateStop

__all__ = ["TrainingInterrupted", "clear_stop", "request_stop", "sigterm_requests_stop", "stop_requested"]

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


class TrainingInterrupted(PopulateStop):
    """Training stopped on request; the job is released, nothing is inserted.

    A :class:`~schemas._dj_compat.PopulateStop` (a ``SystemExit``) so that DataJoint's populate
    loop ends instead of starting the next key.
    """


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[None]:
    """While inside, SIGTERM requests a stop (checkpoint at the epoch end) instead of exiting.

    DataJoint's ``populate`` installs a SIGTERM handler that raises ``SystemExit`` in the middle of
    an epoch; this replaces it for the duration of a training, and puts it back afterwards. Only
    the main thread can install signal handlers: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
    try:
        yield
    finally:
        # None: the previous handler was not installed from Python (the default action)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
