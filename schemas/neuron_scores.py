"""NeuronScore: every trained model scored on every tier, one row per neuron and tier.

The table is written for any training table (``source``): a second one gets its score table from
the same base, definitions and compute::

    @schema
    class TransferredNeuronScore(NeuronScoreTable, dj.Computed):
        source = TransferredModel
        definition = neuron_score_definition("TransferredModel")

        class Unit(dj.Part):
            definition = NEURON_SCORE_UNIT_DEFINITION

Column names come from :data:`pipeline.contracts.NEURON_SCORE_NAMES` (per neuron) and
:data:`schemas.columns.SUMMARY_COLUMNS` (per model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import datajoint as dj
import numpy as np

from pipeline import measures
from pipeline.contracts import finite_or_none, resolve_device
from pipeline.scoring import score_model

from . import job_events
from ._schema import schema
from .columns import NEURON_SCORE_NAMES, SUMMARY_COLUMNS, SUMMARY_TIERS
from .data_info import DataInfo, neuron_units  # noqa: F401  (DataInfo: in the definitions)
from .trained_model import TrainedModel
from .training import primary_key

__all__ = [
    "NEURON_SCORE_UNIT_DEFINITION",
    "NeuronScore",
    "NeuronScoreTable",
    "neuron_score_definition",
    "score_rows",
]

_SUMMARY_COMMENTS = {
    "train_correlation": "mean single-trial correlation per tier",
    "test_feve": "mean FEVE over neurons with FEV >= 0.15",
    "fraction_oracle": "slope of test correlation vs. oracle correlation",
}
_SCORE_COMMENTS = {"correlation_to_average": "NULL in tiers without repeated images"}


def _columns(names, comments: Mapping[str, str], indent: str) -> str:
    lines = []
    for name in names:
        comment = comments.get(name)
        lines.append(f"{indent}{name}=null: float64" + (f"   # {comment}" if comment else ""))
    return "\n".join(lines)


def neuron_score_definition(source: str) -> str:
    """The definition of the score table of the training table named ``source``."""
    return f"""
    # scores of a trained model: summary here, one row per neuron and tier in part Unit
    -> {source}
    -> DataInfo
    ---
{_columns(SUMMARY_COLUMNS, _SUMMARY_COMMENTS, "    ")}
    """


#: the definition of every score table's ``Unit`` part
NEURON_SCORE_UNIT_DEFINITION = f"""
        -> master
        -> DataInfo.Neuron
        tier: varchar(16)
        ---
{_columns(NEURON_SCORE_NAMES, _SCORE_COMMENTS, "        ")}
        """


def score_rows(
    scores: Mapping[str, Mapping[str, Mapping[str, Any]]], units: Mapping[str, list[int]]
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """Turn :func:`pipeline.scoring.score_model`'s arrays into a summary row and one row per neuron and tier.

    Args:
        scores: ``{tier: {data_key: {score name: (N,) array or None}}}``.
        units: ``{data_key: [unit_id in model output order]}`` (:func:`schemas.data_info.neuron_units`).

    Raises:
        ValueError: a session whose neurons do not match the model's output.
    """
    rows, summary = [], {}
    for tier, sessions in scores.items():
        correlations, oracles = [], []
        for data_key, values in sessions.items():
            ids = units.get(data_key)
            if ids is None or len(ids) != len(values["correlation"]):
                raise ValueError(f"session {data_key!r}: DataInfo neurons do not match the model output")
            for i, unit_id in enumerate(ids):
                rows.append(
                    {
                        "data_key": data_key,
                        "unit_id": unit_id,
                        "tier": tier[:16],
                        **{
                            name: None if values[name] is None else finite_or_none(values[name][i])
                            for name in NEURON_SCORE_NAMES
                        },
                    }
                )
            correlations.append(values["correlation"])
            if values["oracle"] is not None:
                oracles.append(values["oracle"])
        if tier in SUMMARY_TIERS:
            summary[f"{tier}_correlation"] = finite_or_none(np.nanmean(np.concatenate(correlations)))
        if tier == "test" and oracles and len(oracles) == len(correlations):
            summary["test_correlation_to_average"] = finite_or_none(
                np.nanmean(np.concatenate([v["correlation_to_average"] for v in sessions.values()]))
            )
            feve = np.concatenate([v["feve"] for v in sessions.values()])
            summary["test_feve"] = finite_or_none(np.nanmean(feve)) if np.isfinite(feve).any() else None
            summary["fraction_oracle"] = finite_or_none(
                measures.fraction_oracle(np.concatenate(correlations), np.concatenate(oracles))
            )
    return summary, rows


class NeuronScoreTable:
    """Base of a score table (mix in before ``dj.Computed``): scores ``source``'s models on every tier.

    Class attribute:
        source: the training table (a :class:`schemas.training.TrainingTable`) whose models it scores.
    """

    source: ClassVar[type]

    def make_fetch(self, key):
        """Neuron ids of the dataset (the model is loaded in make_compute)."""
        return (neuron_units(key),)

    @job_events.compute_step
    def make_compute(self, key, units):
        """Rebuild the model with its loaders and score it on every tier."""
        device = resolve_device("auto")
        dataloaders, model = self.source.load_model(
            primary_key(self.source(), key), device=device, include_dataloaders=True
        )
        return score_rows(score_model(model, dataloaders, device=device), units)

    @job_events.insert_step
    def make_insert(self, key, summary, rows):
        """Master and parts in one transaction."""
        key = primary_key(self, key)
        self.insert1({**key, **summary})
        self.Unit.insert([{**key, **row} for row in rows])


@schema
class NeuronScore(NeuronScoreTable, dj.Computed):
    source = TrainedModel
    definition = neuron_score_definition("TrainedModel")

    class Unit(dj.Part):
        definition = NEURON_SCORE_UNIT_DEFINITION
