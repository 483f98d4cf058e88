"""Putting jobs back into the queue: jobs stopped on request, and jobs of workers that died."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from . import _dj_compat
from .connection import backend_of
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
    """Re-pend reserved jobs of ``tables`` whose database connection no longer exists (their worker died).

    A job's ``connection_id`` is the reserving session's id (MySQL ``CONNECTION_ID()``, PostgreSQL
    backend pid); a worker that was killed loses its connection, so its reservation is orphaned.
    Live workers' reservations are left alone whatever their age.

    Returns:
        The number of jobs put back into the queue.
    """
    live = live_connection_ids(conn)
    count = 0
    for table in tables:
        if not _dj_compat.jobs_declared(table):
            continue
        for row in _dj_compat.job_rows(table, "reserved"):
            if int(row["connection_id"]) in live:
                continue
            key = _dj_compat.job_key(table, row)
            _dj_compat.repend_job(table, key, priority=row["priority"])
            count += 1
            logger.info(
                "re-pended orphaned job %s of %s (host %s, pid %s)",
                key,
                type(table).__name__,
                row["host"],
                row["pid"],
            )
    return count
