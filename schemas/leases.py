"""Job leases: a reserved job stays a worker's only while that worker keeps renewing it.

The lease model (see the README's "Workers: leases and reconnects"):

* **Reserving** a job (DataJoint's ``Job.reserve``) stamps the job row's ``reserved_time`` with the
  database server's clock and names the worker: ``host``, ``pid`` and ``connection_id``. These
  three, as written at reservation, are the worker's *lease token*; a reconnect (new server
  session) does not change it.
* **Heartbeat**: while the worker holds the job, a thread of the worker process renews
  ``reserved_time`` (server clock) every ``SYSID_LEASE_SECONDS / 5`` seconds over its own
  connection, and the training callback renews it at every epoch. Only rows that still carry the
  token are renewed.
* **Expiry**: a reserved job whose heartbeat is older than ``SYSID_LEASE_SECONDS`` by the server's
  clock is presumed dead; any worker's sweep (:func:`expire_leases`) re-pends it with one
  conditional ``UPDATE`` (a renewal that comes first keeps the job). Nothing reads the server's
  process list: liveness depends neither on connection ids nor on the ``PROCESS`` privilege.
* **Lost lease**: a worker whose job was re-pended or reserved by someone else finds out at its
  next epoch or before inserting (:func:`guard`, under a row lock in the same transaction as the
  write): it stops that job, writes no checkpoint or model, and leaves the job row to its new
  owner (:class:`LeasedJob` records no error or completion over it).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _dj_compat
from .connection import active_settings, backend_of
from .reconnect import is_transient, retry_transient
from .settings import current_settings

logger = logging.getLogger(__name__)

__all__ = [
    "HEARTBEAT_FRACTION",
    "Lease",
    "LeaseLost",
    "LeasedJob",
    "expire_leases",
    "guard",
    "held_lease",
    "held_leases",
    "lease_states",
    "release_held",
    "renew",
    "server_now",
]

#: the heartbeat runs every ``lease seconds * HEARTBEAT_FRACTION``
HEARTBEAT_FRACTION = 0.2
#: a heartbeat older than this many heartbeat intervals is "late" (the worker may be dead)
LATE_INTERVALS = 2.5


class LeaseLost(Exception):
    """This worker's job was re-pended or reserved by another worker: the job is stopped here."""


@dataclass
class Lease:
    """One reserved job held by this process.

    Attributes:
        jobs_table: the jobs table's full SQL name.
        key: the job's key (the jobs table's primary key).
        host, pid, connection_id: the token written at reservation.
        lost: set when a renewal found the job no longer ours.
    """

    jobs_table: str
    key: dict[str, Any]
    host: str
    pid: int
    connection_id: int
    lost: bool = field(default=False, compare=False)
    #: the server's connection settings (``host``, ``port``, ``user``, ``password``, ``backend``)
    server: tuple = field(default=(), compare=False)
    #: ``time.monotonic()`` of the last renewal by the heartbeat (or of the reservation)
    renewed_at: float = field(default_factory=time.monotonic, compare=False)

    def where(self, quote) -> tuple[str, list[Any]]:
        """SQL condition (and its arguments) matching the job row only while it carries this token."""
        parts = [f"{quote(name)}=%s" for name in self.key]
        parts += [f"{quote('status')}='reserved'", f"{quote('host')}=%s", f"{quote('pid')}=%s"]
        parts += [f"{quote('connection_id')}=%s"]
        return " AND ".join(parts), [*self.key.values(), self.host, int(self.pid), int(self.connection_id)]


_held: dict[tuple, Lease] = {}
_held_lock = threading.Lock()


def _registry_key(jobs_table: str, key: Mapping[str, Any]) -> tuple:
    return (jobs_table, tuple(sorted((k, str(v)) for k, v in key.items())))


def held_leases() -> list[Lease]:
    """The leases this process holds now."""
    with _held_lock:
        return list(_held.values())


def held_lease(jobs, key: Mapping[str, Any]) -> Lease | None:
    """This process's lease on ``key`` of the jobs table ``jobs``, or None."""
    pk = {name: key[name] for name in jobs.primary_key}
    with _held_lock:
        return _held.get(_registry_key(jobs.full_table_name, pk))


