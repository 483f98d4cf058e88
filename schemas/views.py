"""Flat SQL views over the pipeline tables, so SQL users never decode DataJoint's table naming.

For a training table and its score and readout tables (a :class:`ViewSet`):

* ``trained_models_view``: one row per trained model (keys, score, time, host, summary scores);
* ``neurons_view``: one row per trained model and neuron (keys, session, unit id, cortical
  position, readout parameters and per-tier scores).

Plain ``CREATE VIEW`` statements valid on MySQL 8 / MariaDB and PostgreSQL; aggregations carry key
columns only (MariaDB's ONLY_FULL_GROUP_BY), and are joined afterwards. Every column name comes
from the tables' own definitions (key columns from their headings, score names from
``NEURON_SCORE_NAMES``, readout names from ``NEURON_PARAMETER_KEYS``). This module imports no table:
:mod:`schemas.binding` passes them in. :func:`neurons` reads ``neurons_view`` into pandas (the
reports use it).

For MEIs (a :class:`MEIViewSet`): ``meis_view``, one row per MEI with the neuron's ensemble scores
and its readout position averaged over the ensemble's members; :func:`meis` reads it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ._dj_compat import quote_identifier
from .columns import DATASET_KEY, SCALAR_PARAMETERS, SUMMARY_COLUMNS, neuron_score_columns
from .connection import active_connection, schema_name

__all__ = [
    "MEI_VIEW",
    "NEURON_VIEW",
    "TRAINED_MODEL_VIEW",
    "TRANSFERRED_MODEL_VIEW",
    "TRANSFERRED_NEURON_VIEW",
    "MEIViewSet",
    "ViewSet",
    "create_views",
    "drop_views",
    "meis",
    "neurons",
]

TRAINED_MODEL_VIEW = "trained_models_view"
NEURON_VIEW = "neurons_view"
TRANSFERRED_MODEL_VIEW = "transferred_models_view"
TRANSFERRED_NEURON_VIEW = "transferred_neurons_view"
MEI_VIEW = "meis_view"

#: the neuron columns of the views (besides the keys), from ``DataInfo.Neuron``
_NEURON_COLUMNS = ("neuron_index", "area", "layer", "cortex_x", "cortex_y", "cortex_z")
#: the columns of a training table shown in its models view
_RUN_COLUMNS = ("score", "seconds", "host", "device", "state_nbytes", "git_commit")


@dataclass(frozen=True)
class ViewSet:
    """The two views of one training table.

    Attributes:
        models_view, neurons_view: the views' names.
        trained: the training table (:class:`schemas.training.TrainingTable`).
        scores: its score table (:class:`schemas.neuron_scores.NeuronScoreTable`, with part ``Unit``).
        readouts: its readout table (:class:`schemas.readout_parameters.ReadoutParametersTable`).
        data_info: the ``DataInfo`` table (part ``Neuron``).
        joins: ``(table, columns)`` pairs whose columns the models view shows too, joined on the
            table's primary key (e.g. a transferred model's source: ``TransferSource``).
    """

    models_view: str
    neurons_view: str
    trained: type
    scores: type
    readouts: type
    data_info: type
    joins: tuple[tuple[type, tuple[str, ...]], ...] = ()

    def names(self) -> tuple[str, str]:
        return (self.models_view, self.neurons_view)

    def statements(self, connection, database: str) -> dict[str, str]:
        """``{view name: SELECT}`` for the connection's backend."""
        return _view_statements(connection, database, self)


@dataclass(frozen=True)
class MEIViewSet:
    """The view of MEIs (``meis_view``): one row per MEI, with the neuron's scores and readout position.

    Attributes:
        meis_view: the view's name.
        meis: the MEI table (part ``Unit``: one row per neuron).
        ensemble: the ensemble table (part ``Member`` referencing ``trained``).
        scores: the ensemble's score table (part ``Unit``).
        trained, readouts: the members' training table and its readout table (part ``Unit``).
        data_info: the ``DataInfo`` table (part ``Neuron``).
    """

    meis_view: str
    meis: type
    ensemble: type
    scores: type
    trained: type
    readouts: type
    data_info: type

    def names(self) -> tuple[str]:
        return (self.meis_view,)

    def statements(self, connection, database: str) -> dict[str, str]:
        """``{view name: SELECT}`` for the connection's backend."""
        return {self.meis_view: _mei_view_statement(connection, database, self)}


