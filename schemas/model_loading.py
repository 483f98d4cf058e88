"""Turning a stored training back into a torch module: its state dict, its model, its loaders.

Used by every training table's ``load_model`` / ``fetch_state`` (see :mod:`schemas.training`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import builder

from . import _dj_compat, state_io
from .data_info import build_dataloaders, stored_data_info

__all__ = ["TrainingJob", "dataloader_flag", "rebuild_model", "state_from_row"]


@dataclass(frozen=True)
class TrainingJob:
    """What one training needs: the dataset, model and trainer functions with their configs, and the seed.

    A training table's ``job_spec(key)`` returns one (a subclass may add fields, e.g. the source
    model of a transfer). It is what ``make_fetch`` returns: cheap to build and comparable, since
    DataJoint fetches twice and checks that nothing changed.
    """

    dataset_fn: str
    dataset_config: dict[str, Any]
    model_fn: str
    model_config: dict[str, Any]
    trainer_fn: str
    trainer_config: dict[str, Any]
    seed: int

    def dataloaders(self):
        """The dataset's loaders, built with this job's seed."""
        return build_dataloaders(self.dataset_fn, self.dataset_config, self.seed)


def dataloader_flag(include_dataloader: bool, include_dataloaders: bool | None) -> bool:
    """``load_model``'s loader switch: nnfabrik's ``include_dataloader``, or the deprecated ``include_dataloaders``."""
    if include_dataloaders is None:
        return bool(include_dataloader)
    warnings.warn(
        "load_model(include_dataloaders=...) is deprecated: use nnfabrik's include_dataloader=...",
        DeprecationWarning,
        stacklevel=3,
    )
    return bool(include_dataloaders)


def state_from_row(row: Mapping[str, Any], stored_part, device: Any = "cpu") -> dict[str, Any]:
    """The state dict (torch tensors on ``device``) of one training-table row.

    Args:
        row: the row, with ``model_state`` (numpy arrays, or None when the state is in the store).
        stored_part: the row's ``StoredState`` part (restricted to the row), used when
            ``model_state`` is None.
        device: ``map_location`` for the tensors.
    """
    import torch

    if row["model_state"] is not None:
        return {k: v.to(device) for k, v in state_io.numpy_to_torch(row["model_state"]).items()}
    data = _dj_compat.read_stored_object(stored_part.fetch1("model_state"))
    state = state_io.from_bytes(data, device=device)
    return {k: torch.as_tensor(v).to(device) for k, v in state.items()}


def rebuild_model(
    job: TrainingJob,
    dataset_key: Mapping[str, Any],
    state_dict: Mapping[str, Any] | None = None,
    include_dataloader: bool = False,
):
    """Build the model of ``job`` (with ``state_dict`` loaded strictly), and its loaders if asked.

    Without loaders the model is built from the dataset's stored ``DataInfo`` (no data read);
    when DataInfo is not populated yet the data are read once.

    Args:
        job: the training's functions, configs and seed.
        dataset_key: ``{"dataset_fn", "dataset_hash"}`` of the data the model predicts.
        state_dict: the trained parameters, or None for a freshly initialised model.
        include_dataloader: also return the loaders.

    Returns:
        ``(dataloaders or None, model)``.
    """
    data_info = None if include_dataloader else stored_data_info(dataset_key)
    if data_info is not None:
        model = builder.get_model(
            job.model_fn, job.model_config, data_info=data_info, seed=job.seed, state_dict=state_dict
        )
        return None, model
    dataloaders = job.dataloaders()
    model = builder.get_model(
        job.model_fn, job.model_config, dataloaders=dataloaders, seed=job.seed, state_dict=state_dict
    )
    return (dataloaders if include_dataloader else None), model
