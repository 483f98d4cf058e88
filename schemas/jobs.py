"""Running and watching the distributed computation: populate, job status, errors, orphans.

Workers on any number of machines call :func:`populate_all` on the same database; DataJoint's job
reservations make sure no key is computed twice.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from .connection import active_connection, backend_of
from .trained_model import TrainedModel, TrainingProgress, clear_stop, request_stop, stop_requested

logger = logging.getLogger(__name__)

__all__ = [
    "clear_orphaned_reservations",
    "clear_stop",
    "computed_tables",
    "declare_jobs_tables",
    "errors",
    "has_work",
    "ignore_errors",
    "job_status",
    "populate_all",
    "request_stop",
    "retry_errors",
    "running_jobs",
    "stop_requested",
]

#: job states that keep a key from being computed by populate (besides the key being done)
_BLOCKING_STATES = ("reserved", "error", "ignore")

# table instances of the bound schema, reused across polls: an instance caches its key_source,
# its jobs table object and the headings behind them, which DataJoint otherwise reloads (dozens of
# queries) for every new instance. Keyed by (database, id(connection)) so that rebinding rebuilds it.
_table_cache: dict[str, Any] = {"binding": None, "tables": None}


def computed_tables() -> dict[str, Any]:
    """The populated tables in populate order: ``{name: table instance}``.

    The instances are cached for the bound schema and connection (they are unrestricted; restrict
    them with ``&``, which makes new objects). :func:`schemas.activate` to another schema or
    connection makes new ones.
    """
    from ._schema import schema
    from .downstream import DataInfo, NeuronScore, ReadoutParameters

    binding = (schema.database, id(schema.connection))
    tables = _table_cache["tables"]
    if tables is None or _table_cache["binding"] != binding:
        tables = {
            "DataInfo": DataInfo(),
            "TrainedModel": TrainedModel(),
            "NeuronScore": NeuronScore(),
            "ReadoutParameters": ReadoutParameters(),
        }
        _table_cache.update(binding=binding, tables=tables)
    return dict(tables)


def forget_tables() -> None:
    """Drop the cached table instances of :func:`computed_tables` (after dropping the schema)."""
    _table_cache.update(binding=None, tables=None)


def _declared_type(table, attribute: str) -> str:
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
            return _declared_type(parent, parent_attribute)
    return heading_attribute.type


def declare_jobs_tables() -> list[str]:
    """Create the jobs table of every computed table now (DataJoint creates them lazily otherwise).

    :func:`schemas.activate` calls this under its server-side lock: workers that populate a fresh
    schema at the same time would otherwise race to create the same jobs table (``DuplicateError``
    on its index). Key columns are declared with the core types of the tables that introduce them
    (``seed : int32``): DataJoint's own definition uses the SQL type read back from the database and
    logs "Native type 'integer' is used in attribute 'seed'" for every jobs table it creates.

    Returns:
        The names of the tables whose jobs table was created here.
    """
    from datajoint.jobs import Job

    created = []
    for name, table in computed_tables().items():
        job = Job(table)
        if not job.is_declared:
            lines = []
            for line in job.definition.splitlines():
                attribute, _, sql_type = (part.strip() for part in line.partition(" : "))
                if sql_type and attribute in table.primary_key:
                    line = f"    {attribute} : {_declared_type(table, attribute)}"
                lines.append(line)
            job._definition = "\n".join(lines)
            job.declare()
            created.append(name)
        table._jobs = job
    return created


def has_work(table, restriction=None) -> bool:
    """Whether ``table.populate(restriction, reserve_jobs=True)`` may find a key to compute.

    One COUNT query: keys of the key source (restricted) that are neither computed nor reserved,
    failed or ignored in the jobs table. Pending jobs scheduled for later count as work (populate
    then finds none), so this never hides work from a worker.
    """
    from datajoint.condition import Not

    todo = table._jobs_to_do(_restrict(restriction)) - table.proj()
    blocked = table.jobs & f"status in ({', '.join(repr(s) for s in _BLOCKING_STATES)})"
    return bool(todo.restrict(Not(blocked), semantic_check=False))


def _restrict(restriction) -> tuple:
    return () if restriction is None else (restriction,)


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
    idle poll costs four COUNT queries.

    Returns:
        ``{table name: {"success_count": int, "error_list": [...]}}``; ``"interrupted": True`` is
        added to a table's entry when a stop request ended it (later tables are then skipped).
    """
    results: dict[str, dict] = {}
    for name, table in computed_tables().items():
        if stop_requested():
            break
        if reserve_jobs and not has_work(table, restriction):
            # an idle poll costs one COUNT per table instead of a job refresh and a pending scan
            results[name] = {"success_count": 0, "error_list": []}
            continue
        result = table.populate(
            *_restrict(restriction),
            reserve_jobs=reserve_jobs,
            max_calls=max_calls,
            suppress_errors=suppress_errors,
            display_progress=display_progress,
        )
        results[name] = result
    return results


