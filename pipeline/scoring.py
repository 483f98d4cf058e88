"""Per-neuron scores of a model over its loaders on every tier (used by the NeuronScore table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.contracts import is_tier_dict
from pipeline.measures.evaluation import has_repeats, model_predictions, neuron_scores

__all__ = ["DEGENERATE_RTOL", "constant_predictions", "has_repeats", "score_model"]

#: a neuron's predictions count as constant when their std is below this × (1 + |their mean|)
DEGENERATE_RTOL = 1e-6


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


def constant_predictions(
    model,
    dataloaders: Mapping[str, Mapping[str, Any]],
    tier: str = "validation",
    rtol: float = DEGENERATE_RTOL,
) -> bool | None:
    """Whether a trained model is degenerate: every neuron's prediction is constant over ``tier``.

    A too-large learning rate (``lr_init: 1e6``) can drive a model to one output for every image;
    its correlation is then ≈ 0 and nothing else says why. This runs the model over the tier once.

    Args:
        model: called as ``model(images, data_key=...)`` → (B, N), on the device of its parameters.
        dataloaders: ``{tier: {data_key: loader}}``.
        tier: the tier to look at.
        rtol: a neuron is constant when the std of its predictions is below ``rtol × (1 + |mean|)``;
            NaN predictions count as constant.

    Returns:
        True when every neuron of every session is constant, False when any varies, None when it
        cannot be told (no such tier, fewer than two trials).
    """
    if not isinstance(dataloaders, Mapping) or not is_tier_dict(dataloaders) or tier not in dataloaders:
        return None
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else "cpu"
    measured = False
    for data_key, loader in dataloaders[tier].items():
        _, outputs = model_predictions(model, loader, data_key, device)
        outputs = np.asarray(outputs, dtype=np.float64)
        if outputs.shape[0] < 2:
            continue
        measured = True
        spread = outputs.std(axis=0)
        if np.any(spread > rtol * (1.0 + np.abs(outputs.mean(axis=0)))):
            return False
    return True if measured else None
