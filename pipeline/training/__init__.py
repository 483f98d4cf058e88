"""Training: sensorium's standard trainer with callbacks and exact resume, early stopping, cyclers."""

from pipeline.training.checkpoint import load_training_state, save_training_state
from pipeline.training.cyclers import LongCycler, cycle
from pipeline.training.early_stopping import EarlyStopping, copy_state
from pipeline.training.trainer import EpochRecord, StopTraining, TrainingDivergedError, standard_trainer

__all__ = [
    "standard_trainer",
    "EpochRecord",
    "StopTraining",
    "TrainingDivergedError",
    "EarlyStopping",
    "copy_state",
    "LongCycler",
    "cycle",
    "save_training_state",
    "load_training_state",
]
