"""The worker loop: train every pending model, one job at a time, until nothing is left or told to stop.

Any number of workers on any number of machines share the work through DataJoint's job
reservations: each call of ``schemas.populate_all(reserve_jobs=True, max_calls=1)`` reserves one
pending key per table, so no key is trained twice. Run one worker process per GPU
(``sysid worker --device cuda:0``, ``sysid worker --device cuda:1`` ...).

SIGTERM or Ctrl-C asks the running training to stop: it saves a checkpoint at the end of the
current epoch and releases its job, which another worker then resumes; the worker exits 0. So does
reaching ``max_runtime`` (a batch system's time limit), and ``max_idle`` empty polls end a worker
that has nothing left to do. Database calls that fail and jobs that fail for a passing reason (a
lost connection, a deadlock: :mod:`sysid.retry`) are retried a bounded number of times.

Each job's start and end are logged by the tables' own make steps (:mod:`schemas.job_events`).
This module imports no database code at import time: ``sysid worker`` blocks its stop signals
(:class:`StopSignal`) before DataJoint or torch start threads.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .retry import RetryBudget, backoff_seconds, is_transient

__all__ = [
    "StopSignal",
    "WorkerOptions",
    "configure_device",
    "limit_cpu_threads",
    "parse_duration",
    "request_stop_from_signal",
    "run_worker",
]

log = logging.getLogger("sysid.worker")

#: a worker gives up after this many database failures in a row
MAX_CONSECUTIVE_FAILURES = 5
#: a job that failed for a passing reason (lost connection, deadlock) is re-pended at most this often
#: by one worker
MAX_TRANSIENT_RETRIES = 3

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?"
)


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration: ``"90"`` / ``"90s"``, ``"45m"``, ``"2h30m"``, ``"1d"`` or ``"[D-]HH:MM:SS"``.

    The ``[D-]HH:MM:SS`` and ``MM:SS`` forms are SLURM's ``--time`` formats.

    Raises:
        ValueError: the text is none of these forms, or the duration is not positive.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        seconds = None
        clock = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))(?::(\d+))?", value)
        if clock:
            days, first, second, third = clock.groups()
            if third is None:  # MM:SS, or D-HH:MM
                parts = (int(first), int(second), 0) if days else (0, int(first), int(second))
            else:
                parts = (int(first), int(second), int(third))
            seconds = int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
        elif value and (match := _DURATION.fullmatch(value)) and any(match.groups()):
            d, h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = d * 86400 + h * 3600 + m * 60 + s
        if seconds is None:
            raise ValueError(
                f"invalid duration {text!r}: use seconds (90, 90s), 45m, 2h30m, 1d or [D-]HH:MM:SS"
            )
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


@dataclass
class WorkerOptions:
    """Settings of one worker process.

    Attributes:
        device: "auto", "cpu", "cuda" or "cuda:K" (see :func:`configure_device`).
        once: exit when no pending job is left (otherwise sleep and look again, for a service).
        max_jobs: stop after training this many models (None: no limit).
        restrict: train only the combinations of this experiment name (see ``Experiments``).
        sleep: seconds to wait between polls when idle (ignored with ``once``).
        threads: torch CPU threads for this process (None: leave torch's default).
        clear_interval: seconds between sweeps for reservations left by dead workers.
        max_runtime: seconds after which the worker stops as on SIGTERM (the running training
            checkpoints at its epoch end and releases its job); None: no limit.
        max_idle: exit after this many polls in a row that found no job (None: never; ``once`` is
            ``max_idle=1``).
        transient_retries: how often this worker re-pends a job that failed for a passing reason.
        tag: a label for the log lines (e.g. the SLURM job and array task, or a supervisor's slot).
    """

    device: str = "auto"
    once: bool = False
    max_jobs: int | None = None
    restrict: str | None = None
    sleep: float = 30.0
    threads: int | None = None
    clear_interval: float = 300.0
    max_runtime: float | None = None
    max_idle: int | None = None
    transient_retries: int = MAX_TRANSIENT_RETRIES
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.max_runtime is not None and self.max_runtime <= 0:
            raise ValueError(f"max_runtime must be > 0 seconds, got {self.max_runtime}")
        if self.max_idle is not None and self.max_idle < 1:
            raise ValueError(f"max_idle must be >= 1, got {self.max_idle}")
        if self.transient_retries < 0:
            raise ValueError(f"transient_retries must be >= 0, got {self.transient_retries}")
        if self.max_jobs is not None and self.max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {self.max_jobs}")
        if self.sleep < 0:
            raise ValueError(f"sleep must be >= 0 seconds, got {self.sleep}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


class StopSignal:
    """Turns SIGTERM/SIGINT into a stop request that DataJoint's own SIGTERM handler cannot pre-empt.

    DataJoint's ``populate`` installs a SIGTERM handler that raises ``SystemExit`` in the middle of a
    training, recording an error instead of a checkpoint. So the signals are blocked in every thread
    and a small thread receives them with ``sigwait``: no Python-level handler ever runs, and the
    worker stops at the next epoch end. Create this before torch starts its own threads, which
    inherit the signal mask.

    Args:
        on_stop: called once (in the signal thread) when the first signal arrives.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_stop: Callable[[int], None]):
        self.event = threading.Event()
        self._on_stop = on_stop
        self._uses_sigwait = hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait")
        if self._uses_sigwait:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
            threading.Thread(target=self._wait, name="sysid-signals", daemon=True).start()
        else:  # Windows: plain handlers (DataJoint's SIGTERM handler wins during populate there)
            for sig in self.SIGNALS:
                signal.signal(sig, lambda signum, frame: self._received(signum))

    @property
    def stopping(self) -> bool:
        """True once a stop signal has arrived."""
        return self.event.is_set()

    def _wait(self) -> None:
        while True:
            signum = signal.sigwait(self.SIGNALS)
            self._received(signum)

    def _received(self, signum: int) -> None:
        if self.event.is_set():
            # an impatient second signal: leave now; the reservation dies with the connection and
            # the next worker's sweep (clear_orphaned_reservations) re-pends the job
            log.warning("%s again: exiting without waiting for the epoch to end", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(130)
        self.event.set()
        self._on_stop(signum)


def configure_device(device: str) -> str:
    """Make ``device`` the only device this process's trainings can see; return a description.

    Trainer configs name a device generically ("cuda", "auto"), and the config is part of the
    model's hash, so the worker chooses the GPU through ``CUDA_VISIBLE_DEVICES`` instead: with
    ``--device cuda:2`` the trainer's "cuda" is physical GPU 2. Call before CUDA is initialised.

    Args:
        device: "auto" (leave the visible devices alone), "cpu" (hide all GPUs), "cuda" or "cuda:K".

    Raises:
        ValueError: a malformed device, or a CUDA device that this machine does not have.
    """
    if device == "auto":
        return "auto (cuda when available, else cpu)"
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise ValueError(f"invalid device {device!r}: use auto, cpu, cuda or cuda:K (K = GPU index)")
    if match[1] is not None:
        index = int(match[1])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:  # already restricted (e.g. by a scheduler): K indexes that list
            ids = [v.strip() for v in visible.split(",") if v.strip()]
            if index >= len(ids):
                raise ValueError(
                    f"device {device!r}: CUDA_VISIBLE_DEVICES={visible!r} lists {len(ids)} GPU(s)"
                )
            os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return f"{device} ({torch.cuda.get_device_name(0)})"


#: environment variables read by the OpenMP / BLAS runtimes when torch (or numpy) loads them
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_cpu_threads(threads: int) -> None:
    """Run this process's CPU work on ``threads`` threads (one worker per core: ``threads=1``).

    Sets the OpenMP/MKL/OpenBLAS thread variables (effective for libraries loaded later; start a
    worker with them in its environment to cover everything), torch's intra-op threads and, when
    torch has not run parallel work yet, its inter-op threads.

    Raises:
        ValueError: ``threads`` < 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # inter-op threads can only be set once, before any parallel work
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())


def _calls_done(result: Any) -> int:
    """Number of keys computed by one ``populate_all`` call, whatever shape its summary has."""
    if result is None:
        return 0
    if isinstance(result, bool):
        return int(result)
    if isinstance(result, int):
        return result
    if isinstance(result, Mapping):
        if "success_count" in result:
            return int(result["success_count"]) + len(result.get("error_list") or [])
        return sum(_calls_done(v) for v in result.values())
    if isinstance(result, (list, tuple)):
        return sum(_calls_done(v) for v in result)
    return 0


def _restriction(schemas: Any, experiment: str | None) -> Any:
    if experiment is None:
        return None
    return schemas.Experiments.experiment_keys(experiment)


def _pending(schemas: Any) -> int:
    """Pending jobs left (over all tables), or -1 when the schemas layer cannot tell."""
    try:
        status = schemas.job_status()
    except Exception:  # a status query failing must not stop the worker
        return -1
    if "pending" in getattr(status, "columns", ()):
        return int(status["pending"].fillna(0).sum())
    return -1


def run_worker(options: WorkerOptions, schemas: Any | None = None, stop: StopSignal | None = None) -> int:
    """Populate every computed table, one key at a time, until done or stopped.

    Args:
        options: see :class:`WorkerOptions`.
        schemas: the activated ``schemas`` package (default: activate from the environment).
        stop: the signal catcher; default one is created here (create it earlier, before torch
            starts threads, when possible).

    Returns:
        The number of keys this worker computed (successes and recorded errors).
    """
    started = time.monotonic()
    if stop is None:
        stop = StopSignal(lambda signum: request_stop_from_signal(schemas, signum))
    device = configure_device(options.device)
    if options.threads is not None:
        limit_cpu_threads(options.threads)
    if schemas is None:
        from .database import activate

        schemas = activate()
    _STATE["schemas"] = schemas
    restriction = _restriction(schemas, options.restrict)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    log.info(
        "worker started on %s (pid %d, device %s%s%s%s)",
        _hostname(),
        os.getpid(),
        device,
        f", CUDA_VISIBLE_DEVICES={visible}" if visible is not None and options.device != "cpu" else "",
        f", experiment {options.restrict!r}" if options.restrict else "",
        f", {options.tag}" if options.tag else "",
    )
    deadline = _Deadline(options.max_runtime, started, schemas, stop)
    last_clear = -float("inf")
    done = trained = 0
    failures = idle_polls = 0
    transient = RetryBudget(options.transient_retries)

    def stopping() -> bool:
        # the schemas layer may have received the stop request itself (e.g. its own handler)
        return stop.stopping or deadline.reached or bool(schemas.stop_requested())

    def nap(seconds: float) -> None:
        # wakes at once on a signal, within a second at the deadline
        end = time.monotonic() + seconds
        while not stopping() and (left := end - time.monotonic()) > 0:
            stop.event.wait(min(left, 1.0))

    try:
        while not stopping():
            try:
                if time.monotonic() - last_clear >= options.clear_interval:
                    cleared = schemas.clear_orphaned_reservations()
                    if cleared:
                        log.info("released %d job(s) reserved by workers that are gone", cleared)
                    last_clear = time.monotonic()
                result = schemas.populate_all(
                    restriction=restriction, reserve_jobs=True, max_calls=1, suppress_errors=True
                )
                retried = _retry_transient_errors(result, transient)
            except Exception as err:  # the database, not a model: errors in make() are recorded, not raised
                failures += 1
                if failures > MAX_CONSECUTIVE_FAILURES:
                    raise
                # workers that start together race to create DataJoint's job tables, and servers
                # restart: retry after a randomised back-off instead of dying
                wait = backoff_seconds(failures)
                log.warning(
                    "database call failed (%s: %s); retry %d/%d in %.1f s",
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                    failures,
                    MAX_CONSECUTIVE_FAILURES,
                    wait,
                )
                nap(wait)
                schemas.recover_connection(err)  # a dropped connection is reopened before the retry
                continue
            failures = 0
            calls = _calls_done(result)
            done += calls
            # --max-jobs counts trained models (scoring a model is part of its job)
            trained += _calls_done(result.get("TrainedModel")) if isinstance(result, Mapping) else calls
            if stopping():
                break
            if options.max_jobs is not None and trained >= options.max_jobs:
                log.info("reached --max-jobs %d", options.max_jobs)
                break
            if calls or retried:
                idle_polls = 0
                continue
            idle_polls += 1
            if options.once or (options.max_idle is not None and idle_polls >= options.max_idle):
                pending = _pending(schemas)
                log.info(
                    "nothing left to do%s%s; exiting",
                    "" if options.once else f" after {idle_polls} empty poll(s)",
                    f" ({pending} job(s) reserved by other workers or scheduled later)"
                    if pending > 0
                    else "",
                )
                break
            log.debug("idle: sleeping %.0f s", options.sleep)
            nap(options.sleep)
    finally:
        deadline.cancel()
    if deadline.reached:
        log.info(
            "reached --max-runtime %.0f s after %d job(s); the interrupted job (if any) was "
            "checkpointed and released",
            options.max_runtime,
            done,
        )
    elif stopping():
        log.info(
            "stopped by signal after %d job(s); the interrupted job (if any) was checkpointed and released",
            done,
        )
    else:
        log.info("worker finished: %d job(s)", done)
    return done


class _Deadline:
    """Asks the running training to stop (as SIGTERM does) when ``max_runtime`` seconds have passed."""

    def __init__(self, max_runtime: float | None, started: float, schemas: Any, stop: StopSignal):
        self.reached = False
        self._timer: threading.Timer | None = None
        if max_runtime is None:
            return
        self._schemas, self._stop = schemas, stop
        remaining = max(0.0, started + max_runtime - time.monotonic())
        self._timer = threading.Timer(remaining, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        if self._stop.stopping:
            return
        log.warning(
            "--max-runtime reached: finishing the current epoch, saving a checkpoint and releasing the job"
        )
        self.reached = True
        # not the signal event: a scheduler's SIGTERM after this must still count as the first signal
        # (a second one exits at once, without waiting for the checkpoint); idle naps wake within 1 s
        self._schemas.request_stop()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _retry_transient_errors(result: Any, budget: RetryBudget) -> int:
    """Re-pend the jobs that this populate call recorded as failed for a passing reason.

    A lost connection or a deadlock while storing a model is recorded as the job's error like a
    bug in the model would be; those jobs go back into the queue (each at most ``budget.limit``
    times from this worker), the others stay for ``sysid errors``.

    Returns:
        The number of jobs re-pended.
    """
    if not isinstance(result, Mapping):
        return 0
    failed = {name: entry.get("error_list") for name, entry in result.items() if isinstance(entry, Mapping)}
    if not any(failed.values()):
        return 0
    from schemas import _dj_compat
    from schemas.jobs import computed_tables

    tables = computed_tables()
    count = 0
    for name, errors in failed.items():
        if not errors or name not in tables:
            continue
        table = tables[name]
        mine = {"host": platform.node(), "pid": os.getpid()}  # as DataJoint records a reservation
        for row in _dj_compat.job_rows(table, "error", mine):
            key = _dj_compat.job_key(table, row)
            if not is_transient(row.get("error_message")):
                continue
            subject = (name, tuple(sorted(key.items())))
            if not budget.allow(subject):
                log.warning(
                    "job %s of %s failed again (%s); left as an error after %d retries",
                    key,
                    name,
                    row.get("error_message"),
                    budget.limit,
                )
                continue
            _dj_compat.repend_job(table, key, priority=row.get("priority"))
            count += 1
            log.warning(
                "job %s of %s failed for a passing reason (%s); re-pended (retry %d/%d)",
                key,
                name,
                row.get("error_message"),
                budget.used(subject),
                budget.limit,
            )
    return count


# the activated schemas package, for the signal thread (it may fire before activation finished)
_STATE: dict[str, Any] = {"schemas": None}


def request_stop_from_signal(schemas: Any, signum: int) -> None:
    """Log the signal and ask the schemas layer to stop the running training at the epoch end.

    Args:
        schemas: the activated ``schemas`` package, or None when the signal came before activation.
        signum: the signal number received.
    """
    log.warning(
        "%s received: finishing the current epoch, saving a checkpoint and releasing the job",
        signal.Signals(signum).name,
    )
    target = schemas or _STATE["schemas"]
    if target is None:
        import schemas as target
    target.request_stop()


def _hostname() -> str:
    import socket

    return socket.gethostname()
