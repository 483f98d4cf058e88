"""Surviving a dropped database connection: which errors are transient, reconnecting, retrying.

A server restart (``sysid db stop; sysid db start``), a ``KILL CONNECTION`` or a network blip
closes a worker's connection. DataJoint reconnects by itself only on MySQL and only outside a
transaction; on PostgreSQL the driver's "connection already closed" passes through untranslated
and every later query fails the same way. :func:`retry_transient` runs a database call, and on a
transient failure reopens the connection (:func:`reconnect`) and tries again with a randomised,
growing back-off; any other error is raised at once.

Other code (the worker loop, the training callback, supervisors) calls :func:`retry_transient`
instead of writing its own loop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from . import _dj_compat

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ATTEMPTS",
    "is_connection_lost",
    "is_transient",
    "reconnect",
    "retry_transient",
]

T = TypeVar("T")

#: attempts of :func:`retry_transient` by default: back-offs of about 1, 2, 4, 8, 16, 30, 30 s (~90 s)
DEFAULT_ATTEMPTS = 8
#: longest single wait between attempts, seconds
MAX_WAIT = 30.0

#: MySQL/MariaDB client and server error codes that mean the connection is gone
_MYSQL_LOST = {
    0,  # interface error: the socket is closed
    1053,  # server shutdown in progress
    1927,  # MariaDB: connection was killed
    2003,  # cannot connect
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection (system error)
    4031,  # disconnected by the server (idle timeout)
}
#: MySQL lock errors worth retrying on the same connection (deadlock, lock wait timeout)
_MYSQL_LOCK = {1205, 1213}
#: PostgreSQL SQLSTATEs: connection exceptions (class 08), shutdown (57P01-57P03)
_PG_LOST_PREFIXES = ("08", "57P")
#: PostgreSQL serialization failure and deadlock
_PG_LOCK = {"40001", "40P01"}


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _mysql_code(error: BaseException) -> int | None:
    args = getattr(error, "args", ())
    if type(error).__module__.startswith("pymysql") and args and isinstance(args[0], int):
        return args[0]
    return None


def is_connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the database connection is gone.

    Recognises DataJoint's ``LostConnectionError``, psycopg2's ``InterfaceError`` and
    ``OperationalError`` (closed connection, server restarting, cannot connect) and pymysql's
    lost-connection codes (2006, 2013, 1927 ...).
    """
    for cause in _causes(error):
        name = type(cause).__name__
        module = type(cause).__module__
        if name == "LostConnectionError":
            return True
        if module.startswith("psycopg2"):
            code = getattr(cause, "pgcode", None)
            if name in ("InterfaceError", "OperationalError") and (
                code is None or code.startswith(_PG_LOST_PREFIXES)
            ):
                return True
            if code is not None and code.startswith(_PG_LOST_PREFIXES):
                return True
        code = _mysql_code(cause)
        if code is not None and code in _MYSQL_LOST:
            return True
        if name == "InterfaceError" and module.startswith("pymysql"):
            return True
        if isinstance(cause, (ConnectionError, BrokenPipeError)):
            return True
    return False


def is_transient(error: BaseException) -> bool:
    """Whether retrying may succeed: a lost connection (:func:`is_connection_lost`) or a deadlock /
    lock timeout / serialization failure."""
    if is_connection_lost(error):
        return True
    for cause in _causes(error):
        if _mysql_code(cause) in _MYSQL_LOCK:
            return True
        if getattr(cause, "pgcode", None) in _PG_LOCK:
            return True
    return False


def reconnect(conn) -> None:
    """Reopen ``conn`` (a DataJoint connection) in place: same object, new server session.

    Every table bound to ``conn`` uses the new session at once. A transaction that was open is
    gone with the old session (the server rolled it back). The connection's ``connection_id``
    becomes the new session's id.

    Raises:
        The driver's error when the server cannot be reached (yet).
    """
    _dj_compat.reopen_connection(conn)
    logger.info("reconnected to the database (new connection id %s)", conn.connection_id)


def retry_transient(
    call: Callable[[], T],
    conn,
    attempts: int = DEFAULT_ATTEMPTS,
    what: str = "database call",
    sleep: Callable[[float], Any] = time.sleep,
    on_retry: Callable[[BaseException, int], Any] | None = None,
) -> T:
    """Run ``call()``; on a transient database error reconnect ``conn`` and try again.

    Args:
        call: the database work (no arguments). It is run again from the start after a failure,
            so it must be safe to repeat (one transaction, or idempotent statements).
        conn: the DataJoint connection ``call`` uses; reopened after a lost connection.
        attempts: how many times ``call`` runs at most (>= 1).
        what: named in the log lines ("saving the checkpoint").
        sleep: waits between attempts (a stop event's ``wait`` ends the wait early).
        on_retry: called with ``(error, attempt)`` before each wait (e.g. to count reconnects).

    Returns:
        What ``call`` returned.

    Raises:
        ValueError: ``attempts`` < 1.
        The last error when every attempt failed, or at once an error that is not transient.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt == attempts:
                raise
            wait = min(2.0 ** (attempt - 1), MAX_WAIT) * random.uniform(0.75, 1.25)
            logger.warning(
                "%s failed (%s: %s); retry %d/%d in %.1f s",
                what,
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "",
                attempt,
                attempts - 1,
                wait,
            )
            if on_retry is not None:
                on_retry(error, attempt)
            sleep(wait)
            if is_connection_lost(error) or not _dj_compat.connection_alive(conn):
                try:
                    reconnect(conn)
                except Exception as reconnect_error:  # the server is not back yet: next attempt
                    logger.info("reconnect failed: %s", str(reconnect_error).strip().splitlines()[0:1])
    raise AssertionError("unreachable")  # pragma: no cover