def _register(lease: Lease) -> None:
    with _held_lock:
        _held[_registry_key(lease.jobs_table, lease.key)] = lease
    _Heartbeat.ensure_running()


def _unregister(lease: Lease) -> None:
    with _held_lock:
        _held.pop(_registry_key(lease.jobs_table, lease.key), None)


# ----------------------------------------------------------------------------- SQL on one lease
def owned(conn, lease: Lease, lock: bool = False) -> bool:
    """Whether the job row still carries ``lease``'s token (``lock``: lock the row until the
    transaction ends, so that no sweep can re-pend it before the caller's write commits)."""
    quote = _dj_compat.quote_identifier(conn)
    where, args = lease.where(quote)
    sql = f"SELECT 1 FROM {lease.jobs_table} WHERE {where}" + (" FOR UPDATE" if lock else "")
    return bool(conn.query(sql, args=args).fetchall())


def renew(conn, lease: Lease) -> bool:
    """Stamp the lease's job row with the server's time now; False when the job is no longer ours."""
    quote = _dj_compat.quote_identifier(conn)
    where, args = lease.where(quote)
    cursor = conn.query(
        f"UPDATE {lease.jobs_table} SET {quote('reserved_time')}=CURRENT_TIMESTAMP(3) WHERE {where}",
        args=args,
    )
    # MySQL counts changed rows only: a renewal within the same millisecond changes nothing
    return cursor.rowcount == 1 or owned(conn, lease)


def _repend_if_owned(conn, lease: Lease) -> bool:
    quote = _dj_compat.quote_identifier(conn)
    where, args = lease.where(quote)
    cursor = conn.query(
        f"UPDATE {lease.jobs_table} SET {quote('status')}='pending', {quote('reserved_time')}=NULL, "
        f"{quote('host')}='', {quote('pid')}=0, {quote('connection_id')}=0 WHERE {where}",
        args=args,
    )
    return cursor.rowcount == 1


# ------------------------------------------------------------------------ the training's side
def guard(table, key: Mapping[str, Any], lock: bool = False) -> None:
    """Raise :class:`LeaseLost` when this process reserved ``key`` of ``table`` and the job is no longer its own.

    Call it before writing anything for the job; with ``lock`` inside the write's transaction
    (the row stays locked until commit). A renewal happens on the way (the job is alive). Does
    nothing for a key this process did not reserve (``populate`` without ``reserve_jobs``).

    Raises:
        LeaseLost: the job was re-pended (lease expired) or reserved by another worker.
    """
    jobs = table.jobs
    lease = held_lease(jobs, key)
    if lease is None:
        return
    conn = table.connection
    alive = owned(conn, lease, lock=True) if lock else renew(conn, lease)
    if lock and alive:
        renew(conn, lease)
    if not alive:
        lease.lost = True
        raise LeaseLost(
            f"job {dict(lease.key)} of {lease.jobs_table} is no longer this worker's "
            "(its lease expired and it was re-pended or taken by another worker): stopping it"
        )


def release_held(table) -> int:
    """Put back into the queue the jobs of ``table`` this process still holds, and stop renewing them.

    Called when ``populate`` ends: a job still held then was interrupted by an error that
    ``populate`` could not record (e.g. the connection dropped in its final transaction). When
    the database cannot be reached the lease is dropped all the same and expires by itself.

    Returns:
        How many jobs were re-pended.
    """
    try:
        jobs_table = table.jobs.full_table_name
    except Exception:  # the connection is gone: nothing can be read; drop the leases of any table
        jobs_table = None
    count = 0
    for lease in held_leases():
        if jobs_table is not None and lease.jobs_table != jobs_table:
            continue
        _unregister(lease)
        try:
            conn = table.connection
            if retry_transient(
                lambda conn=conn, lease=lease: _repend_if_owned(conn, lease),
                conn,
                attempts=4,
                what="re-pending a job",
            ):
                count += 1
                logger.info(
                    "re-pended job %s of %s (the worker could not finish it)", lease.key, lease.jobs_table
                )
        except Exception as error:
            logger.warning("could not re-pend job %s (%s); its lease expires by itself", lease.key, error)
    return count


