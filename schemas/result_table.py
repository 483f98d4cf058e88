"""Trained-model results as one pandas table, configs flattened into columns."""

from __future__ import annotations

import pandas as pd

from .configs import Dataset, Model, Trainer
from .trained_model import TrainedModel

__all__ = ["results"]

_SUMMARY = (
    "train_correlation",
    "validation_correlation",
    "test_correlation",
    "test_correlation_to_average",
    "test_feve",
    "fraction_oracle",
)


def results(restriction=None) -> pd.DataFrame:
    """One row per trained model: keys, score, summary scores and the configs as columns.

    Config entries become columns ``dataset.<key>``, ``model.<key>``, ``trainer.<key>`` (nested
    dicts as ``model.grid_mean_predictor.type``).

    Args:
        restriction: restricts the trained models (dict, query, ...); None means all.

    Returns:
        DataFrame (empty when nothing is trained yet).
    """
    from .downstream import NeuronScore

    trained = TrainedModel() if restriction is None else TrainedModel() & restriction
    query = trained.proj("score", "seconds", "host", "device", "trainedmodel_ts") * Dataset().proj(
        "dataset_config"
    )
    query = query * Model().proj("model_config") * Trainer().proj("trainer_config")
    rows = query.to_dicts()
    if not rows:
        return pd.DataFrame()
    summaries = {
        tuple(row[k] for k in TrainedModel().primary_key): row
        for row in NeuronScore().proj(*_SUMMARY).to_dicts()
    }
    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if not k.endswith("_config")}
        summary = summaries.get(tuple(row[k] for k in TrainedModel().primary_key), {})
        out.update({k: summary.get(k) for k in _SUMMARY})
        for role in ("dataset", "model", "trainer"):
            config = row[f"{role}_config"] or {}
            if isinstance(config, str):
                import json

                config = json.loads(config)
            for name, value in (
                pd.json_normalize(config, sep=".").to_dict(orient="records")[0].items() if config else []
            ):
                out[f"{role}.{name}"] = value
        flat.append(out)
    return pd.DataFrame(flat)
