"""Every setting the pipeline takes from the environment, read in one place and checked.

:func:`current_settings` reads the ``DJ_*`` and ``SYSID_*`` variables into one frozen
:class:`Settings` object; a malformed value raises :class:`SettingsError` naming the variable.
It reads the environment at every call (cheap), so a variable set by a test, a notebook or the demo
is seen at once. :data:`VARIABLES` describes each variable (default, meaning, who reads it); the
README's "Settings" table is written from it (a test keeps them equal).

``pipeline/`` never imports this package: ``pipeline.data.cache`` reads ``SYSID_CACHE_DIR`` itself
(it is listed here, and :attr:`Settings.cache_dir` holds the same value, so that one object shows
every setting).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PREFIX",
    "VARIABLES",
    "Settings",
    "SettingsError",
    "Variable",
    "check_schema_prefix",
    "current_settings",
    "settings_table",
]

#: schema prefix when ``SYSID_SCHEMA_PREFIX`` is unset: tables live in ``sysid_pipeline``
DEFAULT_PREFIX = "sysid_"

#: accepted spellings of ``DJ_BACKEND`` -> the DataJoint backend name
_BACKENDS = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgresql", "postgres": "postgresql"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use (the message names it)."""


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, default, meaning and what uses it (for the README)."""

    name: str
    default: str
    meaning: str
    read_by: str


#: every variable, in the order of the README's "Settings" table
VARIABLES: tuple[Variable, ...] = (
    Variable("DJ_HOST", "unset: the embedded PostgreSQL", "database server host (or a PostgreSQL socket folder)", "schemas.connection, sysid db status"),
    Variable("DJ_USER", "required with `DJ_HOST`", "database user", "schemas.connection"),
    Variable("DJ_PASS", "empty", "database password", "schemas.connection"),
    Variable("DJ_PORT", "3306 (MySQL) / 5432 (PostgreSQL)", "database port", "schemas.connection"),
    Variable("DJ_BACKEND", "`mysql`", "`mysql` (also MariaDB) or `postgresql`", "schemas.connection"),
    Variable("DJ_STORES", "none", 'object stores as JSON, e.g. `{"models": {"protocol": "file", "location": "/data/models"}}`: model states over 8 MiB go to the store `models`', "schemas.connection"),
    Variable("DJ_IGNORE_CONFIG_FILE", "unset", "`true`: DataJoint ignores a stray `datajoint.json` (set in the containers)", "DataJoint itself"),
    Variable("SYSID_SCHEMA_PREFIX", f"`{DEFAULT_PREFIX}`", "tables live in the schema `<prefix>pipeline`", "schemas.connection, sysid demo (default `sysid_demo_`)"),
    Variable("SYSID_HOME", "the user data folder", "the embedded server's data live in `$SYSID_HOME/pgdata`", "schemas.embedded"),
    Variable("SYSID_CACHE_DIR", "the user cache folder", "consolidated dataset cache; the compiled CPU kernels go to its `kernels` folder", "pipeline.data.cache, pipeline.kernels"),
    Variable("SYSID_CPU_KERNELS", "on", "`0`: train on the CPU with PyTorch's own operations instead of the compiled kernels (depthwise-convolution weight gradient, Gaussian readout sampling)", "pipeline.kernels"),
    Variable("CC", "`cc`", "the C compiler that builds the CPU kernels on first use (none found: PyTorch's operations)", "pipeline.kernels"),
    Variable("SYSID_CHECKPOINT_EVERY", "1", "a running training saves a resumable checkpoint every N epochs", "schemas.training"),
    Variable("SYSID_LEASE_SECONDS", "180", "a reserved job whose worker has not renewed its lease (heartbeat every fifth of this, server clock) for this long is re-pended by any worker", "schemas.leases"),
    Variable("SYSID_FABRIKANT", "the `Fabrikant` of the database user, else the OS user", "who registers configs (the default `Fabrikant` row)", "schemas.configs"),
    Variable("SYSID_EMAIL", "`user@host`", "the default fabrikant's e-mail", "schemas.configs"),
    Variable("SYSID_AFFILIATION", "empty", "the default fabrikant's affiliation", "schemas.configs"),
    Variable("SYSID_GIT_COMMIT", "the checkout's `HEAD`", "the commit stored with each trained model (for installs without `.git`)", "schemas.run_info"),
    Variable("SYSID_ALLOWED_FN_PREFIXES", "none: only `pipeline.*` (and the sensorium/neuralpredictors paths that map to it)", "more module prefixes whose functions configs may name, comma-separated (e.g. `mylab.models,mylab.data`); registration and workers refuse every other function", "pipeline.builder, schemas.configs, workers"),
    Variable("SYSID_DEBUG", "off", "`1`: CLI errors show their traceback", "sysid.cli"),
    Variable("SYSID_DATA_DIR", "`./data`", "host folder mounted read-only at `/data` in the containers", "docker-compose.yml"),
    Variable("SYSID_WORKERS_PER_GPU", "1", "worker processes per GPU of the compose `worker` service (`sysid worker --gpus all --per-gpu N`)", "docker-compose.yml"),
    Variable("MYSQL_ROOT_PASSWORD", "required in `.env`", "the MySQL server's root password", "docker-compose.yml"),
    Variable("DB_PORT", "3306", "host port of the MySQL container, for SQL clients", "docker-compose.yml"),
)  # fmt: skip


def settings_table() -> str:
    """The README's "Settings" table (Markdown), written from :data:`VARIABLES`."""
    lines = ["| variable | default | what it sets | used by |", "|---|---|---|---|"]
    lines += [f"| `{v.name}` | {v.default} | {v.meaning} | {v.read_by} |" for v in VARIABLES]
    return "\n".join(lines)


