"""Choosing a database and binding the pipeline's tables to it.

Connection settings come from the environment, as DataJoint reads them: ``DJ_HOST``, ``DJ_USER``,
``DJ_PASS``, ``DJ_PORT`` and ``DJ_BACKEND`` (``mysql`` or ``postgresql``). Without ``DJ_HOST`` the
embedded PostgreSQL server of :mod:`schemas.embedded` is started (or reused) and used through its
socket folder. Table names get a prefix (``SYSID_SCHEMA_PREFIX``, default ``"sysid_"``) so several
pipelines (or test runs) share one server.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

__all__ = [
    "activate",
    "active_connection",
    "backend_of",
    "connection_settings_from_env",
    "drop_all",
    "schema_name",
]

DEFAULT_PREFIX = "sysid_"
_BACKENDS = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql", "postgres": "postgresql"}

# the active connection and prefix; set by activate(), cleared by drop_all()
_state: dict[str, Any] = {"connection": None, "prefix": None}


def connection_settings_from_env(backend: str | None = None) -> dict[str, Any]:
    """Return ``{"host", "port", "user", "password", "backend"}`` for the configured database.

    Args:
        backend: ``"mysql"``, ``"postgresql"`` or ``"embedded"`` (start/reuse the embedded server
            even when ``DJ_HOST`` is set); default: ``DJ_BACKEND`` when ``DJ_HOST`` is set (MySQL when
            unset), else embedded.

    Raises:
        ValueError: unknown backend, or ``DJ_HOST`` set without ``DJ_USER``.
    """
    if backend is not None and backend != "embedded" and backend not in _BACKENDS:
        raise ValueError(f"backend must be 'mysql', 'postgresql' or 'embedded', got {backend!r}")
    host = os.environ.get("DJ_HOST")
    if backend == "embedded" or not host:
        from . import embedded

        settings = embedded.start()
        return {k: settings[k] for k in ("host", "port", "user", "password", "backend")}
    env_backend = os.environ.get("DJ_BACKEND", "mysql").lower()
    if env_backend not in _BACKENDS:
        raise ValueError(f"DJ_BACKEND must be 'mysql' or 'postgresql', got {env_backend!r}")
    chosen = _BACKENDS[backend or env_backend]
    user = os.environ.get("DJ_USER")
    if not user:
        raise ValueError("DJ_HOST is set but DJ_USER is not: set DJ_USER (and DJ_PASS, empty allowed)")
    port = os.environ.get("DJ_PORT")
    return {
        "host": host,
        "port": int(port) if port else (5432 if chosen == "postgresql" else 3306),
        "user": user,
        "password": os.environ.get("DJ_PASS", ""),
        "backend": chosen,
    }


def _apply_store_config() -> None:
    """Re-read ``DJ_STORES`` (JSON) into DataJoint's config: it may be set after import."""
    import datajoint as dj

    raw = os.environ.get("DJ_STORES")
    if not raw:
        return
    try:
        stores = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"DJ_STORES is not valid JSON: {error}") from None
    if not isinstance(stores, dict):
        raise ValueError("DJ_STORES must be a JSON object: {store_name: {protocol, location, ...}}")
    dj.config.stores = {**dict(dj.config.stores), **stores}


def backend_of(conn) -> str:
    """``"postgresql"`` or ``"mysql"`` (MySQL and MariaDB): the SQL dialect of a DataJoint connection."""
    return "postgresql" if "postgres" in type(conn.adapter).__name__.lower() else "mysql"


