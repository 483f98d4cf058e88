"""Trained-model results as one pandas table, configs flattened into columns."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pandas as pd

from .columns import CONFIG_ROLES, SUMMARY_COLUMNS
from .configs import Dataset, Model, Trainer, config_dict
from .neuron_scores import NeuronScore
from .trained_model import TrainedModel

__all__ = ["flatten_config", "results"]


def flatten_config(config: Mapping[str, Any] | str | None, prefix: str) -> dict[str, Any]:
    """One entry per config value: ``{"<prefix>.<key>": value}``, nested keys joined with dots.

    Lists, tuples and empty dicts stay one value as JSON text (``'["/data/a", "/data/b"]'``), so
    a column compares, groups and prints like any other.

    Args:
        config: a config dict (or its JSON text, as some drivers return ``json`` columns).
        prefix: the name before the dot, e.g. ``"model"``.

    Example:
        ``flatten_config({"layers": 2, "grid_mean_predictor": {"type": "cortex"}}, "model")``
        -> ``{"model.layers": 2, "model.grid_mean_predictor.type": "cortex"}``.
    """
    out: dict[str, Any] = {}
    for key, value in config_dict(config).items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_config(value, name))
        elif isinstance(value, (list, tuple, Mapping)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def results(restriction=None) -> pd.DataFrame:
    """One row per trained model: keys, score, summary scores and the configs as columns.

    Config entries become columns ``dataset.<key>``, ``model.<key>``, ``trainer.<key>`` (see
    :func:`flatten_config`: nested dicts as ``model.grid_mean_predictor.type``, lists as JSON text).

    Args:
        restriction: restricts the trained models (dict, query, ...); None means all.

    Returns:
        DataFrame (empty when nothing is trained yet).
    """
    trained = TrainedModel() if restriction is None else TrainedModel() & restriction
    query = trained.proj("score", "seconds", "host", "device", TrainedModel.timestamp_column)
    query = query * Dataset().proj("dataset_config") * Model().proj("model_config")
    query = query * Trainer().proj("trainer_config")
    rows = query.to_dicts()
    if not rows:
        return pd.DataFrame()
    key_names = TrainedModel().primary_key
    summaries = {
        tuple(row[k] for k in key_names): row for row in NeuronScore().proj(*SUMMARY_COLUMNS).to_dicts()
    }
    flat = []
    for row in rows:
        out = {k: v for k, v in row.items() if not k.endswith("_config")}
        summary = summaries.get(tuple(row[k] for k in key_names), {})
        out.update({k: summary.get(k) for k in SUMMARY_COLUMNS})
        for role in CONFIG_ROLES:
            out.update(flatten_config(row[f"{role}_config"], role))
        flat.append(out)
    return pd.DataFrame(flat)
