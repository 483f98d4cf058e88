"""ReadoutParameters: each trained model's per-neuron readout parameters (receptive-field position, spread, features).

Column names are the readouts' own (:data:`pipeline.models.readouts.base.NEURON_PARAMETER_KEYS`,
what ``readout.neuron_parameters()`` returns): one float column per scalar parameter, the feature
vector as a blob. Written for any training table (``source``), like :mod:`schemas.neuron_scores`:
a second one is declared as :class:`ReadoutParameters` is below, with its own ``source``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datajoint as dj
import numpy as np

from pipeline.contracts import finite_or_none

from . import job_events
from ._schema import schema
from .columns import FEATURE_VECTOR, SCALAR_PARAMETERS
from .data_info import DataInfo  # noqa: F401  (in the definitions)
from .model_neurons import ModelNeuronTable, attribute_lines, master_definition, unit_definition
from .trained_model import TrainedModel

__all__ = [
    "READOUT_UNIT_DEFINITION",
    "ReadoutParameters",
    "ReadoutParametersTable",
    "readout_parameters_definition",
    "readout_rows",
]

_COMMENTS = {
    "readout_type": "readout class name",
    "mu_x": "position in grid units [-1, 1], x along width",
    FEATURE_VECTOR: "(C,) float32 feature vector",
}


def readout_parameters_definition(source: str) -> str:
    """The definition of the readout-parameter table of the training table named ``source``."""
    return master_definition(
        "per-neuron readout parameters of a trained model (receptive-field position, spread, features)",
        source,
        attribute_lines([("n_neurons", "int32")]),
    )


#: the definition of every readout-parameter table's ``Unit`` part
READOUT_UNIT_DEFINITION = unit_definition(
    attribute_lines(
        [("readout_type", "varchar(64)"), *SCALAR_PARAMETERS, (FEATURE_VECTOR, "<blob>")],
        _COMMENTS,
        indent="        ",
    )
)


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


class ReadoutParametersTable(ModelNeuronTable):
    """Base of a readout-parameter table (mix in before ``dj.Computed``) for ``source``'s models."""

    @job_events.compute_step
    def make_compute(self, key, units):
        """Rebuild the model (no data needed) and read each session's readout parameters."""
        return (readout_rows(self.source.load_model(self.source_key(key), include_dataloader=False), units),)

    @job_events.insert_step
    def make_insert(self, key, rows):
        """Master and parts in one transaction."""
        self.insert_master_and_units(key, {"n_neurons": len(rows)}, rows)


@schema
class ReadoutParameters(ReadoutParametersTable, dj.Computed):
    source = TrainedModel
    definition = readout_parameters_definition("TrainedModel")

    class Unit(dj.Part):
        definition = READOUT_UNIT_DEFINITION