def check_schema_prefix(prefix: Any, suffix: str = "pipeline") -> str:
    """Return the schema name ``<prefix><suffix>`` after checking that the prefix makes a valid name.

    Raises:
        TypeError: ``prefix`` is not a string.
        ValueError: the name would hold other than lowercase letters, digits and ``_``, or not
            start with a letter.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
    name = f"{prefix}{suffix}"
    if not name.replace("_", "a").isalnum() or name != name.lower() or not name[0].isalpha():
        raise ValueError(
            f"schema prefix {prefix!r} must be lowercase letters, digits and '_', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """The environment's settings, checked (see :data:`VARIABLES` for each variable).

    Attributes:
        host: ``DJ_HOST``; None selects the embedded PostgreSQL server.
        user: ``DJ_USER`` (required with ``host``).
        password: ``DJ_PASS`` (empty when unset).
        port: ``DJ_PORT``; None means the backend's default port.
        backend: ``DJ_BACKEND`` as DataJoint names it: ``"mysql"`` or ``"postgresql"``.
        stores: ``DJ_STORES`` parsed: ``{store name: {protocol, location, ...}}``.
        schema_prefix: ``SYSID_SCHEMA_PREFIX``.
        home: ``SYSID_HOME`` (None: the user data folder).
        cache_dir: ``SYSID_CACHE_DIR`` (None: the user cache folder; read by ``pipeline.data.cache``).
        checkpoint_every: ``SYSID_CHECKPOINT_EVERY`` (>= 1).
        lease_seconds: ``SYSID_LEASE_SECONDS`` (> 0): how long a reserved job survives without a
            heartbeat (see :mod:`schemas.leases`).
        fabrikant, email, affiliation: ``SYSID_FABRIKANT``, ``SYSID_EMAIL``, ``SYSID_AFFILIATION``.
        git_commit: ``SYSID_GIT_COMMIT``.
        debug: ``SYSID_DEBUG``.
        allowed_fn_prefixes: ``pipeline`` plus ``SYSID_ALLOWED_FN_PREFIXES``: the modules whose
            functions configs may name (``pipeline.builder.allowed_fn_prefixes``).
    """

    host: str | None = None
    user: str | None = None
    password: str = ""
    port: int | None = None
    backend: str = "mysql"
    stores: Mapping[str, Any] = field(default_factory=dict)
    schema_prefix: str = DEFAULT_PREFIX
    home: Path | None = None
    cache_dir: Path | None = None
    checkpoint_every: int = 1
    lease_seconds: float = 180.0
    fabrikant: str | None = None
    email: str | None = None
    affiliation: str | None = None
    git_commit: str | None = None
    debug: bool = False
    allowed_fn_prefixes: tuple[str, ...] = ("pipeline",)

    @property
    def uses_embedded(self) -> bool:
        """True when no ``DJ_HOST`` is set: the embedded PostgreSQL server is the database."""
        return self.host is None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, default_prefix: str = DEFAULT_PREFIX
    ) -> Settings:
        """Read and check every variable of ``environ`` (default ``os.environ``).

        Args:
            environ: the variables.
            default_prefix: the schema prefix when ``SYSID_SCHEMA_PREFIX`` is unset (the demo
                uses its own).

        Raises:
            SettingsError: a malformed value, or ``DJ_HOST`` set without ``DJ_USER``.
        """
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(name)
            return value if value else None

        host = text("DJ_HOST")
        user = text("DJ_USER")
        if host is not None and user is None:
            raise SettingsError("DJ_HOST is set but DJ_USER is not: set DJ_USER (and DJ_PASS, empty allowed)")
        prefix = env.get("SYSID_SCHEMA_PREFIX") or default_prefix
        try:
            check_schema_prefix(prefix)
        except ValueError as error:
            raise SettingsError(f"SYSID_SCHEMA_PREFIX: {error}") from None
        return cls(
            host=host,
            user=user,
            password=env.get("DJ_PASS", ""),
            port=_port(text("DJ_PORT")),
            backend=_backend(env.get("DJ_BACKEND") or "mysql"),
            stores=_stores(text("DJ_STORES")),
            schema_prefix=prefix,
            home=_path(text("SYSID_HOME")),
            cache_dir=_path(text("SYSID_CACHE_DIR")),
            checkpoint_every=_positive_int(
                "SYSID_CHECKPOINT_EVERY", env.get("SYSID_CHECKPOINT_EVERY") or "1"
            ),
            lease_seconds=_positive_seconds("SYSID_LEASE_SECONDS", env.get("SYSID_LEASE_SECONDS") or "180"),
            fabrikant=text("SYSID_FABRIKANT"),
            email=text("SYSID_EMAIL"),
            affiliation=text("SYSID_AFFILIATION"),
            git_commit=text("SYSID_GIT_COMMIT"),
            debug=_flag("SYSID_DEBUG", env.get("SYSID_DEBUG", "")),
            allowed_fn_prefixes=_fn_prefixes(env),
        )


def current_settings(default_prefix: str = DEFAULT_PREFIX) -> Settings:
    """The settings of the environment as it is now (see :meth:`Settings.from_environ`)."""
    return Settings.from_environ(default_prefix=default_prefix)


def _port(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        port = int(raw)
    except ValueError:
        raise SettingsError(f"DJ_PORT must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise SettingsError(f"DJ_PORT must be between 1 and 65535, got {raw!r}")
    return port


def _backend(raw: str) -> str:
    backend = _BACKENDS.get(raw.lower())
    if backend is None:
        raise SettingsError(f"DJ_BACKEND must be 'mysql' or 'postgresql', got {raw!r}")
    return backend


def _stores(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        stores = json.loads(raw)
    except json.JSONDecodeError as error:
        raise SettingsError(f"DJ_STORES is not valid JSON: {error}") from None
    if not isinstance(stores, dict) or not all(isinstance(v, dict) for v in stores.values()):
        raise SettingsError("DJ_STORES must be a JSON object: {store_name: {protocol, location, ...}}")
    return stores


def _path(raw: str | None) -> Path | None:
    return None if raw is None else Path(raw).expanduser()


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise SettingsError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _fn_prefixes(env: Mapping[str, str]) -> tuple[str, ...]:
    from pipeline.builder import allowed_fn_prefixes

    try:
        return allowed_fn_prefixes(env)
    except ValueError as error:
        raise SettingsError(str(error)) from None


def _positive_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
