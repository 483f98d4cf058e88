"""DataJoint tables of the pipeline: configs by hash, trained models, scores, readout parameters.

Importing this package touches no database. Call :func:`activate` to connect (``DJ_HOST``... from
the environment, or the embedded PostgreSQL server) and bind the tables::

    import schemas
    schemas.activate()                       # or activate("myprefix_")
    key = schemas.Model.add_entry("pipeline.models.stacked_core_full_gauss_readout", {...})
    schemas.populate_all()                   # what each worker runs
    schemas.results()                        # pandas: configs as columns, scores
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first use: datajoint is imported lazily)
_EXPORTS = {
    "activate": "binding",
    "active_connection": "connection",
    "drop_all": "binding",
    "schema_name": "connection",
    "connection_settings_from_env": "connection",
    "Fabrikant": "configs",
    "Seed": "configs",
    "Dataset": "configs",
    "Model": "configs",
    "Trainer": "configs",
    "Experiments": "configs",
    "DuplicateEntryWarning": "configs",
    "TrainedModel": "trained_model",
    "TrainingProgress": "progress",
    "Checkpoint": "progress",
    "TrainingInterrupted": "stopping",
    "request_stop": "stopping",
    "clear_stop": "stopping",
    "stop_requested": "stopping",
    "DataInfo": "data_info",
    "NeuronScore": "neuron_scores",
    "ReadoutParameters": "readout_parameters",
    "Ensemble": "ensembles",
    "EnsembleScore": "ensembles",
    "MEIMethod": "mei_tables",
    "MEISeed": "mei_tables",
    "MEI": "mei_tables",
    "ImportedCheckpoint": "imported",
    "import_checkpoint": "checkpoint_import",
    "Transfer": "transfers",
    "TransferSource": "transfers",
    "ChainedSource": "transfers",
    "TransferTask": "transfers",
    "TransferredModel": "transfers",
    "TransferProgress": "transfers",
    "TransferCheckpoint": "transfers",
    "TransferredScore": "transfer_scores",
    "TransferredReadoutParameters": "transfer_scores",
    "register_transfer": "transfers",
    "transferred_results": "transfer_scores",
    "TRANSFERRED_MODEL_VIEW": "views",
    "TRANSFERRED_NEURON_VIEW": "views",
    "Study": "search_tables",
    "SearchTrial": "search_tables",
    "TrialOutcome": "search_tables",
    "search_trials": "search_tables",
    "optuna_storage": "search_tables",
    "populate_all": "jobs",
    "recover_connection": "jobs",
    "retry_transient": "reconnect",
    "LeaseLost": "leases",
    "clear_orphaned_reservations": "jobs",
    "job_status": "jobs",
    "running_jobs": "jobs",
    "errors": "jobs",
    "retry_errors": "jobs",
    "ignore_errors": "jobs",
    "computed_tables": "binding",
    "results": "result_table",
    "neurons": "views",
    "meis": "views",
    "MEI_VIEW": "views",
    "create_views": "binding",
    "TRAINED_MODEL_VIEW": "views",
    "NEURON_VIEW": "views",
    "Settings": "settings",
    "current_settings": "settings",
    "degenerate_models": "model_health",
}

__all__ = sorted(_EXPORTS)
_SUBMODULES = {
    "binding",
    "checkpoint_import",
    "columns",
    "configs",
    "connection",
    "data_info",
    "embedded",
    "ensembles",
    "imported",
    "job_events",
    "leases",
    "jobs",
    "mei_tables",
    "model_health",
    "model_loading",
    "model_neurons",
    "neuron_scores",
    "progress",
    "readout_parameters",
    "reconnect",
    "requeue",
    "result_table",
    "run_info",
    "search_tables",
    "settings",
    "state_io",
    "stopping",
    "trained_model",
    "training",
    "transfer_scores",
    "transfers",
    "views",
}


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        if name in _SUBMODULES:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
