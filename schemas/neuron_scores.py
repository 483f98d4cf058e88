"""NeuronScore: every trained model scored on every tier, one row per neuron and tier.

The table is written for any training table (``source``): a second one gets its score table from
the same base, definitions and compute, declared as :class:`NeuronScore` is below with its own
``source`` (docs/INTERFACES.md, "Extension points"). Column names come from :data:`pipeline.contracts.NEURON_SCORE_NAMES` (per neuron) and
:data:`schemas.columns.SUMMARY_COLUMNS` (per model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datajoint as dj
import numpy as np

from pipeline import measures
from pipeline.contracts import finite_or_none, resolve_device
from pipeline.scoring import score_model

from . import job_events
from ._schema import schema
from .columns import NEURON_SCORE_NAMES, SUMMARY_COLUMNS, SUMMARY_TIERS
from .data_info import DataInfo  # noqa: F401  (in the definitions)
from .model_neurons import ModelNeuronTable, attribute_lines, master_definition, unit_definition
from .trained_model import TrainedModel

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


def neuron_score_definition(source: str) -> str:
    """The definition of the score table of the training table named ``source``."""
    return master_definition(
        "scores of a trained model: summary here, one row per neuron and tier in part Unit",
        source,
        attribute_lines(SUMMARY_COLUMNS, _SUMMARY_COMMENTS),
    )


#: the definition of every score table's ``Unit`` part
NEURON_SCORE_UNIT_DEFINITION = unit_definition(
    attribute_lines(NEURON_SCORE_NAMES, _SCORE_COMMENTS, indent="        "), key="tier: varchar(16)"
)


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


class NeuronScoreTable(ModelNeuronTable):
    """Base of a score table (mix in before ``dj.Computed``): scores ``source``'s models on every tier."""

    @job_events.compute_step
    def make_compute(self, key, units):
        """Rebuild the model with its loaders and score it on every tier."""
        device = resolve_device("auto")
        dataloaders, model = self.source.load_model(
            self.source_key(key), include_dataloader=True, device=device
        )
        return score_rows(score_model(model, dataloaders, device=device), units)

    @job_events.insert_step
    def make_insert(self, key, summary, rows):
        """Master and parts in one transaction."""
        self.insert_master_and_units(key, summary, rows)


@schema
class NeuronScore(NeuronScoreTable, dj.Computed):
    source = TrainedModel
    definition = neuron_score_definition("TrainedModel")

    class Unit(dj.Part):
        definition = NEURON_SCORE_UNIT_DEFINITION
