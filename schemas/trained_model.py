"""TrainedModel: one row per (model, dataset, trainer, seed), trained by populate workers.

The training machinery (three-method make, progress, checkpoints and resume, SIGTERM, storage,
``load_model``) is :class:`schemas.training.TrainingTable`'s; this table says what its key means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datajoint as dj

from ._schema import schema
from .configs import Dataset, Model, Seed, Trainer  # noqa: F401  (Seed: in the definitions)
from .imported import IMPORTED_TRAINER, ImportedCheckpoint
from .progress import TRAINED_MODEL_KEY_DEFINITION, Checkpoint, TrainingProgress
from .training import STORED_STATE_DEFINITION, TrainingJob, TrainingTable, trained_model_definition

__all__ = ["TRAINED_MODEL_KEY", "TrainedModel"]

#: the primary key of TrainedModel, in its column order
TRAINED_MODEL_KEY = (
    "model_fn",
    "model_hash",
    "dataset_fn",
    "dataset_hash",
    "trainer_fn",
    "trainer_hash",
    "seed",
)


@schema
class TrainedModel(TrainingTable, dj.Computed):
    definition = trained_model_definition(
        "a model trained on a dataset by a trainer from a seed", TRAINED_MODEL_KEY_DEFINITION
    )
    progress_table = TrainingProgress
    checkpoint_table = Checkpoint
    timestamp_column = "trainedmodel_ts"

    class StoredState(dj.Part):
        definition = STORED_STATE_DEFINITION

    @property
    def key_source(self):
        """Model x Dataset x Trainer x Seed, but an imported checkpoint's trainer only with its own key."""
        every = Model.proj() * Dataset.proj() * Trainer.proj() * Seed.proj()
        foreign = (every & {"trainer_fn": IMPORTED_TRAINER}) - ImportedCheckpoint.proj()
        return every - foreign

    def job_spec(self, key: Mapping[str, Any]) -> TrainingJob:
        """The configs of ``key``'s dataset, model and trainer, and its seed."""
        dataset_fn, dataset_config = Dataset.get_config(key)
        model_fn, model_config = Model.get_config(key)
        trainer_fn, trainer_config = Trainer.get_config(key)
        return TrainingJob(
            dataset_fn=dataset_fn,
            dataset_config=dataset_config,
            model_fn=model_fn,
            model_config=model_config,
            trainer_fn=trainer_fn,
            trainer_config=trainer_config,
            seed=int(key["seed"]),
        )
