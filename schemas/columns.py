"""The names of the result columns, defined once for the tables, the views, ``results()`` and the reports.

Per-neuron names come from the compute layer: the readouts' parameters
(:data:`pipeline.models.readouts.base.NEURON_PARAMETER_KEYS`) and the per-neuron scores
(:data:`pipeline.contracts.NEURON_SCORE_NAMES`). This module imports no table.
"""

from __future__ import annotations

from pipeline.contracts import NEURON_SCORE_NAMES
from pipeline.models.readouts.base import NEURON_PARAMETER_KEYS

__all__ = [
    "CONFIG_ROLES",
    "DATASET_KEY",
    "FEATURE_VECTOR",
    "NEURON_SCORE_NAMES",
    "SCALAR_PARAMETERS",
    "SUMMARY_COLUMNS",
    "SUMMARY_TIERS",
    "neuron_score_columns",
]

#: the config tables' roles: their columns are ``<role>_fn``, ``<role>_hash``, ``<role>_config``
#: (``results()`` spreads a config over columns ``<role>.<key>``)
CONFIG_ROLES = ("dataset", "model", "trainer")

#: the key of a dataset (of ``Dataset`` and ``DataInfo``); every trained-model key contains it
DATASET_KEY = ("dataset_fn", "dataset_hash")

#: the readout parameter stored as a blob (one vector per neuron); every other one is a float column
FEATURE_VECTOR = "features"
#: the scalar per-neuron readout parameters, in column order
SCALAR_PARAMETERS = tuple(name for name in NEURON_PARAMETER_KEYS if name != FEATURE_VECTOR)

#: tiers whose mean correlation is a summary column (``<tier>_correlation``)
SUMMARY_TIERS = ("train", "validation", "test")
#: the per-model summary columns of a score table, in order
SUMMARY_COLUMNS = (
    *(f"{tier}_correlation" for tier in SUMMARY_TIERS),
    "test_correlation_to_average",
    "test_feve",
    "fraction_oracle",
)


def neuron_score_columns() -> list[tuple[str, str]]:
    """``(tier, score name)`` of the per-neuron score columns of the neurons view, named ``<tier>_<name>``.

    The correlation of every summary tier, and the repeat-based scores of the test tier.
    """
    return [(tier, "correlation") for tier in SUMMARY_TIERS] + [
        ("test", name) for name in NEURON_SCORE_NAMES if name != "correlation"
    ]