def _live_connection_ids() -> set[int]:
    """Connection ids the server knows now (MySQL process list ids / PostgreSQL backend pids)."""
    conn = active_connection()
    if backend_of(conn) == "postgresql":
        rows = conn.query("SELECT pid FROM pg_stat_activity").fetchall()
    else:
        rows = conn.query("SELECT ID FROM information_schema.PROCESSLIST").fetchall()
    return {int(row[0]) for row in rows}


def clear_orphaned_reservations() -> int:
    """Re-pend reserved jobs whose database connection no longer exists (their worker died).

    A job's ``connection_id`` is the reserving session's id (MySQL ``CONNECTION_ID()``, PostgreSQL
    backend pid); a worker that was killed loses its connection, so its reservation is orphaned.
    Live workers' reservations are left alone whatever their age.

    Returns:
        The number of jobs put back into the queue.
    """
    live = _live_connection_ids()
    count = 0
    for table in computed_tables().values():
        jobs = table.jobs
        if not jobs.is_declared:
            continue
        for row in (jobs & "status='reserved'").to_dicts():
            if int(row["connection_id"]) in live:
                continue
            key = {k: row[k] for k in jobs.primary_key}
            (jobs & key).delete_quick()
            jobs.insert1({**key, "status": "pending", "priority": int(row["priority"])})
            count += 1
            logger.info(
                "re-pended orphaned job %s of %s (host %s, pid %s)",
                key,
                type(table).__name__,
                row["host"],
                row["pid"],
            )
    return count


def job_status() -> pd.DataFrame:
    """Per populated table: rows done and jobs pending, reserved, in error and ignored.

    Returns:
        DataFrame indexed by table name with columns ``done``, ``remaining`` (keys not yet
        computed), ``pending``, ``reserved``, ``error``, ``ignore``.
    """
    rows = []
    for name, table in computed_tables().items():
        remaining, total = table.progress()
        counts = table.jobs.progress()
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
    """Trained models being trained now: keys, host, pid, reservation time, latest epoch and validation correlation.

    Returns:
        One row per reserved TrainedModel job (empty DataFrame with these columns when none).
    """
    jobs = TrainedModel().jobs
    columns = [
        *TrainedModel().primary_key,
        "host",
        "pid",
        "connection_id",
        "reserved_time",
        "epoch",
        "val_correlation",
    ]
    rows = []
    for job in (jobs & "status='reserved'").to_dicts():
        key = {k: job[k] for k in TrainedModel().primary_key}
        progress = (TrainingProgress() & key).to_dicts(order_by="epoch DESC", limit=1)
        latest = progress[0] if progress else {}
        rows.append(
            {
                **key,
                "host": job["host"],
                "pid": job["pid"],
                "connection_id": job["connection_id"],
                "reserved_time": job["reserved_time"],
                "epoch": latest.get("epoch"),
                "val_correlation": latest.get("val_correlation"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def errors(table: str | None = None) -> pd.DataFrame:
    """Jobs that failed: table, key, error message, host, pid, time.

    Args:
        table: one table name (``"TrainedModel"``...), or None for all.
    """
    frames = []
    for name, instance in _selected(table).items():
        rows = (instance.jobs & "status='error'").to_dicts()
        for row in rows:
            row.pop("error_stack", None)
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
    count = 0
    for instance in _selected(table).values():
        failed = instance.jobs & "status='error'"
        count += len(failed)
        failed.delete_quick()
    return count


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
        failed = instance.jobs & "status='error'"
        if restriction is not None:
            failed = failed & restriction
        for key in failed.keys():
            instance.jobs.ignore(key)
            count += 1
    return count
