"""Config tables (nnfabrik names): who registered what, and datasets/models/trainers keyed by hash.

``Dataset``, ``Model`` and ``Trainer`` rows are keyed by (``<x>_fn``, ``<x>_hash``): the function's
dotted path and the hash of the canonical config (:func:`pipeline.builder.config_hash`). Register
rows with ``add_entry``, which validates before it inserts and is idempotent.
"""

from __future__ import annotations

import getpass
import itertools
import json
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import datajoint as dj

from pipeline.builder import canonical_config, config_hash, plain_config, validate_config

from ._schema import schema
from .limits import check_row
from .settings import current_settings

__all__ = [
    "ConfigTable",
    "Dataset",
    "Experiments",
    "Fabrikant",
    "Model",
    "Seed",
    "Trainer",
    "atomic",
    "config_definition",
    "config_dict",
    "default_fabrikant",
]

FN_LENGTH = 128


@contextmanager
def atomic(connection) -> Iterator[None]:
    """One transaction around the block, or none when the caller already holds one (DataJoint does not nest)."""
    if connection.in_transaction:
        yield
        return
    with connection.transaction:
        yield


@schema
class Fabrikant(dj.Manual):
    definition = """
    # people who register datasets, models, trainers and experiments
    fabrikant_name: varchar(32)
    ---
    email: varchar(128)
    affiliation: varchar(128)
    dj_username: varchar(64)
    """

    @classmethod
    def ensure(cls, name: str | None = None) -> str:
        """Return the name of an existing fabrikant, creating the default one when needed.

        Args:
            name: an existing fabrikant; None means the default (``SYSID_FABRIKANT`` or the OS user),
                created from ``SYSID_EMAIL``/``SYSID_AFFILIATION`` if missing.

        Raises:
            ValueError: a named fabrikant that does not exist.
        """
        table = cls()
        if name is not None:
            if isinstance(name, str):
                check_row(cls, {"fabrikant_name": name}, "fabrikant")
            if not isinstance(name, str) or not (table & {"fabrikant_name": name}):
                raise ValueError(f"unknown fabrikant {name!r}: insert it into Fabrikant first")
            return name
        row = default_fabrikant()
        table.insert1(row, skip_duplicates=True)
        return row["fabrikant_name"]


