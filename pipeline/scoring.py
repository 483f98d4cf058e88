"""Per-neuron scores of a model over its loaders on every tier (used by the NeuronScore table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.contracts import NEURON_SCORE_NAMES

__all__ = ["has_repeats", "score_model"]


def has_repeats(loader: Any) -> bool:
    """Whether some image of the loader's tier is shown more than once."""
    try:
        ids = np.asarray(loader.dataset.trial_info.frame_image_id)
    except AttributeError:
        return False
    return ids.size > 0 and np.unique(ids).size < ids.size


def score_model(model, dataloaders: Mapping[str, Mapping[str, Any]], device: str = "cpu") -> dict:
    """Score ``model`` on every tier and session.

    Args:
        model: a model called as ``model(images, data_key=...)`` → (B, N).
        dataloaders: ``{tier: {data_key: loader}}``.
        device: where to evaluate.

    Returns:
        ``{tier: {data_key: {"correlation": (N,), "correlation_to_average": (N,) or None,
        "fev": ..., "feve": ..., "oracle": ...}}}`` float64 arrays; the repeat-based entries are
        None for tiers without repeated images.
    """
    from pipeline import measures

    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for tier, loaders in dataloaders.items():
        if not isinstance(loaders, Mapping):
            raise TypeError(f"dataloaders[{tier!r}] must be a dict {{data_key: loader}}")
        scores[tier] = {}
        for data_key, loader in loaders.items():
            targets, outputs = measures.model_predictions(model, loader, data_key, device)
            entry: dict[str, Any] = dict.fromkeys(NEURON_SCORE_NAMES)
            entry["correlation"] = np.asarray(measures.corr(targets, outputs, axis=0), dtype=np.float64)
            if has_repeats(loader):
                repeated_targets, repeated_outputs = measures.model_predictions_repeats(
                    model, loader, data_key, device
                )
                entry["correlation_to_average"] = measures.corr_to_average(repeated_targets, repeated_outputs)
                entry["fev"], entry["feve"] = measures.feve(
                    repeated_targets, repeated_outputs, return_fev=True
                )
                entry["oracle"] = measures.oracle_corr_jackknife(repeated_targets)
            scores[tier][data_key] = entry
    return scores
