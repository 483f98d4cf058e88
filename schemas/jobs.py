"""Running and watching the distributed computation: populate, job status, errors, orphans.

Workers on any number of machines call :func:`populate_all` on the same database; DataJoint's job
reservations make sure no key is computed twice.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from . import _dj_compat
from .binding import computed_tables
from .connection import active_connection
from .leases import lease_states, release_held, server_now
from .reconnect import is_connection_lost, reconnect
from .requeue import release_orphaned_jobs
from .stopping import clear_stop, request_stop, stop_requested
from .training import TrainingTable

logger = logging.getLogger(__name__)

__all__ = [
    "clear_orphaned_reservations",
    "clear_stop",
    "computed_tables",
    "errors",
    "has_work",
    "ignore_errors",
    "job_status",
    "populate_all",
    "recover_connection",
    "request_stop",
    "retry_errors",
    "running_jobs",
    "stop_requested",
]


def has_work(table, restriction=None) -> bool:
    """Whether ``table.populate(restriction, reserve_jobs=True)`` may find a key to compute.

    One COUNT query: keys of the key source (restricted) that are neither computed nor reserved,
    failed or ignored in the jobs table. Pending jobs scheduled for later count as work (populate
    then finds none), so this never hides work from a worker.
    """
    return bool(_dj_compat.unblocked_keys(table, restriction))


def populate_all(
    restriction=None,
    reserve_jobs: bool = True,
    max_calls: int | None = None,
    suppress_errors: bool = True,
    display_progress: bool = False,
) -> dict[str, dict]:
    """Populate DataInfo, TrainedModel, NeuronScore and ReadoutParameters, in that order.

    Args:
        restriction: limits the keys (a dict, a query such as ``Experiments.experiment_keys(name)``,
            or anything DataJoint accepts as a restriction); None means everything.
        reserve_jobs: use the jobs tables so that concurrent workers split the work.
        max_calls: at most this many keys per table.
        suppress_errors: record errors in the jobs tables and go on (False: raise the first one).
        display_progress: show progress bars.

    With ``reserve_jobs`` a table is populated only when :func:`has_work` finds keys for it, so an
    idle poll costs four COUNT queries. Each job logs its start and end
    (:mod:`schemas.job_events`).

    Returns:
        ``{table name: {"success_count": int, "error_list": [...]}}``; ``"interrupted": True`` is
        added to a table's entry when a stop request ended it (later tables are then skipped).
    """
    results: dict[str, dict] = {}
    restrictions = () if restriction is None else (restriction,)
    for name, table in computed_tables().items():
        if stop_requested():
            break
        if reserve_jobs and not has_work(table, restriction):
            # an idle poll costs one COUNT per table instead of a job refresh and a pending scan
            results[name] = {"success_count": 0, "error_list": []}
            continue
        try:
            results[name] = table.populate(
                *restrictions,
                reserve_jobs=reserve_jobs,
                max_calls=max_calls,
                suppress_errors=suppress_errors,
                display_progress=display_progress,
            )
        finally:
            if reserve_jobs:
                release_held(table)  # a job populate could not close goes back to the queue
    return results


def recover_connection(error: BaseException | None = None) -> bool:
    """Reopen the active connection when ``error`` says it was lost (or, without one, when it is dead).

    The worker calls this before retrying a failed database call: DataJoint does not reconnect
    on PostgreSQL by itself (:mod:`schemas.reconnect`).

    Returns:
        True when a new connection was opened; False when none was needed or the server cannot be
        reached yet (the next retry tries again).
    """
    conn = active_connection()
    if (error is None or not is_connection_lost(error)) and _dj_compat.connection_alive(conn):
        return False
    try:
        reconnect(conn)
    except Exception as failure:  # the server is not back yet
        logger.info("reconnect failed: %s", str(failure).strip().splitlines()[:1])
        return False
    return True


def clear_orphaned_reservations() -> int:
    """Re-pend reserved jobs whose lease expired: no heartbeat for ``SYSID_LEASE_SECONDS`` (their worker died).

    Live workers' reservations are left alone whatever their age and whoever owns them (see
    :mod:`schemas.leases`).

    Returns:
        The number of jobs put back into the queue.
    """
    return release_orphaned_jobs(computed_tables().values(), active_connection())


def job_status() -> pd.DataFrame:
    """Per populated table: rows done and jobs pending, reserved, in error and ignored.

    Returns:
        DataFrame indexed by table name with columns ``done``, ``remaining`` (keys not yet
        computed), ``pending``, ``reserved``, ``error``, ``ignore``.
    """
    rows = []
    for name, table in computed_tables().items():
        remaining, total = table.progress()
        counts = _dj_compat.count_jobs(table)
        rows.append(
            {
                "table": name,
                "done": total - remaining,
                "remaining": remaining,
                **{status: counts[status] for status in ("pending", "reserved", "error", "ignore")},
            }
        )
    return pd.DataFrame(rows).set_index("table")


def running_jobs() -> pd.DataFrame:
    """Models reserved for training: keys, host, pid, heartbeat, lease state, latest epoch and validation correlation.

    ``lease`` tells whether the worker is alive (see :func:`schemas.leases.lease_states`):
    ``alive`` (recent heartbeat), ``late`` (no heartbeat for a while: cannot tell yet),
    ``expired`` (presumed dead: the next sweep re-pends the job), ``unknown``. ``heartbeat_age_s``
    is measured with the database server's clock.

    Returns:
        One row per reserved job of every training table (empty DataFrame with these columns when none).
    """
    columns: list[str] = []
    rows = []
    now = server_now(active_connection())
    for table in computed_tables().values():
        if not isinstance(table, TrainingTable):
            continue
        key_names = list(table.primary_key)
        columns += [name for name in key_names if name not in columns]
        for job in _dj_compat.job_rows(table, "reserved"):
            key = {k: job[k] for k in key_names}
            progress = (table.progress_table() & key).to_dicts(order_by="epoch DESC", limit=1)
            latest = progress[0] if progress else {}
            ((age, state),) = lease_states([job["reserved_time"]], now)
            rows.append(
                {
                    **key,
                    "host": job["host"],
                    "pid": job["pid"],
                    "lease": state,
                    "heartbeat_age_s": age,
                    "epoch": latest.get("epoch"),
                    "val_correlation": latest.get("val_correlation"),
                }
            )
    columns += ["host", "pid", "lease", "heartbeat_age_s", "epoch", "val_correlation"]
    return pd.DataFrame(rows, columns=columns)


def errors(table: str | None = None) -> pd.DataFrame:
    """Jobs that failed: table, key, error message, host, pid, time.

    Args:
        table: one table name (``"TrainedModel"``...), or None for all.
    """
    frames = []
    for name, instance in _selected(table).items():
        rows = _dj_compat.job_rows(instance, "error")
        for row in rows:
            row["table"] = name
        if rows:
            frames.append(pd.DataFrame(rows))
    if not frames:
        return pd.DataFrame(columns=["table", "error_message", "host", "pid", "completed_time"])
    return pd.concat(frames, ignore_index=True)


def _selected(table: str | None) -> dict[str, Any]:
    tables = computed_tables()
    if table is None:
        return tables
    if table not in tables:
        raise ValueError(f"unknown table {table!r}: choose one of {sorted(tables)}")
    return {table: tables[table]}


def retry_errors(table: str | None = None) -> int:
    """Delete error records so the next populate retries those keys.

    Args:
        table: one table name, or None for all.

    Returns:
        How many error records were cleared.
    """
    return sum(_dj_compat.delete_jobs(instance, "error") for instance in _selected(table).values())


def ignore_errors(table: str | None = None, restriction=None) -> int:
    """Mark failed jobs as ignored: populate skips them until :func:`retry_errors`-like deletion.

    Args:
        table: one table name, or None for all.
        restriction: further restricts the failed jobs (e.g. a key dict).

    Returns:
        How many jobs were marked.
    """
    count = 0
    for instance in _selected(table).values():
        for row in _dj_compat.job_rows(instance, "error", restriction):
            _dj_compat.ignore_job(instance, _dj_compat.job_key(instance, row))
            count += 1
    return count
