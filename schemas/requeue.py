"""Putting jobs back into the queue: jobs stopped on request, and jobs of workers that died."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from . import _dj_compat
from .connection import backend_of
from .leases import expire_leases
from .stopping import TrainingInterrupted

logger = logging.getLogger(__name__)

__all__ = ["live_connection_ids", "release_interrupted_jobs", "release_orphaned_jobs"]


def release_interrupted_jobs(table) -> int:
    """Turn jobs of ``table`` that ended with :class:`TrainingInterrupted` back into pending jobs.

    DataJoint records the stop as the job's error; the training resumes from its checkpoint when
    a worker takes the job again.

    Returns:
        How many jobs were re-pended.
    """
    keys = _dj_compat.stopped_job_keys(table, TrainingInterrupted)
    for key in keys:
        _dj_compat.repend_job(table, key)
    return len(keys)


def live_connection_ids(conn) -> set[int]:
    """Connection ids the server knows now (MySQL process list ids / PostgreSQL backend pids)."""
    if backend_of(conn) == "postgresql":
        rows = conn.query("SELECT pid FROM pg_stat_activity").fetchall()
    else:
        rows = conn.query("SELECT ID FROM information_schema.PROCESSLIST").fetchall()
    return {int(row[0]) for row in rows}


def release_orphaned_jobs(tables: Iterable, conn) -> int:
    """Re-pend reserved jobs of ``tables`` whose worker stopped renewing its lease (it died or hung).

    A job is orphaned when its heartbeat (``reserved_time``, renewed by the worker that holds it) is
    older than ``SYSID_LEASE_SECONDS`` by the server's clock (:func:`schemas.leases.expire_leases`).
    Live workers' jobs are left alone whoever runs the sweep: no process list, connection id or
    ``PROCESS`` privilege is involved.

    Returns:
        The number of jobs put back into the queue.
    """
    return expire_leases(tables, conn)