def default_fabrikant() -> dict[str, str]:
    """Return the default Fabrikant row from the environment and the OS user name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    settings = current_settings()
    return {
        "fabrikant_name": (settings.fabrikant or user)[:32],
        "email": (settings.email or f"{user}@{socket.gethostname()}")[:128],
        "affiliation": (settings.affiliation or "")[:128],
        "dj_username": user[:64],
    }


@schema
class Seed(dj.Lookup):
    definition = """
    # random seeds for training
    seed: int32
    """


def _fn_path(fn: str | Callable) -> str:
    """Return the dotted path of ``fn`` (a string is returned as is)."""
    if isinstance(fn, str):
        path = fn.strip()
    elif callable(fn) and getattr(fn, "__module__", None) and "<" not in getattr(fn, "__qualname__", "<"):
        path = f"{fn.__module__}.{fn.__qualname__}"
    else:
        raise TypeError(f"fn must be a dotted path or an importable module-level function, got {fn!r}")
    return path


class ConfigTable:
    """Shared behaviour of the config tables: Dataset, Model, Trainer, MEIMethod (``_role`` names the columns' prefix)."""

    _role: str = ""

    @classmethod
    def checked_config(cls, path: str, config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """Validate ``config`` for the function ``path``; return the config to store and hash.

        The default checks the keys against the function's signature
        (:func:`pipeline.builder.validate_config`) and stores the config as given; a table whose
        functions take a typed settings object (``MEIMethod``) overrides it.
        """
        validate_config(path, config, cls._role, current_settings().allowed_fn_prefixes)
        return config

    @classmethod
    def add_entry(
        cls,
        fn: str | Callable,
        config: Mapping[str, Any] | None,
        fabrikant: str | None = None,
        comment: str = "",
        skip_duplicates: bool = True,
    ) -> dict[str, str]:
        """Validate and register a config; return its primary key.

        Works on the class and on an instance (``Model.add_entry(...)``, ``Model().add_entry(...)``).

        Args:
            fn: dotted path of the function (e.g. ``"pipeline.models.stacked_core_full_gauss_readout"``).
            config: its keyword arguments (JSON-representable; see ``pipeline.builder.canonical_config``).
            fabrikant: who registers it; default created from the environment / OS user.
            comment: free text (at most 256 characters).
            skip_duplicates: an identical (fn, config) returns the existing key; False raises instead.

        Returns:
            ``{"<x>_fn": ..., "<x>_hash": ...}``.

        Raises:
            ValueError / TypeError: unknown function, keys the function does not accept, missing
                required keys, non-JSON values, or a duplicate with ``skip_duplicates=False``.
                Nothing is inserted then.
        """
        role = cls._role
        path = _fn_path(fn)
        if not isinstance(comment, str):
            raise ValueError(f"comment must be a string, got {type(comment).__name__}")
        check_row(cls, {f"{role}_fn": path, f"{role}_comment": comment}, cls.__name__)
        config = cls.checked_config(path, config)
        canonical_config(config)  # raises on anything not JSON-representable
        key = {f"{role}_fn": path, f"{role}_hash": config_hash(config)}
        table = cls()
        if table & key:
            if not skip_duplicates:
                raise ValueError(f"{cls.__name__} already holds {key}")
            return key
        row = {
            **key,
            f"{role}_config": plain_config(config),
            f"{role}_fabrikant": Fabrikant.ensure(fabrikant),
            f"{role}_comment": comment,
        }
        table.insert1(row, skip_duplicates=True)  # a concurrent identical registration is fine
        return key

    @classmethod
    def get_config(cls, key: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Return ``(fn, config)`` of the one row matching ``key``."""
        role = cls._role
        row = (cls() & dict(key)).fetch1(f"{role}_fn", f"{role}_config")
        return row[0], config_dict(row[1])


def config_dict(value: Any) -> dict[str, Any]:
    """A config as a dict: ``json`` columns come back as dicts, or as JSON text on some drivers."""
    if isinstance(value, str):
        return json.loads(value)
    return dict(value or {})


def config_definition(role: str, what: str) -> str:
    """The definition of a config table whose columns are prefixed ``role`` (``<role>_fn``, ``<role>_hash`` ...)."""
    return f"""
    # {what}: function path and config, keyed by config hash
    {role}_fn: varchar({FN_LENGTH})   # dotted path of the {role} function
    {role}_hash: char(32)             # pipeline.builder.config_hash of the config
    ---
    {role}_config: json               # keyword arguments of the function
    -> Fabrikant.proj({role}_fabrikant='fabrikant_name')
    {role}_comment="": varchar(256)
    {role}_ts=CURRENT_TIMESTAMP: datetime
    """


@schema
class Dataset(ConfigTable, dj.Manual):
    _role = "dataset"
    definition = config_definition(
        "dataset", "datasets: dataset_fn(seed, **config) -> {tier: {data_key: loader}}"
    )


@schema
class Model(ConfigTable, dj.Manual):
    _role = "model"
    definition = config_definition("model", "models: model_fn(dataloaders, seed, **config) -> nn.Module")


@schema
class Trainer(ConfigTable, dj.Manual):
    _role = "trainer"
    definition = config_definition(
        "trainer", "trainers: trainer_fn(model, dataloaders, seed, uid, cb, **config)"
    )


@schema
class Experiments(dj.Manual):
    definition = """
    # named sets of (dataset, model, trainer, seed) combinations to train
    experiment_name: varchar(64)
    ---
    -> Fabrikant.proj(experiment_fabrikant='fabrikant_name')
    experiment_comment="": varchar(512)
    experiment_ts=CURRENT_TIMESTAMP: datetime
    """

    class Restrictions(dj.Part):
        definition = """
        # one combination of the experiment
        -> master
        -> Dataset
        -> Model
        -> Trainer
        -> Seed
        """

    @classmethod
    def add_entry(
        cls,
        name: str,
        datasets: Iterable[Mapping[str, Any]],
        models: Iterable[Mapping[str, Any]],
        trainers: Iterable[Mapping[str, Any]],
        seeds: Iterable[int],
        fabrikant: str | None = None,
        comment: str = "",
    ) -> dict[str, str]:
        """Create (or extend) the experiment ``name`` with every combination of the given keys.

        Args:
            name: experiment name (≤ 64 characters).
            datasets, models, trainers: primary keys as returned by ``add_entry``.
            seeds: integer seeds (inserted into ``Seed`` when missing).
            fabrikant, comment: as for config tables.

        Returns:
            ``{"experiment_name": name}``; use :meth:`experiment_keys` to populate only this experiment.

        Raises:
            ValueError: a key that is not registered, or a name, comment or seed its column cannot hold.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("experiment name must be a non-empty string")
        if not isinstance(comment, str):
            raise ValueError(f"experiment comment must be a string, got {type(comment).__name__}")
        check_row(cls, {"experiment_name": name, "experiment_comment": comment}, "experiment")
        datasets, models, trainers = list(datasets), list(models), list(trainers)
        seeds = [int(s) for s in seeds]
        for seed in seeds:
            check_row(Seed, {"seed": seed}, "seeds")
        for table, keys in ((Dataset, datasets), (Model, models), (Trainer, trainers)):
            for key in keys:
                if len(table() & dict(key)) != 1:
                    raise ValueError(
                        f"{table.__name__} has no entry {dict(key)}: register it with add_entry first"
                    )
        with atomic(cls.connection):
            Seed().insert([{"seed": s} for s in seeds], skip_duplicates=True)
            cls().insert1(
                {
                    "experiment_name": name,
                    "experiment_fabrikant": Fabrikant.ensure(fabrikant),
                    "experiment_comment": comment,
                },
                skip_duplicates=True,
            )
            rows = [
                {"experiment_name": name, **d, **m, **t, "seed": s}
                for d, m, t, s in itertools.product(datasets, models, trainers, seeds)
            ]
            cls.Restrictions().insert(rows, skip_duplicates=True)
        return {"experiment_name": name}

    @classmethod
    def experiment_keys(cls, name: str):
        """Return the query of (dataset, model, trainer, seed) keys of experiment ``name``.

        Pass it as ``restriction`` to ``schemas.populate_all`` or to ``TrainedModel.populate``.
        """
        if not (cls() & {"experiment_name": name}):
            raise ValueError(f"no experiment named {name!r}")
        return (cls.Restrictions() & {"experiment_name": name}).proj()
