"""Importing an external state dict as a trained model: :func:`import_checkpoint` (``sysid import-checkpoint``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.training.imported import MAX_CHECKPOINT_BYTES, load_strictly, read_state_file

from .configs import Dataset, DuplicateEntryWarning, Fabrikant, Model, Seed, Trainer
from .imported import IMPORTED_TRAINER, ImportedCheckpoint
from .model_loading import TrainingJob, rebuild_model

__all__ = ["import_checkpoint"]


def import_checkpoint(
    path: str | os.PathLike,
    dataset: Mapping[str, Any],
    model: Mapping[str, Any],
    seed: int = 0,
    fabrikant: str | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
    populate: bool = True,
) -> dict[str, Any]:
    """Register a state-dict file as the ``TrainedModel`` of a dataset and model config.

    The file is read safely (``weights_only=True``, at most ``max_bytes``) and loaded strictly into
    the model that the model config builds for the dataset (from ``DataInfo`` when populated, else
    from the data) before anything is written; a file that does not fit is refused. Then a trainer
    row (:data:`schemas.imported.IMPORTED_TRAINER` with the absolute path and sha256) and an
    :class:`~schemas.imported.ImportedCheckpoint` row are inserted, and with ``populate`` the model's
    DataInfo, TrainedModel, NeuronScore and ReadoutParameters rows are computed here (else the
    workers do it).

    Args:
        path: the checkpoint file (``torch.save(model.state_dict(), path)``).
        dataset, model: keys of registered ``Dataset`` and ``Model`` rows.
        seed: the trained model's seed (inserted into ``Seed`` when missing).
        fabrikant: who imports it (default from the environment).
        max_bytes: the largest file accepted.
        populate: compute the rows now.

    Returns:
        The ``TrainedModel`` key.

    Raises:
        pipeline.training.imported.CheckpointError: unreadable, too large or not loading strictly.
        ValueError: an unregistered dataset or model key.
    """
    dataset = _one(Dataset, dataset)
    model = _one(Model, model)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    file = Path(path).expanduser().resolve()
    state, digest, size = read_state_file(file, max_bytes)
    dataset_fn, dataset_config = Dataset.get_config(dataset)
    model_fn, model_config = Model.get_config(model)
    job = TrainingJob(dataset_fn, dataset_config, model_fn, model_config, IMPORTED_TRAINER, {}, int(seed))
    _, built = rebuild_model(job, dataset)
    load_strictly(built, state, what=str(file))  # refused here: nothing written yet
    who = Fabrikant.ensure(fabrikant)
    Seed().insert1({"seed": int(seed)}, skip_duplicates=True)
    with warnings.catch_warnings():  # importing the same file again reuses its trainer row
        warnings.simplefilter("ignore", DuplicateEntryWarning)
        trainer = Trainer.add_entry(
            IMPORTED_TRAINER,
            {"path": str(file), "sha256": digest},
            trainer_comment=f"imported {file.name}"[:256],
            trainer_fabrikant=who,
            skip_duplicates=True,
        )
    key = {**model, **dataset, **trainer, "seed": int(seed)}
    ImportedCheckpoint().insert1(
        {**key, "source_path": str(file), "sha256": digest, "file_nbytes": size, "import_fabrikant": who},
        skip_duplicates=True,
    )
    if populate:
        from .binding import computed_tables

        for name in ("DataInfo", "TrainedModel", "NeuronScore", "ReadoutParameters"):
            computed_tables()[name].populate(key, suppress_errors=False)
    return key


def _one(table: type, key: Mapping[str, Any]) -> dict[str, Any]:
    key = {k: key[k] for k in table.primary_key if k in key}
    if len(table() & key) != 1:
        raise ValueError(f"{table.__name__} has no entry {key}: register it first (sysid register)")
    return key
