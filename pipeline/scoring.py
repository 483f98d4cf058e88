"""Per-neuron scores of a model over its loaders on every tier (used by the NeuronScore table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.measures.evaluation import has_repeats, neuron_scores

__all__ = ["has_repeats", "score_model"]


def score_model(model, dataloaders: Mapping[str, Mapping[str, Any]], device: str = "cpu") -> dict:
    """Score ``model`` on every tier and session.

    Args:
        model: a model called as ``model(images, data_key=...)`` → (B, N).
        dataloaders: ``{tier: {data_key: loader}}``.
        device: where to evaluate.

    Returns:
        ``{tier: {data_key: {"correlation": (N,), "correlation_to_average": (N,) or None,
        "fev": ..., "feve": ..., "oracle": ...}}}`` float64 arrays
        (:func:`pipeline.measures.neuron_scores`); the repeat-based entries are None for tiers
        without repeated images.
    """
    scores: dict[str, dict[str, dict[str, Any]]] = {}
    for tier, loaders in dataloaders.items():
        if not isinstance(loaders, Mapping):
            raise TypeError(f"dataloaders[{tier!r}] must be a dict {{data_key: loader}}")
        scores[tier] = {key: neuron_scores(model, loader, key, device) for key, loader in loaders.items()}
    return scores
