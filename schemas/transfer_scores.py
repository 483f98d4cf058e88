"""The scores and readout parameters of transferred models, and :func:`transferred_results`.

``TransferredScore`` and ``TransferredReadoutParameters`` are the same table code as ``NeuronScore`` and
``ReadoutParameters`` (:class:`~schemas.neuron_scores.NeuronScoreTable`,
:class:`~schemas.readout_parameters.ReadoutParametersTable`) with ``source = TransferredModel``.
"""

from __future__ import annotations

from typing import Any

import datajoint as dj
import pandas as pd

from ._schema import schema
from .columns import SUMMARY_COLUMNS
from .configs import Dataset, Model, Trainer
from .data_info import DataInfo  # noqa: F401  (in the definitions)
from .neuron_scores import NEURON_SCORE_UNIT_DEFINITION, NeuronScoreTable, neuron_score_definition
from .readout_parameters import READOUT_UNIT_DEFINITION, ReadoutParametersTable, readout_parameters_definition
from .result_table import flatten_config
from .transfers import SOURCE_COLUMNS, Transfer, TransferredModel, TransferSource

__all__ = ["TransferredReadoutParameters", "TransferredScore", "transferred_results"]


@schema
class TransferredScore(NeuronScoreTable, dj.Computed):
    source = TransferredModel
    definition = neuron_score_definition("TransferredModel")

    class Unit(dj.Part):
        definition = NEURON_SCORE_UNIT_DEFINITION


@schema
class TransferredReadoutParameters(ReadoutParametersTable, dj.Computed):
    source = TransferredModel
    definition = readout_parameters_definition("TransferredModel")

    class Unit(dj.Part):
        definition = READOUT_UNIT_DEFINITION


def transferred_results(restriction: Any = None) -> pd.DataFrame:
    """One row per transferred model: its key, the source's model/dataset/trainer/seed, score and
    summary scores, and the target and recipe configs as ``<role>.<key>`` columns (empty when none)."""
    trained = TransferredModel() if restriction is None else TransferredModel() & restriction
    query = trained.proj("score", "seconds", "host", "device", TransferredModel.timestamp_column)
    query = query * TransferSource().proj("source_table", *SOURCE_COLUMNS)
    query = query * Dataset().proj("dataset_config") * Model().proj("model_config")
    query = query * Trainer().proj("trainer_config") * Transfer().proj("transfer_config")
    rows = query.to_dicts()
    if not rows:
        return pd.DataFrame()
    key_names = TransferredModel().primary_key
    summaries = {
        tuple(row[k] for k in key_names): row for row in TransferredScore().proj(*SUMMARY_COLUMNS).to_dicts()
    }
    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if not k.endswith("_config")}
        summary = summaries.get(tuple(row[k] for k in key_names), {})
        out.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
        for role in ("dataset", "model", "trainer", "transfer"):
            out.update(flatten_config(row[f"{role}_config"], role))
        flat.append(out)
    return pd.DataFrame(flat)
