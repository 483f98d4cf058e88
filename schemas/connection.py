"""The database connection: which server (from :mod:`schemas.settings`), the active connection, locks.

Connection settings come from the environment (``DJ_HOST``, ``DJ_USER``, ``DJ_PASS``, ``DJ_PORT``,
``DJ_BACKEND``; see the README's "Settings" table). Without ``DJ_HOST`` the embedded PostgreSQL
server of :mod:`schemas.embedded` is started (or reused) and used through its socket folder. Table
names get a prefix (``SYSID_SCHEMA_PREFIX``) so several pipelines (or test runs) share one server.

This module imports no table: binding the tables is :mod:`schemas.binding`'s job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _dj_compat, embedded
from ._schema import SCHEMA_SUFFIX
from .settings import check_schema_prefix, current_settings

__all__ = [
    "activation_lock",
    "active_connection",
    "active_prefix",
    "active_settings",
    "apply_store_config",
    "backend_of",
    "clear_active",
    "connect",
    "connection_settings_from_env",
    "schema_name",
    "set_active",
]

_BACKEND_ARGUMENTS = {
    "mysql": "mysql",
    "mariadb": "mysql",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}

# the active connection, the settings it was opened with and the prefix; set by activate()
_state: dict[str, Any] = {"connection": None, "settings": None, "prefix": None}


def connection_settings_from_env(backend: str | None = None) -> dict[str, Any]:
    """Return ``{"host", "port", "user", "password", "backend"}`` for the configured database.

    Args:
        backend: ``"mysql"``, ``"postgresql"`` or ``"embedded"`` (start/reuse the embedded server
            even when ``DJ_HOST`` is set); default: ``DJ_BACKEND`` when ``DJ_HOST`` is set (MySQL when
            unset), else embedded.

    Raises:
        ValueError: unknown backend; :class:`schemas.settings.SettingsError` for a malformed
            variable (e.g. ``DJ_HOST`` set without ``DJ_USER``).
    """
    if backend is not None and backend != "embedded" and backend not in _BACKEND_ARGUMENTS:
        raise ValueError(f"backend must be 'mysql', 'postgresql' or 'embedded', got {backend!r}")
    settings = current_settings()
    if backend == "embedded" or settings.uses_embedded:
        server = embedded.start()
        return {k: server[k] for k in ("host", "port", "user", "password", "backend")}
    chosen = _BACKEND_ARGUMENTS[backend] if backend else settings.backend
    return {
        "host": settings.host,
        "port": settings.port or (5432 if chosen == "postgresql" else 3306),
        "user": settings.user,
        "password": settings.password,
        "backend": chosen,
    }


def apply_store_config() -> None:
    """Merge ``DJ_STORES`` into DataJoint's store config: it may be set after DataJoint was imported."""
    import datajoint as dj

    stores = current_settings().stores
    if stores:
        dj.config.stores = {**dict(dj.config.stores), **stores}


def connect(settings: dict[str, Any]):
    """The active connection when it was opened with ``settings`` and is alive, else a new one."""
    conn = _state["connection"]
    if conn is not None and _state["settings"] == settings:
        if _dj_compat.connection_alive(conn):
            return conn
        _dj_compat.reopen_connection(conn)  # same object: the bound tables keep working
        return conn
    return _dj_compat.open_connection(
        settings["host"], settings["user"], settings["password"], settings["port"], settings["backend"]
    )


def backend_of(conn) -> str:
    """``"postgresql"`` or ``"mysql"`` (MySQL and MariaDB): the SQL dialect of a DataJoint connection."""
    return _dj_compat.adapter_backend(conn)


@contextlib.contextmanager
def activation_lock(conn, name: str, timeout: int = 120) -> Iterator[None]:
    """A server-side lock named after the schema (PostgreSQL advisory lock / MySQL GET_LOCK).

    Raises:
        TimeoutError: MySQL could not take the lock within ``timeout`` seconds.
    """
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
    if prefix is None:
        prefix = _state["prefix"] or current_settings().schema_prefix
    return check_schema_prefix(prefix, SCHEMA_SUFFIX)


def set_active(conn, settings: dict[str, Any], prefix: str) -> None:
    """Record ``conn`` (opened with ``settings``) as the active connection, bound under ``prefix``."""
    _state.update(connection=conn, settings=settings, prefix=prefix)


def clear_active() -> None:
    """Forget the bound prefix (after the schema was dropped); the connection stays open for reuse."""
    _state["prefix"] = None


def active_prefix() -> str | None:
    """The prefix the tables are bound under, or None."""
    return _state["prefix"]


def active_settings() -> dict[str, Any]:
    """The settings (``host``, ``port``, ``user``, ``password``, ``backend``) of the active connection.

    Raises:
        RuntimeError: :func:`schemas.activate` has not been called in this process.
    """
    if _state["settings"] is None:
        raise RuntimeError("no database is active: call schemas.activate() first")
    return dict(_state["settings"])


def active_connection():
    """Return the active connection.

    Raises:
        RuntimeError: :func:`schemas.activate` has not been called in this process.
    """
    conn = _state["connection"]
    if conn is None:
        raise RuntimeError("no database is active: call schemas.activate() first")
    return conn
