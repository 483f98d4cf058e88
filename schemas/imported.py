"""ImportedCheckpoint: external state dicts registered as trained models, and :func:`import_checkpoint`.

An imported checkpoint is a ``TrainedModel`` row like any other (data info, scores, readout
parameters, reports, a transfer source), trained by the "trainer"
:func:`pipeline.training.imported.imported_checkpoint` whose config names the file and its sha256.
``ImportedCheckpoint`` records which (dataset, model, trainer, seed) an import is for: only those keys
of that trainer are in ``TrainedModel``'s key source, so no worker pairs the file with another
dataset or model.
"""

from __future__ import annotations

import datajoint as dj

from ._schema import schema
from .configs import Dataset, Fabrikant, Model, Seed, Trainer  # noqa: F401  (in the definitions)

__all__ = ["IMPORTED_TRAINER", "ImportedCheckpoint"]

#: the trainer function of imported checkpoints
IMPORTED_TRAINER = "pipeline.training.imported.imported_checkpoint"


@schema
class ImportedCheckpoint(dj.Manual):
    definition = """
    # an external state dict registered as the trained model of a dataset and model config
    -> Model
    -> Dataset
    -> Trainer
    -> Seed
    ---
    source_path: varchar(1024)     # the file as given (absolute path)
    sha256: char(64)               # of the file's bytes
    file_nbytes: int64
    -> Fabrikant.proj(import_fabrikant='fabrikant_name')
    imported_ts=CURRENT_TIMESTAMP: datetime
    """
