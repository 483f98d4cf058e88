"""Training: sensorium's standard trainer with callbacks and exact resume, early stopping, cyclers.

``trainer.py`` (``standard_trainer``), ``records.py`` (the callback contract: ``EpochRecord``,
``StopTraining``, ``TrainingDivergedError``), ``run.py`` (``TrainingRun``: the state a checkpoint
saves), ``early_stopping.py``, ``cyclers.py``, ``checkpoint.py`` (state files).
"""

from pipeline.training.checkpoint import load_training_state, save_training_state
from pipeline.training.cyclers import LongCycler, cycle
from pipeline.training.early_stopping import EarlyStopping, copy_state
from pipeline.training.records import EpochRecord, StopTraining, TrainingDivergedError
from pipeline.training.run import TrainingRun
from pipeline.training.trainer import standard_trainer

__all__ = [
    "standard_trainer",
    "EpochRecord",
    "StopTraining",
    "TrainingDivergedError",
    "TrainingRun",
    "EarlyStopping",
    "copy_state",
    "LongCycler",
    "cycle",
    "save_training_state",
    "load_training_state",
]
