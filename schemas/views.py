"""Flat SQL views over the pipeline tables, so SQL users never decode DataJoint's table naming.

``trained_models_view``: one row per trained model (config keys, score, time, host, summary scores).
``neurons_view``: one row per trained model and neuron (keys, session, unit id, cortical position,
readout parameters and per-tier scores).

Plain ``CREATE VIEW`` statements valid on MySQL 8 / MariaDB and PostgreSQL; aggregations carry key
columns only (MariaDB's ONLY_FULL_GROUP_BY), and are joined afterwards.
"""

from __future__ import annotations

import time

__all__ = ["NEURON_VIEW", "TRAINED_MODEL_VIEW", "create_views", "drop_views"]

TRAINED_MODEL_VIEW = "trained_models_view"
NEURON_VIEW = "neurons_view"

_MODEL_KEY = ("dataset_fn", "dataset_hash", "model_fn", "model_hash", "trainer_fn", "trainer_hash", "seed")


def _view_statements(connection, database: str) -> dict[str, str]:
    """The SELECT of each view, with identifiers quoted for the connection's backend."""
    from .downstream import DataInfo, NeuronScore, ReadoutParameters
    from .trained_model import TrainedModel

    q = connection.adapter.quote_identifier
    # SQL names of the tables DataJoint declared (e.g. "__trained_model")
    names = {
        "trained_model": TrainedModel.table_name,
        "neuron_score": NeuronScore.table_name,
        "neuron_score_unit": NeuronScore.Unit.table_name,
        "readout_unit": ReadoutParameters.Unit.table_name,
        "neuron": DataInfo.Neuron.table_name,
    }

    def table(name: str) -> str:
        return f"{q(database)}.{q(names[name])}"

    def on(left: str, right: str, columns=_MODEL_KEY) -> str:
        return " AND ".join(f"{left}.{q(c)} = {right}.{q(c)}" for c in columns)

    key_cols = ", ".join(f"t.{q(c)}" for c in _MODEL_KEY)
    trained = f"""
        SELECT {key_cols}, t.{q("score")}, t.{q("seconds")}, t.{q("host")}, t.{q("device")},
               t.{q("state_nbytes")}, t.{q("git_commit")}, t.{q("trainedmodel_ts")},
               s.{q("train_correlation")}, s.{q("validation_correlation")}, s.{q("test_correlation")},
               s.{q("test_correlation_to_average")}, s.{q("test_feve")}, s.{q("fraction_oracle")}
        FROM {table("trained_model")} t
        LEFT JOIN {table("neuron_score")} s ON {on("t", "s")}
    """
    neuron_key = (*_MODEL_KEY, "data_key", "unit_id")

    def pivot(tier: str, column: str) -> str:
        return f"MAX(CASE WHEN u.{q('tier')} = '{tier}' THEN u.{q(column)} END) AS {q(f'{tier}_{column}')}"

    pivots = ",\n               ".join(
        [
            pivot("train", "correlation"),
            pivot("validation", "correlation"),
            pivot("test", "correlation"),
            pivot("test", "correlation_to_average"),
            pivot("test", "fev"),
            pivot("test", "feve"),
            pivot("test", "oracle"),
        ]
    )
    group_cols = ", ".join(f"u.{q(c)}" for c in neuron_key)
    scores = f"""
        SELECT {group_cols},
               {pivots}
        FROM {table("neuron_score_unit")} u
        GROUP BY {group_cols}
    """
    score_columns = [
        "train_correlation",
        "validation_correlation",
        "test_correlation",
        "test_correlation_to_average",
        "test_fev",
        "test_feve",
        "test_oracle",
    ]
    readout_columns = [
        "readout_type",
        "mu_x",
        "mu_y",
        "sigma_x",
        "sigma_y",
        "sigma_xy",
        "feature_norm",
        "bias",
    ]
    neurons = f"""
        SELECT {key_cols}, n.{q("data_key")}, n.{q("unit_id")}, n.{q("neuron_index")}, n.{q("area")},
               n.{q("layer")}, n.{q("cortex_x")}, n.{q("cortex_y")}, n.{q("cortex_z")},
               {", ".join(f"r.{q(c)}" for c in readout_columns)},
               {", ".join(f"s.{q(c)}" for c in score_columns)}
        FROM {table("trained_model")} t
        JOIN {table("neuron")} n ON {on("t", "n", ("dataset_fn", "dataset_hash"))}
        LEFT JOIN {table("readout_unit")} r
               ON {on("t", "r")} AND {on("n", "r", ("data_key", "unit_id"))}
        LEFT JOIN ({scores}) s
               ON {on("t", "s")} AND {on("n", "s", ("data_key", "unit_id"))}
    """
    return {TRAINED_MODEL_VIEW: trained, NEURON_VIEW: neurons}


def create_views(connection, database: str) -> None:
    """Create (or replace) the views in ``database`` (a MySQL database / PostgreSQL schema).

    Safe when several workers activate at once: a failed replace is retried after the view was
    dropped, and a view another process has just created is accepted.
    """
    q = connection.adapter.quote_identifier
    for name, select in _view_statements(connection, database).items():
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


def drop_views(connection, database: str) -> None:
    """Drop the views from ``database`` if they exist."""
    q = connection.adapter.quote_identifier
    for name in (TRAINED_MODEL_VIEW, NEURON_VIEW):
        connection.query(f"DROP VIEW IF EXISTS {q(database)}.{q(name)}")
