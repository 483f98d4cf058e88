"""Transfer learning as rows: recipes, sources, tasks and the transferred models with their scores.

* :class:`Transfer` — a recipe (config table like ``Model``): freeze or fine-tune the core, the
  core's learning rate, which parts to copy (:class:`pipeline.models.transfer.TransferRecipe`).
* :class:`TransferSource` — a trained model whose core is transferred: a ``TrainedModel`` row (part
  ``Trained``, so deleting it deletes what was transferred from it) or a ``TransferredModel`` row
  (:class:`ChainedSource`: a transferred model can itself be a source). Keyed by ``source_hash``;
  its columns name the source's model, dataset, trainer and seed for SQL.
* :class:`TransferTask` — what to train: source × recipe × target dataset × model × trainer × seed,
  checked when registered (:func:`register_transfer`: the source core must load strictly into the
  target model). Its rows are the key source of :class:`TransferredModel`.
* :class:`TransferredModel` — a :class:`~schemas.training.TrainingTable` (the same three-method make,
  progress, checkpoints, resume, SIGTERM handling and ``load_model`` as ``TrainedModel``) whose
  ``initial_model`` copies the source core into the target model.
* Its per-neuron scores and readout parameters: :mod:`schemas.transfer_scores`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datajoint as dj

from pipeline import builder
from pipeline.builder import config_hash
from pipeline.models import data_info_from_loaders
from pipeline.models.transfer import TransferError, TransferRecipe, transfer

from ._schema import schema
from .configs import (
    ConfigTable,
    Dataset,
    DuplicateEntryWarning,
    Fabrikant,
    Model,
    Seed,
    Trainer,
    atomic,
    config_definition,
    config_dict,
)
from .model_loading import rebuild_model
from .progress import checkpoint_definition, progress_definition
from .trained_model import TRAINED_MODEL_KEY, TrainedModel
from .training import (
    AFTER_DELETE,
    STORED_STATE_DEFINITION,
    TrainingJob,
    TrainingTable,
    trained_model_definition,
)

__all__ = [
    "RECIPE_FN",
    "SOURCE_COLUMNS",
    "SOURCE_TABLES",
    "TRANSFER_KEY_DEFINITION",
    "ChainedSource",
    "Transfer",
    "TransferCheckpoint",
    "TransferJob",
    "TransferProgress",
    "TransferSource",
    "TransferTask",
    "TransferredModel",
    "register_transfer",
    "source_hash",
    "source_table",
]

#: the function path of every transfer recipe (the class that checks it)
RECIPE_FN = "pipeline.models.transfer.TransferRecipe"
#: the source's key columns stored in TransferSource (``source_<name>``), common to every source table
SOURCE_COLUMNS = tuple(f"source_{name}" for name in TRAINED_MODEL_KEY)


@schema
class Transfer(ConfigTable, dj.Manual):
    _role = "transfer"
    definition = config_definition("transfer", "transfer recipes: pipeline.models.transfer.TransferRecipe")

    @classmethod
    def checked_config(cls, path: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check the recipe (:meth:`TransferRecipe.from_config`); store it complete (defaults filled in)."""
        if path != RECIPE_FN:
            raise ValueError(f"a transfer recipe's function is {RECIPE_FN!r}, got {path!r}")
        return TransferRecipe.from_config(dict(config or {})).to_config()

    @classmethod
    def add_entry(
        cls,
        transfer_fn: str,
        transfer_config: Mapping[str, Any] | None,
        transfer_comment: str = "",
        transfer_fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
    ) -> dict[str, Any]:
        """Register a recipe, like the other config tables' ``add_entry`` (``transfer_fn`` is :data:`RECIPE_FN`).

        Returns:
            ``{"transfer_fn", "transfer_hash"}``, or the whole row with ``return_pk_only=False``.
        """
        return cls.insert_config(
            transfer_fn,
            transfer_config,
            transfer_comment,
            transfer_fabrikant,
            skip_duplicates,
            return_pk_only,
        )

    @classmethod
    def add_recipe(
        cls, config: Mapping[str, Any] | None = None, comment: str = "", fabrikant: str | None = None
    ) -> dict[str, str]:
        """Register a recipe (an existing one is returned): ``{"transfer_fn", "transfer_hash"}``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DuplicateEntryWarning)
            return cls.add_entry(RECIPE_FN, config, comment, fabrikant, skip_duplicates=True)


def source_hash(table_name: str, key: Mapping[str, Any]) -> str:
    """The ``source_hash`` of a source model: the config hash of its table's name and primary key."""
    return config_hash({"table": table_name, "key": {k: key[k] for k in sorted(key)}})


def _source_column(name: str) -> str:
    kind = "int32" if name == "source_seed" else "varchar(128)" if name.endswith("_fn") else "char(32)"
    return f"{name}: {kind}"


