"""Hyper-parameter searches in the database: studies, their trials, and the Optuna storage beside them.

An Optuna study's own state (trials, parameters, intermediate values, told values) lives in
Optuna's ``RDBStorage`` on the same server as the tables, in the schema ``<prefix>optuna``
(:func:`optuna_storage`). These tables say which trained models are which trial of which study:

* ``Study``: one row per search (its spec, objective, direction, sampler); its trials'
  combinations are the ``Experiments`` entry of the same name, so ``sysid worker --restrict STUDY``
  trains only them;
* ``SearchTrial``: one row per Optuna trial (number, Optuna's trial id, sampled values) with the
  dataset, model and trainer it registered, and a part ``Run`` per seed (one trained model each);
* ``TrialOutcome``: written once, when the trial is told to Optuna: ``complete`` / ``pruned`` /
  ``failed``, the value and (pruned) the epoch its worker stopped at. No row: still running.

The view ``search_trials_view`` joins them with ``TrainedModel``: one row per trial and seed with
the study, trial number, state, value and the trained model's key and score.

Pruning happens in the worker: :func:`pruning_check` is registered as an epoch check of every
training (:data:`schemas.progress.EPOCH_CHECKS`); for a run that belongs to a study with a pruner it
reports the validation correlation of each epoch to Optuna and ends the training (cleanly, with
the best state kept, so the trained model is stored as usual) when Optuna's pruner says so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import datajoint as dj

from ._dj_compat import quote_identifier
from ._schema import SCHEMA_SUFFIX, schema
from .configs import Dataset, Experiments, Model, Seed, Trainer, config_dict  # noqa: F401  (definitions)
from .connection import active_connection, active_prefix, active_settings, backend_of, schema_name
from .progress import TrainingProgress, register_epoch_check
from .trained_model import TrainedModel

logger = logging.getLogger(__name__)

__all__ = [
    "OPTUNA_SUFFIX",
    "SEARCH_TRIALS_VIEW",
    "TRIAL_STATES",
    "SearchTrial",
    "Study",
    "TrialOutcome",
    "SearchViewSet",
    "drop_optuna_storage",
    "optuna_schema_name",
    "optuna_storage",
    "pruning_check",
    "record_outcome",
    "search_lock",
    "search_trials",
]

#: the Optuna storage's schema is ``<prefix>optuna``
OPTUNA_SUFFIX = "optuna"
SEARCH_TRIALS_VIEW = "search_trials_view"
#: the states of ``TrialOutcome`` (a trial without an outcome row is running)
TRIAL_STATES = ("complete", "pruned", "failed")


@schema
class Study(dj.Manual):
    definition = """
    # a hyper-parameter search: an Optuna study in the storage <prefix>optuna on this server
    study_name: varchar(64)
    ---
    -> Experiments                  # experiment_name = study_name: the trials' combinations
    objective: varchar(64)          # TrainedModel.score or a score-table summary column
    direction: varchar(8)           # maximize / minimize
    sampler: varchar(16)            # tpe / random / grid
    pruner: varchar(16)             # median / none
    n_trials: int32                 # trials asked of Optuna in all
    spec: json                      # the search spec as given (sysid.search_spec)
    study_ts=CURRENT_TIMESTAMP: datetime
    """


@schema
class SearchTrial(dj.Manual):
    definition = """
    # one trial of a study: the configs it registered (one trained model per seed in part Run)
    -> Study
    trial_number: int32             # Optuna's trial number in the study
    ---
    trial_id: int64                 # Optuna's trial id in the storage
    -> Dataset
    -> Model
    -> Trainer
    params: json                    # the sampled values by searched key (<section>.<config key>)
    trial_ts=CURRENT_TIMESTAMP: datetime
    """

    class Run(dj.Part):
        definition = """
        # a seed of the trial: the trained model (dataset, model, trainer of the trial, this seed)
        -> master
        -> Seed
        """


@schema
class TrialOutcome(dj.Manual):
    definition = """
    # how a trial ended, as told to Optuna (no row: the trial is running)
    -> SearchTrial
    ---
    state: varchar(8)               # complete / pruned / failed
    value=null: float64             # the objective (pruned: the last validation correlation)
    pruned_epoch=null: int32        # the epoch at which its worker stopped a pruned trial
    message="": varchar(1024)       # failed: why
    outcome_ts=CURRENT_TIMESTAMP: datetime
    """


# ---------------------------------------------------------------------------------- storage


def optuna_schema_name(prefix: str | None = None) -> str:
    """The schema (MySQL: database) of the Optuna storage: ``<prefix>optuna``."""
    return schema_name(prefix)[: -len(SCHEMA_SUFFIX)] + OPTUNA_SUFFIX


def _storage_url(conn, name: str) -> tuple[str, dict[str, Any]]:
    """SQLAlchemy URL and engine arguments of the storage schema ``name`` on the active server."""
    settings = active_settings()
    user, password = (
        quote(str(settings["user"] or ""), safe=""),
        quote(str(settings["password"] or ""), safe=""),
    )
    auth = f"{user}:{password}" if password else user
    host, port = str(settings["host"]), int(settings["port"])
    if backend_of(conn) == "postgresql":
        database = conn.query("SELECT current_database()").fetchone()[0]
        # a unix-socket folder (the embedded server) goes into the query string
        where = (
            f"@/{database}?host={quote(host)}&port={port}"
            if host.startswith("/")
            else f"@{host}:{port}/{database}"
        )
        url = f"postgresql+psycopg2://{auth}{where}"
        return url, {"connect_args": {"options": f"-csearch_path={name}"}, "pool_pre_ping": True}
    return f"mysql+pymysql://{auth}@{host}:{port}/{name}", {"pool_pre_ping": True, "pool_recycle": 3600}


_storages: dict[tuple[str, str], Any] = {}


@contextlib.contextmanager
def search_lock(name: str, timeout: int = 120) -> Iterator[None]:
    """A server-side lock (PostgreSQL advisory lock / MySQL GET_LOCK) named after ``name``."""
    from .connection import activation_lock

    with activation_lock(active_connection(), f"search_{name}", timeout=timeout):
        yield


def optuna_storage():
    """The Optuna ``RDBStorage`` of the active database (created with its tables on first use).

    Its tables live in :func:`optuna_schema_name` on the server of the pipeline tables: a
    database on MySQL/MariaDB, a schema of the same database on PostgreSQL (through the
    connection's ``search_path``). One storage object per process and schema.
    """
    import optuna

    conn = active_connection()
    name = optuna_schema_name(active_prefix())
    url, engine_kwargs = _storage_url(conn, name)
    cached = _storages.get((url, name))
    if cached is not None:
        return cached
    q = quote_identifier(conn)
    with search_lock(name):  # drivers and workers starting together: create the tables once
        if backend_of(conn) == "postgresql":
            conn.query(f"CREATE SCHEMA IF NOT EXISTS {q(name)}")
        else:
            conn.query(f"CREATE DATABASE IF NOT EXISTS {q(name)}")
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    _storages[(url, name)] = storage
    return storage


def drop_optuna_storage(prefix: str | None = None) -> None:
    """Drop the Optuna storage schema of ``prefix`` (default: the active one) with every study in it."""
    conn = active_connection()
    name = optuna_schema_name(prefix if prefix is not None else active_prefix())
    for key in [k for k in _storages if k[1] == name]:
        with contextlib.suppress(Exception):
            _storages.pop(key).engine.dispose()
    q = quote_identifier(conn)
    if backend_of(conn) == "postgresql":
        conn.query(f"DROP SCHEMA IF EXISTS {q(name)} CASCADE")
    else:
        conn.query(f"DROP DATABASE IF EXISTS {q(name)}")


def make_pruner(name: str, options: Mapping[str, Any] | None = None):
    """The Optuna pruner of a spec: ``"median"`` (``MedianPruner(**options)``) or ``"none"``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(**dict(options or {}))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}: use median or none")


