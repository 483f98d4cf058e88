"""Every place the pipeline relies on DataJoint 2.3 internals, each behind one small function.

DataJoint's public API covers tables, queries, ``populate`` and the jobs-table queries
(``Table.jobs.pending`` ...). The worker needs a few things beyond it: declaring jobs tables
ahead of time, the key query ``populate`` uses, reading and rewriting jobs-table rows, how
``populate`` records an exception and reacts to ``SystemExit``, the adapter behind a connection.
They live here so that a DataJoint upgrade that changes one fails its test in
``tests/test_dj_compat.py`` instead of a worker in production. Nothing else in the project
touches a name with a leading underscore of DataJoint's, nor its jobs-table columns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import datajoint as dj
from datajoint.jobs import Job

__all__ = [
    "SIGTERM_MESSAGE",
    "NativeTypeWarningFilter",
    "PopulateStop",
    "adapter_backend",
    "count_jobs",
    "declare_jobs_table",
    "default_job_priority",
    "delete_jobs",
    "ignore_job",
    "job_rows",
    "jobs_declared",
    "keys_to_do",
    "open_connection",
    "connection_alive",
    "interval_sql",
    "jobs_descriptor",
    "quote_identifier",
    "read_stored_object",
    "reopen_connection",
    "recorded_error_message",
    "repend_job",
    "stopped_job_keys",
    "unbind_schema",
    "unblocked_keys",
]

#: job states that keep a key from being computed by populate (besides the key being done)
BLOCKING_STATES = ("reserved", "error", "ignore")
#: the message of the SystemExit that DataJoint's populate raises from its SIGTERM handler
SIGTERM_MESSAGE = "SIGTERM received"
#: how DataJoint's warnings about column types read back from the database begin
NATIVE_TYPE_WARNING = "Native type"


# ------------------------------------------------------------------------------ connections
def open_connection(host: str, user: str, password: str, port: int, backend: str) -> dj.Connection:
    """A new DataJoint connection (``backend``: ``"mysql"`` or ``"postgresql"``)."""
    return dj.Connection(host, user, password, port, backend=backend)


def adapter_backend(conn) -> str:
    """``"mysql"`` (MySQL and MariaDB) or ``"postgresql"``: the SQL dialect of a DataJoint connection."""
    return conn.adapter.backend


def quote_identifier(conn) -> Callable[[str], str]:
    """The function that quotes an SQL identifier for the connection's backend."""
    return conn.adapter.quote_identifier


def reopen_connection(conn) -> None:
    """Open a new server session for the DataJoint connection ``conn`` (same object, in place).

    DataJoint's own ``connect()`` keeps the old ``connection_id`` and the transaction flag; a
    session that died inside a transaction would refuse every later transaction ("Nested
    connections are not supported"). Both are reset here.
    """
    old = getattr(conn, "_conn", None)
    if old is not None:
        try:
            old.close()
        except Exception:  # already closed by the server
            pass
    conn.connect()
    conn._in_transaction = False
    conn.connection_id = conn.adapter.get_connection_id(conn._conn)


def connection_alive(conn) -> bool:
    """Whether ``conn``'s server session answers a query now.

    DataJoint's ``is_connected`` is always True on PostgreSQL (its adapter's ``ping`` returns
    False instead of raising), so a dead session would be reused; this runs ``SELECT 1``.
    """
    try:
        conn.query("SELECT 1", reconnect=False).fetchall()
    except Exception:
        return False
    return True


def interval_sql(conn, seconds: float) -> str:
    """SQL for an interval of ``seconds`` (``INTERVAL 5 SECOND`` / ``INTERVAL '5 seconds'``)."""
    return conn.adapter.interval_expr(seconds, "second")


def unbind_schema(schema: dj.Schema) -> None:
    """Detach an activated schema object from its database, so it can be activated elsewhere.

    DataJoint refuses to activate an activated schema for another database.
    """
    schema.database = None


# ------------------------------------------------------------------------------- jobs tables
def declare_jobs_table(table, job_class: type = Job) -> bool:
    """Create ``table``'s jobs table now (DataJoint creates it lazily) and attach it to ``table``.

    ``job_class``: DataJoint's ``Job`` or a subclass of it (``schemas.leases.LeasedJob``) that
    ``table.jobs`` returns from now on.

    Key columns are declared with the core types of the tables that introduce them
    (``seed : int32``): DataJoint's own definition uses the SQL type read back from the database
    and logs "Native type 'integer' is used in attribute 'seed'" for every jobs table it creates.

    Returns:
        True when the jobs table was created here, False when it existed.
    """
    job = job_class(table)
    created = False
    if not job.is_declared:
        lines = []
        for line in job.definition.splitlines():
            attribute, _, sql_type = (part.strip() for part in line.partition(" : "))
            if sql_type and attribute in table.primary_key:
                line = f"    {attribute} : {declared_type(table, attribute)}"
            lines.append(line)
        job._definition = "\n".join(lines)
        job.declare()
        created = True
    table._jobs = job  # what `table.jobs` returns from now on (no lookup per access)
    return created


def declared_type(table, attribute: str) -> str:
    """The type ``attribute`` was declared with in the table that introduces it (following foreign keys).

    DataJoint reads an inherited attribute back with its SQL type only (``integer``, ``int``), not
    the core type of the parent's definition (``int32``).
    """
    heading_attribute = table.heading[attribute]
    if heading_attribute.original_type:
        return heading_attribute.original_type
    for parent, props in table.parents(primary=True, as_objects=True, foreign_key_info=True):
        parent_attribute = props.get("attr_map", {}).get(attribute)
        if parent_attribute is not None:
            return declared_type(parent, parent_attribute)
    return heading_attribute.type


