"""Binding every pipeline table to a database: :func:`activate`, :func:`drop_all`, :func:`computed_tables`.

This is the one module that imports every table module: importing a table module registers its
classes with the unbound schema object (:mod:`schemas._schema`), and :func:`activate` declares
them all. A new table goes into :data:`POPULATED` (if workers fill it) and, for a new training
table, its :class:`~schemas.views.ViewSet` into :data:`VIEW_SETS`.
"""

from __future__ import annotations

from typing import Any

from . import _dj_compat, views
from ._schema import schema
from .configs import Dataset, Experiments, Fabrikant, Model, Seed, Trainer  # noqa: F401  (declared here)
from .connection import (
    activation_lock,
    active_connection,
    apply_store_config,
    clear_active,
    connect,
    connection_settings_from_env,
    schema_name,
    set_active,
)
from .data_info import DataInfo
from .ensembles import Ensemble, EnsembleScore
from .imported import ImportedCheckpoint  # noqa: F401  (declared here)
from .leases import LeasedJob
from .mei_tables import MEI, MEIMethod, MEISeed  # noqa: F401  (MEIMethod, MEISeed: declared here)
from .neuron_scores import NeuronScore
from .progress import Checkpoint, TrainingProgress  # noqa: F401  (declared here)
from .readout_parameters import ReadoutParameters
from .search_tables import SearchTrial, SearchViewSet, Study, TrialOutcome, drop_optuna_storage  # noqa: F401
from .settings import current_settings
from .trained_model import TrainedModel
from .transfer_scores import TransferredReadoutParameters, TransferredScore
from .transfers import SOURCE_COLUMNS, TransferredModel, TransferSource

__all__ = ["POPULATED", "VIEW_SETS", "activate", "computed_tables", "create_views", "drop_all"]

#: the tables workers populate, in populate order (a table after the tables it reads)
POPULATED = (
    DataInfo,
    TrainedModel,
    NeuronScore,
    ReadoutParameters,
    TransferredModel,
    TransferredScore,
    TransferredReadoutParameters,
    EnsembleScore,
    MEI,
)

#: the SQL views of each training table
VIEW_SETS = (
    views.ViewSet(
        models_view=views.TRAINED_MODEL_VIEW,
        neurons_view=views.NEURON_VIEW,
        trained=TrainedModel,
        scores=NeuronScore,
        readouts=ReadoutParameters,
        data_info=DataInfo,
    ),
    views.ViewSet(
        models_view=views.TRANSFERRED_MODEL_VIEW,
        neurons_view=views.TRANSFERRED_NEURON_VIEW,
        trained=TransferredModel,
        scores=TransferredScore,
        readouts=TransferredReadoutParameters,
        data_info=DataInfo,
        joins=((TransferSource, ("source_table", *SOURCE_COLUMNS)),),
    ),
    views.MEIViewSet(
        meis_view=views.MEI_VIEW,
        meis=MEI,
        ensemble=Ensemble,
        scores=EnsembleScore,
        trained=TrainedModel,
        readouts=ReadoutParameters,
        data_info=DataInfo,
    ),
    SearchViewSet(),
)

# table instances of the bound schema, reused across polls: an instance caches its key_source,
# its jobs table object and the headings behind them, which DataJoint otherwise reloads (dozens of
# queries) for every new instance. Keyed by (database, id(connection)) so that rebinding rebuilds it.
_table_cache: dict[str, Any] = {"binding": None, "tables": None}


def activate(prefix: str | None = None, *, backend: str | None = None):
    """Connect and bind all pipeline tables to the schema ``<prefix>pipeline`` (created if missing).

    Also creates the SQL views (:mod:`schemas.views`) and the jobs tables of the populated
    tables, under a server-side lock, so that workers starting together on a fresh schema do not
    race to create them. Calling it again with another prefix or backend rebinds the tables.

    Args:
        prefix: schema-name prefix; default ``SYSID_SCHEMA_PREFIX`` (see the README's "Settings").
        backend: see :func:`schemas.connection.connection_settings_from_env`.

    Returns:
        The DataJoint connection (``conn.query(sql)`` runs plain SQL).
    """
    if prefix is None:
        prefix = current_settings().schema_prefix
    name = schema_name(prefix)
    settings = connection_settings_from_env(backend)
    apply_store_config()
    conn = connect(settings)
    if schema.database == name and schema.connection is conn:
        set_active(conn, settings, prefix)
        return conn  # already bound here: nothing to declare
    if schema.database is not None:
        _dj_compat.unbind_schema(schema)  # rebinding to another schema or connection
    with activation_lock(conn, name):
        # several workers may activate a fresh schema at once: declare tables one process at a time
        schema.activate(name, connection=conn)
        create_views(conn, name)
        for table in computed_tables().values():
            _dj_compat.declare_jobs_table(table, LeasedJob)
    set_active(conn, settings, prefix)
    return conn


def create_views(connection, database: str) -> None:
    """Create (or replace) the SQL views of every training table in ``database``."""
    views.create_views(connection, database, VIEW_SETS)


def computed_tables() -> dict[str, Any]:
    """The populated tables in populate order: ``{name: table instance}``.

    The instances are cached for the bound schema and connection (they are unrestricted; restrict
    them with ``&``, which makes new objects). :func:`activate` to another schema or connection
    makes new ones.
    """
    binding = (schema.database, id(schema.connection))
    tables = _table_cache["tables"]
    if tables is None or _table_cache["binding"] != binding:
        tables = {table.__name__: table() for table in POPULATED}
        _table_cache.update(binding=binding, tables=tables)
    return dict(tables)


def drop_all() -> None:
    """Drop the active pipeline schema with all its tables, views, jobs and rows (no prompt).

    Used by tests and by the CLI's demo reset. Deletes the data for good.
    """
    active_connection()
    if schema.database is not None:
        drop_optuna_storage()  # the searches' Optuna storage beside the schema
    if schema.database is not None and schema.exists:
        schema.drop(prompt=False)
    _dj_compat.unbind_schema(schema)
    clear_active()
    _table_cache.update(binding=None, tables=None)
