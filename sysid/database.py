"""Connecting the CLI to the pipeline database and describing the connection to users."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from schemas.settings import current_settings

__all__ = ["activate", "export_lines", "quiet_datajoint", "uses_embedded"]


def quiet_datajoint() -> None:
    """Silence DataJoint's import-time notices in CLI processes.

    DataJoint warns "No datajoint.json found" and about a deprecated module on import; in a CLI whose
    configuration comes from the environment these are noise on every command.
    """
    import warnings

    warnings.filterwarnings("ignore", message="No datajoint.json found")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="datajoint")
    warnings.filterwarnings("ignore", message="MariaDB is not officially supported")
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import logging

    from schemas import _dj_compat  # imports datajoint, which resets its logger's level: first

    # "connected to ..." on every command is noise; warnings stay
    logging.getLogger("datajoint").setLevel(logging.WARNING)
    _dj_compat.quiet_native_type_warnings()


def uses_embedded() -> bool:
    """True when no ``DJ_HOST`` is configured, i.e. the embedded PostgreSQL server is used."""
    return current_settings().uses_embedded


def activate(prefix: str | None = None):
    """Connect to the configured database and bind the pipeline tables; return the ``schemas`` package.

    The database comes from the ``DJ_*`` settings, or the embedded server (``SYSID_HOME``) when
    ``DJ_HOST`` is unset (see the README's "Settings").

    Args:
        prefix: the schema prefix; default ``SYSID_SCHEMA_PREFIX``.

    Raises:
        ConnectionError: the database cannot be reached (the message says which one and how to fix it).
    """
    quiet_datajoint()
    import schemas

    try:
        schemas.activate(prefix)
    except (ValueError, TypeError):
        raise
    except Exception as err:  # driver errors (pymysql, psycopg2, datajoint) have no common base
        settings = current_settings()
        where = "the embedded PostgreSQL server" if settings.uses_embedded else f"DJ_HOST={settings.host}"
        raise ConnectionError(
            f"cannot connect to {where}: {type(err).__name__}: {err}. "
            "Check DJ_HOST/DJ_USER/DJ_PASS, or unset DJ_HOST to use the embedded server."
        ) from err
    return schemas


def export_lines(settings: Mapping[str, Any]) -> list[str]:
    """Shell lines that point DataJoint (and so every ``sysid`` command) at a database.

    Args:
        settings: ``{"host", "port", "user", "password", "backend"}`` (e.g. from
            ``schemas.embedded.connection_settings()``).

    Returns:
        ``export NAME=value`` lines, shell-quoted, for ``eval "$(sysid db url)"``.
    """
    values = {
        "DJ_HOST": settings["host"],
        "DJ_PORT": settings["port"],
        "DJ_USER": settings["user"],
        "DJ_PASS": settings.get("password", ""),
        "DJ_BACKEND": settings["backend"],
    }
    return [f"export {name}={shlex.quote(str(value))}" for name, value in values.items()]