def _view_statements(connection, database: str, views: ViewSet) -> dict[str, str]:
    """The SELECT of each view, with identifiers quoted for the connection's backend."""
    q = quote_identifier(connection)

    def table(cls) -> str:
        return f"{q(database)}.{q(cls.table_name)}"

    def on(left: str, right: str, columns) -> str:
        return " AND ".join(f"{left}.{q(c)} = {right}.{q(c)}" for c in columns)

    def columns(alias: str, names: Iterable[str]) -> str:
        return ", ".join(f"{alias}.{q(c)}" for c in names)

    trained_key = list(views.trained().primary_key)
    # the dataset first, then the rest of the key (as the columns read best)
    model_key = [*DATASET_KEY, *(c for c in trained_key if c not in DATASET_KEY)]
    neuron_key = [c for c in views.data_info.Neuron().primary_key if c not in DATASET_KEY]
    run_columns = (*_RUN_COLUMNS, views.trained.timestamp_column)
    joined = "".join(f", {columns(f'j{i}', names)}" for i, (_, names) in enumerate(views.joins))
    join_clauses = "".join(
        f"\n        LEFT JOIN {table(other)} j{i} ON {on('t', f'j{i}', other().primary_key)}"
        for i, (other, _) in enumerate(views.joins)
    )
    trained = f"""
        SELECT {columns("t", model_key)}{joined}, {columns("t", run_columns)},
               {columns("s", SUMMARY_COLUMNS)}
        FROM {table(views.trained)} t
        LEFT JOIN {table(views.scores)} s ON {on("t", "s", model_key)}{join_clauses}
    """

    def pivot(tier: str, column: str) -> str:
        return f"MAX(CASE WHEN u.{q('tier')} = '{tier}' THEN u.{q(column)} END) AS {q(f'{tier}_{column}')}"

    pivots = ",\n               ".join(pivot(tier, name) for tier, name in neuron_score_columns())
    group_cols = columns("u", (*model_key, *neuron_key))
    scores = f"""
        SELECT {group_cols},
               {pivots}
        FROM {table(views.scores.Unit)} u
        GROUP BY {group_cols}
    """
    score_columns = [f"{tier}_{name}" for tier, name in neuron_score_columns()]
    neurons = f"""
        SELECT {columns("t", model_key)}, {columns("n", (*neuron_key, *_NEURON_COLUMNS))},
               {columns("r", ("readout_type", *SCALAR_PARAMETERS))},
               {columns("s", score_columns)}
        FROM {table(views.trained)} t
        JOIN {table(views.data_info.Neuron)} n ON {on("t", "n", DATASET_KEY)}
        LEFT JOIN {table(views.readouts.Unit)} r
               ON {on("t", "r", model_key)} AND {on("n", "r", neuron_key)}
        LEFT JOIN ({scores}) s
               ON {on("t", "s", model_key)} AND {on("n", "s", neuron_key)}
    """
    return {views.models_view: trained, views.neurons_view: neurons}


def _mei_view_statement(connection, database: str, views: MEIViewSet) -> str:
    """One row per MEI: the ensemble, method and seed, the neuron, the MEI's scalars, the ensemble's
    validation and test correlation of the neuron, and its readout position averaged over the members."""
    q = quote_identifier(connection)

    def table(cls) -> str:
        return f"{q(database)}.{q(cls.table_name)}"

    def on(left: str, right: str, columns) -> str:
        return " AND ".join(f"{left}.{q(c)} = {right}.{q(c)}" for c in columns)

    def columns(alias: str, names: Iterable[str]) -> str:
        return ", ".join(f"{alias}.{q(c)}" for c in names)

    mei_key = list(views.meis().primary_key)
    ensemble_key = list(views.ensemble().primary_key)
    neuron_key = [c for c in views.data_info.Neuron().primary_key if c not in DATASET_KEY]
    member_key = list(views.trained().primary_key)
    scalars = ("activation", "relative_activation", "norm", "steps", "converged")
    group = columns("u", (*ensemble_key, *neuron_key))
    scores = f"""
        SELECT {group},
               MAX(CASE WHEN u.{q("tier")} = 'validation' THEN u.{q("correlation")} END) AS {q("validation_correlation")},
               MAX(CASE WHEN u.{q("tier")} = 'test' THEN u.{q("correlation")} END) AS {q("test_correlation")}
        FROM {table(views.scores.Unit)} u
        GROUP BY {group}
    """
    member_group = ", ".join([*(f"m.{q(c)}" for c in ensemble_key), *(f"r.{q(c)}" for c in neuron_key)])
    positions = f"""
        SELECT {member_group},
               AVG(r.{q("mu_x")}) AS {q("mu_x")}, AVG(r.{q("mu_y")}) AS {q("mu_y")}
        FROM {table(views.ensemble.Member)} m
        JOIN {table(views.readouts.Unit)} r ON {on("m", "r", member_key)}
        GROUP BY {member_group}
    """
    return f"""
        SELECT {columns("u", (*mei_key, *(c for c in neuron_key if c not in mei_key)))},
               {columns("n", ("neuron_index", "area", "layer", "cortex_x", "cortex_y", "cortex_z"))},
               {columns("u", scalars)}, u.{q("seconds")},
               {columns("s", ("validation_correlation", "test_correlation"))},
               {columns("p", ("mu_x", "mu_y"))}
        FROM {table(views.meis.Unit)} u
        JOIN {table(views.data_info.Neuron)} n ON {on("u", "n", (*DATASET_KEY, *neuron_key))}
        LEFT JOIN ({scores}) s ON {on("u", "s", (*ensemble_key, *neuron_key))}
        LEFT JOIN ({positions}) p ON {on("u", "p", (*ensemble_key, *neuron_key))}
    """


