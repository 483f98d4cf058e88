"""Config tables with nnfabrik's names, columns and methods: who registered what, and datasets/models/trainers keyed by hash.

``Dataset``, ``Model`` and ``Trainer`` rows are keyed by (``<x>_fn``, ``<x>_hash``): the function's
dotted path and the hash of the canonical config (:func:`pipeline.builder.config_hash`). Their
methods are nnfabrik's (``nnfabrik.main``), with its names, signatures and return values:
``add_entry`` (validates before it inserts), ``fn_config``, ``resolve_fn``, and
``Model.build_model`` / ``Dataset.get_dataloader`` / ``Trainer.get_trainer``.

Where nnfabrik is silent or wrong we differ, on purpose: a function that does not import or a config
key it does not accept raises (nnfabrik warns and returns None), and a missing fabrikant is
created from the environment (nnfabrik fails on the foreign key).
"""

from __future__ import annotations

import getpass
import itertools
import json
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import datajoint as dj

from pipeline import builder
from pipeline.builder import canonical_config, config_hash, plain_config, validate_config

from ._schema import schema
from .hybrid import hybridmethod
from .limits import check_row
from .settings import current_settings

__all__ = [
    "ConfigTable",
    "Dataset",
    "DuplicateEntryWarning",
    "Experiments",
    "Fabrikant",
    "Model",
    "Seed",
    "Trainer",
    "atomic",
    "config_definition",
    "config_dict",
    "default_fabrikant",
    "deprecated_alias",
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


class DuplicateEntryWarning(UserWarning):
    """``add_entry(..., skip_duplicates=True)`` found the entry already there (nnfabrik warns too)."""


def deprecated_alias(new: Any, new_name: str, old: Any, old_name: str, default: Any = None) -> Any:
    """The value of an argument that also has a deprecated old name (warns when the old one is used)."""
    if old is None:
        return new
    if new is not default:
        raise TypeError(f"pass either {new_name} or its deprecated alias {old_name}, not both")
    warnings.warn(f"{old_name}= is deprecated: use nnfabrik's {new_name}=", DeprecationWarning, stacklevel=3)
    return old


def _database_user(connection) -> str:
    """The user name of the database connection, without the ``@host`` part."""
    try:
        user = connection.get_user()
    except (AttributeError, TypeError):
        user = None
    if not user:
        user = dj.config.get("database.user") or ""
    return str(user).split("@")[0]


@schema
class Fabrikant(dj.Manual):
    definition = """
    # people who register datasets, models, trainers and experiments
    fabrikant_name: varchar(32)
    ---
    full_name="": varchar(128)
    email: varchar(128)
    affiliation: varchar(128)
    dj_username: varchar(64)
    """

    @classmethod
    def add_entry(
        cls,
        name: str,
        email: str,
        affiliation: str,
        full_name: str = "",
        dj_username: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
    ) -> dict[str, Any]:
        """Add a person (nnfabrik's ``Fabrikant.add_entry``).

        Args:
            name: short name (the key, at most 32 characters).
            email, affiliation, full_name: what the columns say (at most 128 characters).
            dj_username: the person's database user; None means the current connection's user.
            skip_duplicates: an existing entry with this name *or* this database user is returned
                (with a :class:`DuplicateEntryWarning`); False raises instead.
            return_pk_only: return ``{"fabrikant_name": ...}``; False returns the whole row.

        Raises:
            ValueError: a value too long, or an existing entry with ``skip_duplicates=False``.
        """
        table = cls()
        if dj_username is None:
            dj_username = _database_user(table.connection)
        row = {
            "fabrikant_name": name,
            "full_name": full_name,
            "email": email,
            "affiliation": affiliation,
            "dj_username": dj_username,
        }
        for column, value in row.items():
            if not isinstance(value, str) or (column == "fabrikant_name" and not value):
                raise ValueError(
                    f"Fabrikant {column} must be a{' non-empty' * (column == 'fabrikant_name')} string, got {value!r}"
                )
        check_row(cls, row, "Fabrikant")  # the column limits of the definition
        existing = (table & {"fabrikant_name": name}) or (table & {"dj_username": dj_username})
        if existing:
            row = existing.to_dicts(order_by="fabrikant_name")[0]
            if not skip_duplicates:
                raise ValueError(f"Corresponding entry already exists: {row}")
            warnings.warn(
                f"Corresponding entry found: {row['fabrikant_name']!r}. Skipping...",
                DuplicateEntryWarning,
                stacklevel=2,
            )
        else:
            table.insert1(row)
        return {"fabrikant_name": row["fabrikant_name"]} if return_pk_only else row

    @classmethod
    def get_current_user(cls) -> str | None:
        """The ``fabrikant_name`` whose ``dj_username`` is the current database user, or None (nnfabrik's)."""
        table = cls()
        names = (table & {"dj_username": _database_user(table.connection)}).to_dicts(
            order_by="fabrikant_name"
        )
        return names[0]["fabrikant_name"] if names else None

    @classmethod
    def ensure(cls, name: str | None = None) -> str:
        """Return the name of an existing fabrikant, finding or creating the default one when needed.

        Args:
            name: an existing fabrikant. None means the default: ``SYSID_FABRIKANT`` when set, else
                the fabrikant of the current database user (:meth:`get_current_user`, as nnfabrik),
                else one named after the OS user; the default is created from
                ``SYSID_EMAIL``/``SYSID_AFFILIATION`` if missing.

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
        if not current_settings().fabrikant:
            current = cls.get_current_user()
            if current is not None:
                return current
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
    """Shared behaviour of the config tables: Dataset, Model, Trainer, MEIMethod (``_role`` names the columns' prefix).

    Each table's public ``add_entry`` has nnfabrik's argument names for its role
    (``model_fn, model_config, model_comment, model_fabrikant, ...``) and calls :meth:`insert_config`.
    """

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
    def insert_config(
        cls,
        fn: str | Callable,
        config: Mapping[str, Any] | None,
        comment: str = "",
        fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
    ) -> dict[str, Any]:
        """Validate and register a config (the work of every ``add_entry``; nnfabrik's semantics).

        Args:
            fn: dotted path of the function, or the function itself (its module path is stored).
            config: its keyword arguments (JSON-representable; see ``pipeline.builder.canonical_config``).
            comment: free text (at most 256 characters).
            fabrikant: who registers it; None: :meth:`Fabrikant.ensure`'s default.
            skip_duplicates: an entry with the same function and config hash is returned (with a
                :class:`DuplicateEntryWarning`); False raises ``ValueError`` instead.
            return_pk_only: return ``{"<x>_fn", "<x>_hash"}``; False returns the whole row
                (config as a dict, fabrikant, comment, timestamp).

        Raises:
            ValueError / TypeError: unknown function, keys the function does not accept, missing
                required keys, non-JSON values, an unknown fabrikant, or a duplicate with
                ``skip_duplicates=False``. Nothing is inserted then.
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
                raise ValueError(f"Corresponding entry already exists in {cls.__name__}: {key}")
            warnings.warn(
                f"Corresponding entry found in {cls.__name__}: {key}. Skipping...",
                DuplicateEntryWarning,
                stacklevel=3,
            )
        else:
            row = {
                **key,
                f"{role}_config": plain_config(config),
                f"{role}_fabrikant": Fabrikant.ensure(fabrikant),
                f"{role}_comment": comment,
            }
            table.insert1(row, skip_duplicates=True)  # a concurrent identical registration is fine
        if return_pk_only:
            return key
        row = (table & key).to_dicts()[0]
        row[f"{role}_config"] = config_dict(row[f"{role}_config"])
        return row

    @property
    def fn_config(self) -> tuple[str, dict[str, Any]]:
        """``(fn, config)`` of the single row of this (restricted) table (nnfabrik's ``fn_config``).

        Raises:
            ValueError: the table holds no row or several rows.
        """
        role = self._role
        count = len(self)
        if count != 1:
            raise ValueError(
                f"{type(self).__name__}.fn_config needs exactly one row, the restriction matches {count}"
            )
        row = self.to_dicts()[0]
        return row[f"{role}_fn"], config_dict(row[f"{role}_config"])

    @staticmethod
    def resolve_fn(fn_name: str | Callable) -> Callable:
        """The function named by the dotted path ``fn_name`` (:func:`pipeline.builder.resolve_fn`)."""
        return builder.resolve_fn(fn_name)

    @classmethod
    def get_config(cls, key: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Return ``(fn, config)`` of the one row matching ``key`` (``(cls() & key).fn_config``)."""
        return (cls() & dict(key)).fn_config

    def _restricted(self, key: Mapping[str, Any] | None):
        return self & dict(key) if key else self


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

    @classmethod
    def add_entry(
        cls,
        dataset_fn: str | Callable,
        dataset_config: Mapping[str, Any] | None,
        dataset_comment: str = "",
        dataset_fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
        *,
        fabrikant: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Register a dataset function and its config (nnfabrik's ``Dataset.add_entry``).

        Args:
            dataset_fn: dotted path (``"pipeline.data.static_loaders"``) or the function itself.
            dataset_config: its keyword arguments.
            dataset_comment, dataset_fabrikant, skip_duplicates, return_pk_only: see
                :meth:`ConfigTable.insert_config`. ``fabrikant``/``comment``: deprecated aliases.

        Returns:
            ``{"dataset_fn", "dataset_hash"}``, or the whole row with ``return_pk_only=False``.
        """
        return cls.insert_config(
            dataset_fn,
            dataset_config,
            deprecated_alias(dataset_comment, "dataset_comment", comment, "comment", default=""),
            deprecated_alias(dataset_fabrikant, "dataset_fabrikant", fabrikant, "fabrikant"),
            skip_duplicates,
            return_pk_only,
        )

    @hybridmethod
    def get_dataloader(self, seed: int | None = None, key: Mapping[str, Any] | None = None):
        """Build the loaders of the single (restricted) row (nnfabrik's ``Dataset.get_dataloader``).

        Args:
            seed: passed to the dataset function as ``seed`` (replacing a seed in the config);
                None calls it with the stored config as it is.
            key: restriction selecting the row (None: this restricted table).

        Returns:
            ``{tier: {data_key: loader}}``.

        Raises:
            ValueError: not exactly one row, or a seed for a function that takes none.
        """
        dataset_fn, dataset_config = self._restricted(key).fn_config
        if seed is not None:
            if not builder.accepts_argument(builder.resolve_fn(dataset_fn), "seed"):
                raise ValueError(f"dataset function {dataset_fn!r} takes no seed argument")
            dataset_config["seed"] = seed
        return builder.get_data(dataset_fn, dataset_config)


@schema
class Model(ConfigTable, dj.Manual):
    _role = "model"
    definition = config_definition("model", "models: model_fn(dataloaders, seed, **config) -> nn.Module")

    @classmethod
    def add_entry(
        cls,
        model_fn: str | Callable,
        model_config: Mapping[str, Any] | None,
        model_comment: str = "",
        model_fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
        *,
        fabrikant: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Register a model builder and its config (nnfabrik's ``Model.add_entry``).

        Args:
            model_fn: dotted path (``"pipeline.models.stacked_core_full_gauss_readout"``) or the function.
            model_config: its keyword arguments.
            model_comment, model_fabrikant, skip_duplicates, return_pk_only: see
                :meth:`ConfigTable.insert_config`. ``fabrikant``/``comment``: deprecated aliases.

        Returns:
            ``{"model_fn", "model_hash"}``, or the whole row with ``return_pk_only=False``.
        """
        return cls.insert_config(
            model_fn,
            model_config,
            deprecated_alias(model_comment, "model_comment", comment, "comment", default=""),
            deprecated_alias(model_fabrikant, "model_fabrikant", fabrikant, "fabrikant"),
            skip_duplicates,
            return_pk_only,
        )

    @hybridmethod
    def build_model(
        self,
        dataloaders: Mapping | None = None,
        seed: int | None = None,
        key: Mapping[str, Any] | None = None,
        data_info: Mapping | None = None,
    ):
        """Build the (untrained) model of the single (restricted) row (nnfabrik's ``Model.build_model``).

        Args:
            dataloaders: ``{tier: {data_key: loader}}`` the model sizes itself from
                (e.g. ``Dataset().get_dataloader(key=...)``).
            seed: the builder's seed.
            key: restriction selecting the row (None: this restricted table).
            data_info: per-session shapes to build without loaders (``DataInfo``'s ``data_info``).

        Returns:
            The ``nn.Module`` of ``model_fn(dataloaders, seed=seed, [data_info=...], **model_config)``.

        Raises:
            ValueError: neither ``dataloaders`` nor ``data_info`` (as nnfabrik), or not exactly one row.
        """
        if dataloaders is None and data_info is None:
            raise ValueError(
                "build_model needs dataloaders or data_info to size the model: pass "
                "dataloaders=Dataset().get_dataloader(key=...) or data_info=..."
            )
        model_fn, model_config = self._restricted(key).fn_config
        return builder.get_model(
            model_fn, model_config, dataloaders=dataloaders, seed=seed, data_info=data_info
        )


@schema
class Trainer(ConfigTable, dj.Manual):
    _role = "trainer"
    definition = config_definition(
        "trainer", "trainers: trainer_fn(model, dataloaders, seed, uid, cb, **config)"
    )

    @classmethod
    def add_entry(
        cls,
        trainer_fn: str | Callable,
        trainer_config: Mapping[str, Any] | None,
        trainer_comment: str = "",
        trainer_fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
        *,
        fabrikant: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Register a trainer function and its config (nnfabrik's ``Trainer.add_entry``).

        Args:
            trainer_fn: dotted path (``"pipeline.training.standard_trainer"``) or the function.
            trainer_config: its keyword arguments.
            trainer_comment, trainer_fabrikant, skip_duplicates, return_pk_only: see
                :meth:`ConfigTable.insert_config`. ``fabrikant``/``comment``: deprecated aliases.

        Returns:
            ``{"trainer_fn", "trainer_hash"}``, or the whole row with ``return_pk_only=False``.
        """
        return cls.insert_config(
            trainer_fn,
            trainer_config,
            deprecated_alias(trainer_comment, "trainer_comment", comment, "comment", default=""),
            deprecated_alias(trainer_fabrikant, "trainer_fabrikant", fabrikant, "fabrikant"),
            skip_duplicates,
            return_pk_only,
        )

    @hybridmethod
    def get_trainer(self, key: Mapping[str, Any] | None = None, build_partial: bool = True):
        """The trainer of the single (restricted) row (nnfabrik's ``Trainer.get_trainer``).

        Args:
            key: restriction selecting the row (None: this restricted table).
            build_partial: return the function with the config bound (``functools.partial``),
                called as ``trainer(model, dataloaders, seed, uid=..., cb=...)``; False returns
                ``(trainer_fn, trainer_config)``, the function resolved.

        Raises:
            ValueError: not exactly one row.
        """
        trainer_fn, trainer_config = self._restricted(key).fn_config
        if build_partial:
            return builder.get_trainer(trainer_fn, trainer_config)
        return builder.resolve_fn(trainer_fn), trainer_config


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