_SOURCE_COLUMN_LINES = "\n    ".join(_source_column(c) for c in SOURCE_COLUMNS)


@schema
class TransferSource(dj.Manual):
    definition = f"""
    # a trained model whose core is transferred (a TrainedModel or a TransferredModel row)
    source_hash: char(32)           # schemas.transfers.source_hash(source_table, source key)
    ---
    source_table: varchar(64)       # TrainedModel or TransferredModel
    {_SOURCE_COLUMN_LINES}
    source_key: json                # the source's full primary key in its table
    source_ts=CURRENT_TIMESTAMP: datetime
    """

    class Trained(dj.Part):
        definition = """
        # the source is a TrainedModel row (deleting it deletes the transfers made from it)
        -> master
        -> TrainedModel
        """


@schema
class TransferTask(dj.Manual):
    definition = """
    # a transfer to train: source core x recipe x target dataset, model, trainer and seed
    -> TransferSource
    -> Transfer
    -> Dataset
    -> Model
    -> Trainer
    -> Seed
    ---
    -> Fabrikant.proj(task_fabrikant='fabrikant_name')
    task_ts=CURRENT_TIMESTAMP: datetime
    """


TRANSFER_KEY_DEFINITION = """
    -> TransferTask
"""


@schema
class TransferProgress(dj.Manual):
    definition = progress_definition(TRANSFER_KEY_DEFINITION)


@schema
class TransferCheckpoint(dj.Manual):
    definition = checkpoint_definition(TRANSFER_KEY_DEFINITION)


@dataclass(frozen=True)
class TransferJob(TrainingJob):
    """A :class:`TrainingJob` plus the source model (its table and key) and the recipe config."""

    source_table: str = "TrainedModel"
    source_key: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


@schema
class TransferredModel(TrainingTable, dj.Computed):
    definition = trained_model_definition(
        "a model whose core comes from a source model, trained on a target dataset",
        TRANSFER_KEY_DEFINITION,
        timestamp_column="transferredmodel_ts",
    )
    progress_table = TransferProgress
    checkpoint_table = TransferCheckpoint
    timestamp_column = "transferredmodel_ts"

    class StoredState(dj.Part):
        definition = STORED_STATE_DEFINITION

    def job_spec(self, key: Mapping[str, Any]) -> TransferJob:
        """The target's configs and seed, the source's table and key, and the recipe."""
        dataset_fn, dataset_config = Dataset.get_config(key)
        model_fn, model_config = Model.get_config(key)
        trainer_fn, trainer_config = Trainer.get_config(key)
        _, recipe = Transfer.get_config(key)
        table, source_key = (TransferSource() & {"source_hash": key["source_hash"]}).fetch1(
            "source_table", "source_key"
        )
        return TransferJob(
            dataset_fn=dataset_fn,
            dataset_config=dataset_config,
            model_fn=model_fn,
            model_config=model_config,
            trainer_fn=trainer_fn,
            trainer_config=trainer_config,
            seed=int(key["seed"]),
            source_table=str(table),
            source_key=config_dict(source_key),
            recipe=recipe,
        )

    def initial_model(self, job: TransferJob, dataloaders: Mapping):
        """The target model with the source's core (frozen or with its learning rate, per the recipe)."""
        model = builder.get_model(job.model_fn, job.model_config, dataloaders=dataloaders, seed=job.seed)
        recipe = TransferRecipe.from_config(job.recipe)
        mean = None
        if recipe.init_readouts:
            info = data_info_from_loaders(dataloaders, mean_activity=True)
            mean = {data_key: entry["mean_activity"] for data_key, entry in info.items()}
        state = source_table(job.source_table).fetch_state(job.source_key)
        transfer(model, state, recipe, mean_activity=mean)
        return model


@schema
class ChainedSource(dj.Manual):
    definition = """
    # the source is a TransferredModel row (a chain of transfers)
    -> TransferSource
    ---
    -> TransferredModel.proj(parent_source_hash='source_hash')
    """


def delete_orphaned_chains() -> int:
    """Delete the chained sources whose source transferred model is gone, with what was made from them.

    DataJoint cascades a deleted transferred model into :class:`ChainedSource` but not into its
    master :class:`TransferSource` (declared before the transferred models); this removes those
    sources, and so the tasks and transferred models of the next link, down the chain. Called after
    every training-table delete (:data:`schemas.training.AFTER_DELETE`).

    Returns:
        The number of sources deleted.
    """
    if TransferSource.connection is None or not TransferSource().is_declared:
        return 0
    deleted = 0
    while True:
        orphans = ((TransferSource() & {"source_table": "TransferredModel"}) - ChainedSource().proj()).keys()
        if not orphans:
            return deleted
        # restricted by plain keys: DataJoint's cascade cannot start from an antijoin on MySQL
        (TransferSource() & orphans).delete(prompt=False)
        deleted += len(orphans)