def create_views(connection, database: str, view_sets: Iterable[ViewSet | MEIViewSet]) -> None:
    """Create (or replace) the views of every view set in ``database`` (a MySQL database / PostgreSQL schema).

    Safe when several workers activate at once: a failed replace is retried after the view was
    dropped, and a view another process has just created is accepted.
    """
    q = quote_identifier(connection)
    for views in view_sets:
        for name, select in views.statements(connection, database).items():
            view = f"{q(database)}.{q(name)}"
            try:
                connection.query(f"CREATE OR REPLACE VIEW {view} AS {select}")
            except Exception:  # PostgreSQL cannot replace a view whose columns changed; races between workers
                time.sleep(0.2)
                try:
                    connection.query(f"DROP VIEW IF EXISTS {view}")
                    connection.query(f"CREATE VIEW {view} AS {select}")
                except Exception:
                    if not _view_exists(connection, database, name):
                        raise


def _view_exists(connection, database: str, name: str) -> bool:
    rows = connection.query(
        "SELECT COUNT(*) FROM information_schema.views WHERE table_schema = %s AND table_name = %s",
        args=(database, name),
    ).fetchall()
    return bool(rows[0][0])


def drop_views(connection, database: str, view_sets: Iterable[ViewSet | MEIViewSet]) -> None:
    """Drop the views of every view set from ``database`` if they exist."""
    q = quote_identifier(connection)
    for views in view_sets:
        for name in views.names():
            connection.query(f"DROP VIEW IF EXISTS {q(database)}.{q(name)}")


def neurons(key: Mapping[str, Any] | None = None, view: str = NEURON_VIEW) -> pd.DataFrame:
    """One row per trained model and neuron, read from ``neurons_view`` of the active schema.

    Args:
        key: column values every row must have, e.g. a trained model's key (None: every row).
        view: the view to read (the neurons view of another training table).

    Returns:
        The view's columns: the model key, ``data_key``, ``unit_id``, cortical position, readout
        parameters and ``<tier>_<score>`` columns (empty DataFrame with those columns when no row
        matches).

    Raises:
        ValueError: a key column the view does not have.
    """
    return _read_view(view, key)


def meis(key: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per MEI (ensemble, method, seed, neuron), read from ``meis_view`` of the active schema.

    Args:
        key: column values every row must have, e.g. an ensemble's key and ``mei_hash``.

    Returns:
        The keys, ``data_key``, ``unit_id``, the neuron's position and cortex coordinates, the MEI's
        ``activation``, ``relative_activation``, ``norm``, ``steps``, ``converged``, ``seconds``, the
        ensemble's ``validation_correlation`` and ``test_correlation`` of the neuron and the members'
        mean readout position ``mu_x``, ``mu_y`` (the images are in ``MEI.Unit``).
    """
    return _read_view(MEI_VIEW, key)


def _read_view(view: str, key: Mapping[str, Any] | None) -> pd.DataFrame:
    conn = active_connection()
    q = quote_identifier(conn)
    where, args = "", []
    if key:
        known = _view_columns(conn, view)
        unknown = [c for c in key if c not in known]
        if unknown:
            raise ValueError(f"{view} has no column(s) {unknown}; columns: {known}")
        where = " WHERE " + " AND ".join(f"{q(c)} = %s" for c in key)
        args = [value.item() if hasattr(value, "item") else value for value in key.values()]
    cursor = conn.query(f"SELECT * FROM {q(schema_name())}.{q(view)}{where}", args=args)
    names = [d[0] for d in cursor.description]
    return pd.DataFrame([tuple(row) for row in cursor.fetchall()], columns=names)


def _view_columns(conn, view: str) -> list[str]:
    q = quote_identifier(conn)
    cursor = conn.query(f"SELECT * FROM {q(schema_name())}.{q(view)} WHERE 1 = 0")
    return [d[0] for d in cursor.description]