def load_optuna_study(study_name: str, sampler=None):
    """The Optuna study ``study_name`` of the active database, with the pruner its ``Study`` row names."""
    import optuna

    row = (Study() & {"study_name": study_name}).to_dicts()
    if not row:
        raise ValueError(f"no study named {study_name!r}")
    spec = config_dict(row[0]["spec"])
    pruner_spec = spec.get("pruner", "median")
    pruner_spec = {"name": pruner_spec} if isinstance(pruner_spec, str) else dict(pruner_spec)
    pruner = make_pruner(pruner_spec.pop("name"), pruner_spec)
    return optuna.load_study(study_name=study_name, storage=optuna_storage(), sampler=sampler, pruner=pruner)


# ---------------------------------------------------------------------------------- outcomes


def record_outcome(
    study_name: str,
    trial_number: int,
    state: str,
    value: float | None = None,
    pruned_epoch: int | None = None,
    message: str = "",
) -> None:
    """Insert the trial's ``TrialOutcome`` (once: a second call for the same trial does nothing)."""
    if state not in TRIAL_STATES:
        raise ValueError(f"state must be one of {TRIAL_STATES}, got {state!r}")
    TrialOutcome().insert1(
        {
            "study_name": study_name,
            "trial_number": int(trial_number),
            "state": state,
            "value": value,
            "pruned_epoch": pruned_epoch,
            "message": message[:1024],
        },
        skip_duplicates=True,
    )