AFTER_DELETE.append(delete_orphaned_chains)


#: the tables a transfer's source can come from, by name
SOURCE_TABLES: dict[str, type] = {"TrainedModel": TrainedModel, "TransferredModel": TransferredModel}


def source_table(name: str) -> type:
    """The training table called ``name`` (:data:`SOURCE_TABLES`)."""
    try:
        return SOURCE_TABLES[name]
    except KeyError:
        raise ValueError(f"a transfer source comes from {sorted(SOURCE_TABLES)}, not {name!r}") from None


def _one_source(source: Any, table: type) -> dict[str, Any]:
    if isinstance(source, dj.expression.QueryExpression):
        source = source.proj()
    keys = (table() & source).keys()
    if len(keys) != 1:
        raise ValueError(
            f"the transfer source must be exactly one row of {table.__name__} (train it first); "
            f"{source!r:.300} matches {len(keys)}"
        )
    return keys[0]


def _registered(table: type, key: Mapping[str, Any], what: str) -> dict[str, Any]:
    key = {k: key[k] for k in table.primary_key if k in key}
    if len(table() & key) != 1:
        raise ValueError(f"{table.__name__} has no entry {key} ({what}): register it first")
    return key


def register_transfer(
    source: Any,
    dataset: Mapping[str, Any],
    model: Mapping[str, Any],
    trainer: Mapping[str, Any],
    seed: int,
    recipe: Mapping[str, Any],
    table: type | str = "TrainedModel",
    fabrikant: str | None = None,
) -> dict[str, Any]:
    """Register one transfer (a :class:`TransferTask` row) after checking that it can work.

    The source must be trained; a model is built for the target dataset from the target model config
    (from ``DataInfo`` when populated, else from the data) and the recipe is applied to it with the
    source's state (:func:`pipeline.models.transfer.transfer`): a core of another architecture or
    other channel counts is refused here, before anything is written.

    Args:
        source: restriction matching exactly one row of ``table`` (a key dict, a query).
        dataset, model, trainer: keys of registered ``Dataset`` / ``Model`` / ``Trainer`` rows (the target).
        seed: the seed of the transferred model (inserted into ``Seed`` when missing).
        recipe: the key of a ``Transfer`` row.
        table: the source's table, ``TrainedModel`` (default) or ``TransferredModel`` (a chain); a class
            or its name.
        fabrikant: who registers it (default from the environment).

    Returns:
        The task's key, which is also the transferred model's key.

    Raises:
        ValueError: the source is not one trained row, a key is not registered, or the source's
            core does not fit the target model (:class:`~pipeline.models.transfer.TransferError`).
    """
    table = source_table(table if isinstance(table, str) else table.__name__)
    source_key = _one_source(source, table)
    dataset = _registered(Dataset, dataset, "target dataset")
    model = _registered(Model, model, "target model")
    trainer = _registered(Trainer, trainer, "trainer")
    recipe = _registered(Transfer, recipe, "transfer recipe")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _, recipe_config = Transfer.get_config(recipe)
    dataset_fn, dataset_config = Dataset.get_config(dataset)
    model_fn, model_config = Model.get_config(model)
    job = TrainingJob(dataset_fn, dataset_config, model_fn, model_config, "", {}, int(seed))
    _, target = rebuild_model(job, dataset)
    state = table.fetch_state(source_key)
    try:
        transfer(target, state, TransferRecipe.from_config(recipe_config))
    except TransferError as error:
        raise TransferError(
            f"cannot transfer {table.__name__} {source_key} into model {model} of dataset {dataset}: {error}"
        ) from None
    hash_ = source_hash(table.__name__, source_key)
    source_row = {
        "source_hash": hash_,
        "source_table": table.__name__,
        **{f"source_{name}": source_key[name] for name in TRAINED_MODEL_KEY},
        "source_key": source_key,
    }
    key = {"source_hash": hash_, **recipe, **dataset, **model, **trainer, "seed": int(seed)}
    connection = TransferSource.connection
    Seed().insert1({"seed": int(seed)}, skip_duplicates=True)
    who = Fabrikant.ensure(fabrikant)
    with atomic(connection):  # inside a registration file's transaction too
        TransferSource().insert1(source_row, skip_duplicates=True)
        if table is TrainedModel:
            TransferSource.Trained().insert1({"source_hash": hash_, **source_key}, skip_duplicates=True)
        else:
            parent = {k: v for k, v in source_key.items() if k != "source_hash"}
            ChainedSource().insert1(
                {"source_hash": hash_, "parent_source_hash": source_key["source_hash"], **parent},
                skip_duplicates=True,
            )
        TransferTask().insert1({**key, "task_fabrikant": who}, skip_duplicates=True)
    return key