class LeasedJob(_dj_compat.Job):
    """DataJoint's jobs table with leases: a reservation registers a lease that the heartbeat renews.

    ``complete`` and ``error`` act only on a job row that still carries this worker's token;
    a job that failed because the connection dropped (a transient error) goes back to the queue
    instead of into the errors.
    """

    def reserve(self, key: dict) -> bool:
        """Reserve ``key`` (DataJoint's atomic reserve) and hold its lease."""
        connection_id = self.connection.connection_id
        if not super().reserve(key):
            return False
        pk = {name: key[name] for name in self.primary_key}
        settings = active_settings()
        server = tuple(
            (k, settings[k]) for k in ("host", "port", "user", "password", "backend") if k in settings
        )
        _register(
            Lease(self.full_table_name, pk, platform.node(), os.getpid(), int(connection_id), server=server)
        )
        return True

    def complete(self, key: dict, duration: float | None = None) -> None:
        """Mark the job done (DataJoint: delete its row) when it is still this worker's."""
        lease = held_lease(self, key)
        if lease is not None:
            mine = self._owned(lease)
            _unregister(lease)
            if not mine:
                logger.info("job %s finished here but its row belongs to another worker now", lease.key)
                return
        super().complete(key, duration=duration)

    def _owned(self, lease: Lease) -> bool:
        conn = self.connection
        return retry_transient(lambda: owned(conn, lease), conn, attempts=4, what="checking a job's lease")

    def error(self, key: dict, error_message: str, error_stack: str | None = None) -> None:
        """Record the job's error, unless the job is no longer ours or the error was a dropped connection."""
        lease = held_lease(self, key)
        if lease is None:
            return super().error(key, error_message, error_stack)
        current = sys.exc_info()[1]  # DataJoint calls this while handling the make's exception
        mine = not isinstance(current, LeaseLost) and self._owned(lease)
        _unregister(lease)
        if not mine:
            logger.warning("not recording %r: job %s belongs to another worker now", error_message, lease.key)
            return
        if current is not None and is_transient(current):
            _repend_if_owned(self.connection, lease)
            logger.warning("job %s re-pended after a database failure: %s", lease.key, error_message)
            return
        super().error(key, error_message, error_stack)


# ------------------------------------------------------------------------------ the heartbeat
def heartbeat_interval(lease_seconds: float | None = None) -> float:
    """Seconds between heartbeats for a lease of ``lease_seconds`` (default ``SYSID_LEASE_SECONDS``)."""
    if lease_seconds is None:
        lease_seconds = current_settings().lease_seconds
    return max(0.2, lease_seconds * HEARTBEAT_FRACTION)


class _Heartbeat:
    """The process's heartbeat thread: renews every held lease over a connection of its own."""

    _thread: threading.Thread | None = None
    _lock = threading.Lock()

    @classmethod
    def ensure_running(cls) -> None:
        with cls._lock:
            if cls._thread is not None and cls._thread.is_alive():
                return
            cls._thread = threading.Thread(target=cls._run, name="sysid-heartbeat", daemon=True)
            cls._thread.start()

    @staticmethod
    def _run() -> None:
        connections: dict[tuple, Any] = {}  # one per server the leases are on
        stop = threading.Event()
        while True:
            interval = heartbeat_interval()
            # short naps: a changed SYSID_LEASE_SECONDS or a new lease is seen within a second
            stop.wait(min(interval, 1.0))
            for lease in held_leases():
                if len(lease.server) < 5:
                    continue  # no settings known (not activated through schemas): the epochs renew it
                if time.monotonic() - lease.renewed_at < interval:
                    continue
                lease.renewed_at = time.monotonic()
                try:
                    conn = connections.get(lease.server)
                    if conn is None:
                        settings = dict(lease.server)
                        conn = connections[lease.server] = _dj_compat.open_connection(
                            settings["host"],
                            settings["user"],
                            settings["password"],
                            settings["port"],
                            settings["backend"],
                        )
                    if not renew(conn, lease) and not lease.lost:
                        lease.lost = True
                        logger.debug("heartbeat: job %s is no longer this worker's", lease.key)
                except Exception as error:  # the server is away: a new connection next time
                    logger.info("heartbeat failed (%s: %s); reconnecting", type(error).__name__, error)
                    stale = connections.pop(lease.server, None)
                    try:
                        if stale is not None:
                            stale.close()
                    except Exception:
                        pass