class _TrialPruning:
    """The epoch check of one training run that belongs to trials of studies with a pruner."""

    def __init__(self, trials: list[dict[str, Any]], seed: int):
        self.trials = trials
        self.seed = seed
        self.studies: dict[str, Any] = {}

    def __repr__(self) -> str:
        names = ", ".join(f"{t['study_name']}#{t['trial_number']}" for t in self.trials)
        return f"<pruning of trial(s) {names}>"

    def __call__(self, record) -> bool:
        import optuna
        from optuna.trial import TrialState

        storage = optuna_storage()
        for trial in self.trials:
            state = storage.get_trial(trial["trial_id"]).state
            if state == TrialState.PRUNED:
                return True  # another seed of the trial was pruned: this one stops too
            if state != TrialState.RUNNING or record.val_correlation is None:
                continue
            if self.seed != trial["first_seed"]:
                continue  # the first seed's curve decides for the trial
            study = self.studies.get(trial["study_name"])
            if study is None:
                study = self.studies[trial["study_name"]] = load_optuna_study(trial["study_name"])
            step, value = int(record.epoch), float(record.val_correlation)
            handle = optuna.trial.Trial(study, trial["trial_id"])
            handle.report(value, step)
            if handle.should_prune():
                study.tell(trial["trial_number"], state=TrialState.PRUNED, skip_if_finished=True)
                record_outcome(trial["study_name"], trial["trial_number"], "pruned", value, pruned_epoch=step)
                logger.info(
                    "pruned trial %d of study %r at epoch %d (validation correlation %.4f)",
                    trial["trial_number"],
                    trial["study_name"],
                    step,
                    value,
                )
                return True
        return False


def pruning_check(recorder) -> _TrialPruning | None:
    """The epoch check of a ``TrainedModel`` run (see :data:`schemas.progress.EPOCH_CHECKS`).

    None unless the run is a seed of a running trial of a study whose pruner is not ``none``.
    """
    if recorder.progress_table is not TrainingProgress:
        return None  # another training table: not a trial
    key = {k: recorder.key[k] for k in TrainedModel.primary_key if k in recorder.key}
    if len(key) != len(TrainedModel.primary_key):
        return None
    runs = (SearchTrial.Run() & key).proj().to_dicts()
    if not runs:
        return None
    trial_keys = [{"study_name": r["study_name"], "trial_number": r["trial_number"]} for r in runs]
    rows = ((SearchTrial() * Study().proj("pruner") & trial_keys) - TrialOutcome().proj()).to_dicts()
    trials = []
    for row in rows:
        if row["pruner"] == "none":
            continue
        runs_of_trial = SearchTrial.Run() & {
            "study_name": row["study_name"],
            "trial_number": row["trial_number"],
        }
        seeds = [r["seed"] for r in runs_of_trial.to_dicts()]
        trials.append({**row, "first_seed": int(min(seeds))})
    return _TrialPruning(trials, int(key["seed"])) if trials else None


register_epoch_check(pruning_check)


# ---------------------------------------------------------------------------------- view and queries


class SearchViewSet:
    """The search's view for :func:`schemas.views.create_views`: ``search_trials_view``."""

    def names(self) -> tuple[str]:
        return (SEARCH_TRIALS_VIEW,)

    def statements(self, connection, database: str) -> dict[str, str]:
        """``{view name: SELECT}`` for the connection's backend."""
        return {SEARCH_TRIALS_VIEW: _search_view_statement(connection, database)}


def _search_view_statement(connection, database: str) -> str:
    """The SELECT of ``search_trials_view``: one row per trial and seed, its state and trained model."""
    q = quote_identifier(connection)

    def table(cls) -> str:
        return f"{q(database)}.{q(cls.table_name)}"

    trial_key = ("study_name", "trial_number")
    model_key = ("dataset_fn", "dataset_hash", "model_fn", "model_hash", "trainer_fn", "trainer_hash", "seed")
    on_trial = " AND ".join(f"r.{q(c)} = t.{q(c)}" for c in trial_key)
    on_outcome = " AND ".join(f"o.{q(c)} = t.{q(c)}" for c in trial_key)
    on_model = " AND ".join(f"m.{q(c)} = {'r' if c == 'seed' else 't'}.{q(c)}" for c in model_key)
    select = f"""
        SELECT t.{q("study_name")}, t.{q("trial_number")},
               COALESCE(o.{q("state")}, 'running') AS {q("state")},
               o.{q("value")}, o.{q("pruned_epoch")}, s.{q("objective")},
               {", ".join(f"t.{q(c)}" for c in model_key if c != "seed")}, r.{q("seed")},
               m.{q("score")}, m.{q("seconds")}, t.{q("trial_id")}, t.{q("trial_ts")}
        FROM {table(SearchTrial)} t
        JOIN {table(Study)} s ON s.{q("study_name")} = t.{q("study_name")}
        JOIN {table(SearchTrial.Run)} r ON {on_trial}
        LEFT JOIN {table(TrialOutcome)} o ON {on_outcome}
        LEFT JOIN {table(TrainedModel)} m ON {on_model}
    """
    return select


def search_trials(study_name: str | None = None):
    """``search_trials_view`` as a pandas DataFrame (one row per trial and seed), optionally of one study."""
    import pandas as pd

    conn = active_connection()
    q = quote_identifier(conn)
    sql = f"SELECT * FROM {q(schema_name())}.{q(SEARCH_TRIALS_VIEW)}"
    args: tuple = ()
    if study_name is not None:
        sql += f" WHERE {q('study_name')} = %s"
        args = (study_name,)
    cursor = conn.query(sql + f" ORDER BY {q('study_name')}, {q('trial_number')}, {q('seed')}", args=args)
    columns = [d[0] for d in cursor.description]
    return pd.DataFrame(cursor.fetchall(), columns=columns)
