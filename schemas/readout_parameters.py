"""ReadoutParameters: each trained model's per-neuron readout parameters (receptive-field position, spread, features).

Column names are the readouts' own (:data:`pipeline.models.readouts.base.NEURON_PARAMETER_KEYS`,
what ``readout.neuron_parameters()`` returns): one float column per scalar parameter, the feature
vector as a blob. Written for any training table (``source``), like :mod:`schemas.neuron_scores`::

    @schema
    class TransferredReadoutParameters(ReadoutParametersTable, dj.Computed):
        source = TransferredModel
        definition = readout_parameters_definition("TransferredModel")

        class Unit(dj.Part):
            definition = READOUT_UNIT_DEFINITION
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import datajoint as dj
import numpy as np

from pipeline.contracts import finite_or_none

from . import job_events
from ._schema import schema
from .columns import FEATURE_VECTOR, SCALAR_PARAMETERS
from .data_info import DataInfo, neuron_units  # noqa: F401  (DataInfo: in the definitions)
from .trained_model import TrainedModel
from .training import primary_key

__all__ = [
    "READOUT_UNIT_DEFINITION",
    "ReadoutParameters",
    "ReadoutParametersTable",
    "readout_parameters_definition",
    "readout_rows",
]

_COMMENTS = {
    "mu_x": "position in grid units [-1, 1], x along width",
    FEATURE_VECTOR: "(C,) float32 feature vector",
}


def _column(name: str) -> str:
    declaration = f"{name}: <blob>" if name == FEATURE_VECTOR else f"{name}=null: float64"
    comment = _COMMENTS.get(name)
    return f"        {declaration}" + (f"   # {comment}" if comment else "")


def readout_parameters_definition(source: str) -> str:
    """The definition of the readout-parameter table of the training table named ``source``."""
    return f"""
    # per-neuron readout parameters of a trained model (receptive-field position, spread, features)
    -> {source}
    -> DataInfo
    ---
    n_neurons: int32
    """


#: the definition of every readout-parameter table's ``Unit`` part
READOUT_UNIT_DEFINITION = f"""
        -> master
        -> DataInfo.Neuron
        ---
        readout_type: varchar(64)    # readout class name
{chr(10).join(_column(name) for name in (*SCALAR_PARAMETERS, FEATURE_VECTOR))}
        """


def readout_rows(model, units: Mapping[str, list[int]]) -> list[dict[str, Any]]:
    """One row per neuron: ``readout_type``, :data:`SCALAR_PARAMETERS` and :data:`FEATURE_VECTOR`.

    Args:
        model: a model with ``model.readout[data_key].neuron_parameters()``.
        units: ``{data_key: [unit_id in model output order]}``.

    Raises:
        ValueError: a readout whose neuron count differs from DataInfo's.
    """
    rows = []
    for data_key, ids in units.items():
        readout = model.readout[data_key]
        params = readout.neuron_parameters()
        features = np.asarray(params[FEATURE_VECTOR], dtype=np.float32)
        if features.shape[0] != len(ids):
            raise ValueError(
                f"session {data_key!r}: readout has {features.shape[0]} neurons, DataInfo {len(ids)}"
            )
        for i, unit_id in enumerate(ids):
            row = {
                "data_key": data_key,
                "unit_id": unit_id,
                "readout_type": type(readout).__name__[:64],
                FEATURE_VECTOR: features[i],
            }
            for name in SCALAR_PARAMETERS:
                value = params.get(name)
                row[name] = None if value is None else finite_or_none(np.asarray(value)[i])
            rows.append(row)
    return rows


class ReadoutParametersTable:
    """Base of a readout-parameter table (mix in before ``dj.Computed``) for ``source``'s models.

    Class attribute:
        source: the training table (a :class:`schemas.training.TrainingTable`) whose models it reads.
    """

    source: ClassVar[type]

    def make_fetch(self, key):
        """Neuron ids of the dataset (the model is rebuilt from DataInfo in make_compute)."""
        return (neuron_units(key),)

    @job_events.compute_step
    def make_compute(self, key, units):
        """Rebuild the model (no data needed) and read each session's readout parameters."""
        return (readout_rows(self.source.load_model(primary_key(self.source(), key)), units),)

    @job_events.insert_step
    def make_insert(self, key, rows):
        """Master and parts in one transaction."""
        key = primary_key(self, key)
        self.insert1({**key, "n_neurons": len(rows)})
        self.Unit.insert([{**key, **row} for row in rows])


@schema
class ReadoutParameters(ReadoutParametersTable, dj.Computed):
    source = TrainedModel
    definition = readout_parameters_definition("TrainedModel")

    class Unit(dj.Part):
        definition = READOUT_UNIT_DEFINITION