# ----------------------------------------------------------------------------- sweep and status
def server_now(conn):
    """The database server's current time, as a naive datetime comparable with ``reserved_time``."""
    sql = "SELECT LOCALTIMESTAMP(3)" if backend_of(conn) == "postgresql" else "SELECT CURRENT_TIMESTAMP(3)"
    return conn.query(sql).fetchone()[0]


def expire_leases(tables: Iterable, conn, lease_seconds: float | None = None) -> int:
    """Re-pend reserved jobs of ``tables`` whose heartbeat is older than ``lease_seconds`` (server clock).

    Each job is re-pended by one conditional ``UPDATE`` that re-checks the age, so a worker that
    renews its lease at the same moment keeps its job.

    Args:
        tables: the computed tables (their jobs tables are swept).
        conn: the connection to run the sweep on.
        lease_seconds: default ``SYSID_LEASE_SECONDS``.

    Returns:
        The number of jobs put back into the queue.
    """
    if lease_seconds is None:
        lease_seconds = current_settings().lease_seconds
    quote = _dj_compat.quote_identifier(conn)
    expired = (
        f"{quote('status')}='reserved' AND ({quote('reserved_time')} IS NULL OR "
        f"{quote('reserved_time')} < CURRENT_TIMESTAMP(3) - {_dj_compat.interval_sql(conn, lease_seconds)})"
    )
    count = 0
    for table in tables:
        if not _dj_compat.jobs_declared(table):
            continue
        jobs = table.jobs
        for row in (jobs & expired).to_dicts():
            key = _dj_compat.job_key(table, row)
            where = " AND ".join(f"{quote(name)}=%s" for name in key)
            cursor = conn.query(
                f"UPDATE {jobs.full_table_name} SET {quote('status')}='pending', {quote('reserved_time')}=NULL, "
                f"{quote('host')}='', {quote('pid')}=0, {quote('connection_id')}=0 WHERE {where} AND {expired}",
                args=list(key.values()),
            )
            if cursor.rowcount == 1:
                count += 1
                logger.info(
                    "re-pended job %s of %s: no heartbeat for over %g s (host %s, pid %s)",
                    key,
                    type(table).__name__,
                    lease_seconds,
                    row["host"],
                    row["pid"],
                )
    return count


def lease_states(
    reserved_times: Iterable[Any], now, lease_seconds: float | None = None
) -> list[tuple[float | None, str]]:
    """``(heartbeat age in seconds, state)`` for reserved jobs' ``reserved_time`` values.

    States: ``"alive"`` (heartbeat within :data:`LATE_INTERVALS` heartbeat intervals), ``"late"``
    (older, but the lease has not expired: the worker may be dead or stalled; cannot tell yet),
    ``"expired"`` (the worker is presumed dead; the next sweep re-pends the job), ``"unknown"`` (no
    heartbeat time recorded).

    Args:
        reserved_times: the jobs' ``reserved_time`` (server clock).
        now: the server's time (:func:`server_now`).
        lease_seconds: default ``SYSID_LEASE_SECONDS``.
    """
    if lease_seconds is None:
        lease_seconds = current_settings().lease_seconds
    late = min(lease_seconds, LATE_INTERVALS * heartbeat_interval(lease_seconds))
    states = []
    for stamp in reserved_times:
        if stamp is None:
            states.append((None, "unknown"))
            continue
        age = max(0.0, (now - stamp).total_seconds())
        state = "alive" if age <= late else ("late" if age <= lease_seconds else "expired")
        states.append((round(age, 1), state))
    return states