class jobs_descriptor:
    """A ``jobs`` class attribute like DataJoint's, returning ``job_class(table)`` (declared when missing).

    DataJoint's ``AutoPopulate.jobs`` creates a plain ``Job``; a table class that defines
    ``jobs = jobs_descriptor(LeasedJob)`` gets its subclass instead, also in ``populate``.
    """

    def __init__(self, job_class: type):
        self.job_class = job_class

    def __get__(self, obj, objtype=None):
        if obj is None:
            obj = objtype()
        if not isinstance(obj._jobs, self.job_class):
            declare_jobs_table(obj, self.job_class)
        return obj._jobs


def jobs_declared(table) -> bool:
    """Whether ``table``'s jobs table exists."""
    return table.jobs.is_declared


def keys_to_do(table, restriction=None):
    """The keys ``populate(restriction)`` considers: the key source, restricted (done keys included)."""
    return table._jobs_to_do(() if restriction is None else (restriction,))


def unblocked_keys(table, restriction=None):
    """Keys of the key source (restricted) that are neither computed nor reserved, failed or ignored."""
    todo = keys_to_do(table, restriction) - table.proj()
    blocked = table.jobs & f"status in ({', '.join(repr(s) for s in BLOCKING_STATES)})"
    return todo.restrict(dj.Not(blocked), semantic_check=False)


def job_rows(table, status: str, restriction=None) -> list[dict[str, Any]]:
    """Rows of ``table``'s jobs table in one status (``pending``, ``reserved``, ``error``, ``ignore``).

    Each row holds the job's key and DataJoint's columns ``status``, ``priority``, ``host``,
    ``pid``, ``connection_id`` (the reserving session's server id), ``reserved_time``,
    ``completed_time``, ``error_message`` (``error_stack`` is left out).
    """
    jobs = table.jobs & f"status='{status}'"
    if restriction is not None:
        jobs = jobs & restriction
    rows = jobs.to_dicts()
    for row in rows:
        row.pop("error_stack", None)
    return rows


def job_key(table, row: Mapping[str, Any]) -> dict[str, Any]:
    """The key part of a jobs-table row."""
    return {name: row[name] for name in table.jobs.primary_key}


def count_jobs(table) -> dict[str, int]:
    """Jobs per status: ``{"pending", "reserved", "success", "error", "ignore", "total"}``."""
    return table.jobs.progress()


def default_job_priority() -> int:
    """The priority DataJoint gives new jobs (``dj.config.jobs.default_priority``)."""
    return int(dj.config.jobs.default_priority)


def repend_job(table, key: Mapping[str, Any], priority: int | None = None) -> None:
    """Put one job back into the queue as ``pending`` (whatever its state was)."""
    jobs = table.jobs
    key = {name: key[name] for name in jobs.primary_key}
    (jobs & key).delete_quick()
    priority = default_job_priority() if priority is None else int(priority)
    # two workers that stop together both re-pend every interrupted job (release_interrupted_jobs):
    # the second insert of the same key must not fail the second worker's release of its own job
    jobs.insert1({**key, "status": "pending", "priority": priority}, skip_duplicates=True)


def delete_jobs(table, status: str, restriction=None) -> int:
    """Delete ``table``'s jobs in ``status`` (restricted); return how many there were."""
    jobs = table.jobs & f"status='{status}'"
    if restriction is not None:
        jobs = jobs & restriction
    count = len(jobs)
    jobs.delete_quick()
    return count


def ignore_job(table, key: Mapping[str, Any]) -> None:
    """Mark one job ``ignore``: populate skips it until the row is deleted."""
    table.jobs.ignore(dict(key))


def recorded_error_message(error: BaseException) -> str:
    """The ``error_message`` DataJoint's populate records for ``error``: ``"<Class>: <message>"``."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def stopped_job_keys(table, stop_type: type[BaseException]) -> list[dict[str, Any]]:
    """Keys of jobs that ended with an exception of class ``stop_type`` (recorded as errors)."""
    jobs = table.jobs & "status='error'" & f"error_message LIKE '{stop_type.__name__}%'"
    return jobs.keys()


# ---------------------------------------------------------------------------------- populate
class PopulateStop(SystemExit):
    """Raised inside ``make`` to end the whole ``populate`` call, not only the current key.

    DataJoint's populate records any exception of a key as the job's error and moves to the next
    key, except a ``SystemExit``, which it records and re-raises even with ``suppress_errors``.
    (Its own SIGTERM handler, installed for the duration of ``populate(reserve_jobs=True)``,
    raises ``SystemExit("SIGTERM received")`` in the same way.)
    """


# ------------------------------------------------------------------------------ object store
def read_stored_object(value: Any) -> bytes:
    """The bytes of an ``<object@store>`` value as fetched (an ``ObjectRef``, or raw bytes)."""
    return value.read() if hasattr(value, "read") else bytes(value)


# ------------------------------------------------------------------------------------ logging
class NativeTypeWarningFilter(logging.Filter):
    """Drops DataJoint's "Native type ... is used" warnings, which it logs on every connection
    for the column types it reads back from PostgreSQL (a detail users cannot act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NATIVE_TYPE_WARNING)


def quiet_native_type_warnings(loggers: Iterable[logging.Logger] | None = None) -> None:
    """Install :class:`NativeTypeWarningFilter` on DataJoint's logger (once)."""
    for logger in loggers or (logging.getLogger("datajoint"),):
        if not any(isinstance(f, NativeTypeWarningFilter) for f in logger.filters):
            logger.addFilter(NativeTypeWarningFilter())