@contextlib.contextmanager
def _activation_lock(conn, name: str, timeout: int = 120):
    """A server-side lock named after the schema (PostgreSQL advisory lock / MySQL GET_LOCK)."""
    postgres = backend_of(conn) == "postgresql"
    lock = f"sysid_activate_{name}"[:64]
    if postgres:
        conn.query("SELECT pg_advisory_lock(hashtext(%s))", args=(lock,))
    else:
        got = conn.query("SELECT GET_LOCK(%s, %s)", args=(lock, timeout)).fetchone()[0]
        if got != 1:
            raise TimeoutError(f"could not lock schema {name!r} for activation within {timeout} s")
    try:
        yield
    finally:
        if postgres:
            conn.query("SELECT pg_advisory_unlock(hashtext(%s))", args=(lock,))
        else:
            conn.query("SELECT RELEASE_LOCK(%s)", args=(lock,))


def schema_name(prefix: str | None = None) -> str:
    """Return the database schema name for ``prefix`` (default: the active or configured prefix)."""
    from ._schema import SCHEMA_SUFFIX

    if prefix is None:
        prefix = _state["prefix"] or os.environ.get("SYSID_SCHEMA_PREFIX", DEFAULT_PREFIX)
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
    name = f"{prefix}{SCHEMA_SUFFIX}"
    if not name.replace("_", "a").isalnum() or name != name.lower() or not name[0].isalpha():
        raise ValueError(
            f"schema prefix {prefix!r} must be lowercase letters, digits and '_', starting with a letter"
        )
    return name


def activate(prefix: str | None = None, *, backend: str | None = None):
    """Connect and bind all pipeline tables to the schema ``<prefix>pipeline`` (created if missing).

    Also creates the SQL views (:mod:`schemas.views`) and the jobs tables of the computed tables
    (:func:`schemas.jobs.declare_jobs_tables`), under a server-side lock, so that workers starting
    together on a fresh schema do not race to create them. Calling it again with another prefix or
    backend rebinds the tables.

    Args:
        prefix: schema-name prefix; default ``SYSID_SCHEMA_PREFIX`` or ``"sysid_"``.
        backend: see :func:`connection_settings_from_env`.

    Returns:
        The DataJoint connection (``conn.query(sql)`` runs plain SQL).
    """
    import datajoint as dj

    from . import configs, downstream, jobs, trained_model, views  # noqa: F401  (declare the table classes)
    from ._schema import schema

    if prefix is None:
        prefix = os.environ.get("SYSID_SCHEMA_PREFIX", DEFAULT_PREFIX)
    name = schema_name(prefix)
    settings = connection_settings_from_env(backend)
    _apply_store_config()
    conn = _state["connection"]
    same_server = conn is not None and getattr(conn, "_sysid_settings", None) == settings
    if not same_server or not conn.is_connected:
        conn = dj.Connection(
            settings["host"],
            settings["user"],
            settings["password"],
            settings["port"],
            backend=settings["backend"],
        )
        conn._sysid_settings = settings
    if schema.database == name and schema.connection is conn and same_server:
        _state["prefix"] = prefix
        return conn  # already bound here: nothing to declare
    if schema.database is not None and (schema.database != name or schema.connection is not conn):
        # rebinding: DataJoint refuses to activate an activated schema for another database
        schema.database = None
    with _activation_lock(conn, name):
        # several workers may activate a fresh schema at once: declare tables one process at a time
        schema.activate(name, connection=conn)
        views.create_views(conn, name)
        jobs.declare_jobs_tables()
    _state["connection"] = conn
    _state["prefix"] = prefix
    return conn


def active_connection():
    """Return the active connection.

    Raises:
        RuntimeError: :func:`activate` has not been called in this process.
    """
    conn = _state["connection"]
    if conn is None:
        raise RuntimeError("no database is active: call schemas.activate() first")
    return conn


def drop_all() -> None:
    """Drop the active pipeline schema with all its tables, views, jobs and rows (no prompt).

    Used by tests and by the CLI's demo reset. Deletes the data for good.
    """
    from ._schema import schema

    active_connection()
    if schema.database is not None and schema.exists:
        schema.drop(prompt=False)
    schema.database = None
    _state["prefix"] = None
    from .jobs import forget_tables

    forget_tables()
