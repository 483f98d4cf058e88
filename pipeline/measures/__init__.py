"""Measures of how well a model predicts neural responses.

Two modules, both re-exported here (``from pipeline import measures; measures.corr(...)``):

* :mod:`pipeline.measures.arrays` — functions on arrays: ``corr``, ``poisson_loss``, ``fev``,
  ``feve``, ``oracle_corr_jackknife``, ``oracle_corr_conservative``, ``fraction_oracle``,
  ``corr_to_average`` and ``split_by_image``.
* :mod:`pipeline.measures.evaluation` — a model over data loaders, with the sensorium names:
  ``model_predictions``, ``model_predictions_repeats``, ``get_correlations``,
  ``get_signal_correlations``, ``get_poisson_loss``, ``get_fev``/``get_feve``,
  ``get_explainable_var``, ``get_oracles``, ``get_fraction_oracles``, and ``neuron_scores`` /
  ``has_repeats`` (what the per-neuron score table stores). ``dataloaders`` may be one tier,
  ``{data_key: loader}``, or the full ``{tier: {data_key: loader}}`` dict together with ``tier=``.
"""

from pipeline.measures.arrays import (
    corr,
    corr_to_average,
    fev,
    feve,
    fraction_oracle,
    oracle_corr_conservative,
    oracle_corr_jackknife,
    poisson_loss,
    split_by_image,
)
from pipeline.measures.evaluation import (
    get_correlations,
    get_explainable_var,
    get_fev,
    get_feve,
    get_fraction_oracles,
    get_oracles,
    get_poisson_loss,
    get_signal_correlations,
    has_repeats,
    model_predictions,
    model_predictions_repeats,
    neuron_scores,
)

__all__ = [
    "corr",
    "poisson_loss",
    "split_by_image",
    "fev",
    "feve",
    "oracle_corr_jackknife",
    "oracle_corr_conservative",
    "fraction_oracle",
    "corr_to_average",
    "model_predictions",
    "model_predictions_repeats",
    "get_correlations",
    "get_signal_correlations",
    "get_poisson_loss",
    "get_fev",
    "get_feve",
    "get_explainable_var",
    "get_oracles",
    "get_fraction_oracles",
    "has_repeats",
    "neuron_scores",
]
