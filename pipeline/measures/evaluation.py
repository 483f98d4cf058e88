"""A model over data loaders: predictions, and the array measures over them with sensorium's names.

``model_predictions`` / ``model_predictions_repeats`` run a model over one session's loader;
``get_correlations``, ``get_signal_correlations``, ``get_poisson_loss``, ``get_fev``/``get_feve``,
``get_explainable_var``, ``get_oracles`` and ``get_fraction_oracles`` apply the measures of
:mod:`pipeline.measures.arrays` to every session of a tier; ``neuron_scores`` gives every
per-neuron score of one session (what :func:`pipeline.scoring.score_model` stores).

``dataloaders`` may be one tier, ``{data_key: loader}``, or the full ``{tier: {data_key: loader}}``
dict together with ``tier=`` (:func:`pipeline.contracts.tier_loaders`); batches are read with
:func:`pipeline.contracts.split_batch`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from pipeline.contracts import NEURON_SCORE_NAMES, resolve_device, split_batch, tier_loaders
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

__all__ = [
    "get_correlations",
    "get_explainable_var",
    "get_fev",
    "get_feve",
    "get_fraction_oracles",
    "get_oracles",
    "get_poisson_loss",
    "get_signal_correlations",
    "has_repeats",
    "model_predictions",
    "model_predictions_repeats",
    "neuron_scores",
]


# ------------------------------------------------------------------------------------------ one session
def _model_device(model: torch.nn.Module) -> torch.device | None:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else None


class _EvalOn:
    """Context manager: model in eval mode on ``device``; the training flag and device restored after."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device):
        self.model = model
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" means the current device; name it so a model already there is not moved
            self.device = torch.device("cuda", torch.cuda.current_device())

    def __enter__(self) -> torch.device:
        self.was_training = self.model.training
        self.old_device = _model_device(self.model)
        self.model.eval()
        if self.old_device is not None and self.old_device != self.device:
            self.model.to(self.device)
        return self.device

    def __exit__(self, *exc: Any) -> None:
        if self.old_device is not None and self.old_device != self.device:
            self.model.to(self.old_device)
        self.model.train(self.was_training)


def _to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().float().cpu().numpy()
    return np.asarray(tensor, dtype=np.float32)


def _predict_batches(
    model: torch.nn.Module, batches: Iterable, data_key: str | None, device: str | torch.device
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Targets and predictions of every batch, as two lists of float32 arrays (B_i, N)."""
    targets, outputs = [], []
    with _EvalOn(model, device) as dev, torch.inference_mode():
        for batch in batches:
            inputs, target, extra = split_batch(batch)
            kwargs = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in extra.items()}
            output = model(inputs.to(dev), data_key=data_key, **kwargs)
            targets.append(_to_numpy(target))
            outputs.append(_to_numpy(output))
    return targets, outputs


def model_predictions(
    model: torch.nn.Module, loader: Iterable, data_key: str | None, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over every batch of ``loader``.

    The model runs in eval mode under ``torch.inference_mode()`` on ``device``; its training flag and
    device are restored afterwards. Batch fields beyond images and responses (``behavior``,
    ``pupil_center``, ...) are passed to the model as keyword arguments.

    Args:
        model: called as ``model(images, data_key=data_key, **other_fields)`` → (B, N).
        loader: iterable of batches (namedtuple/dict with images and responses first).
        data_key: the session key passed to the model.
        device: "cpu", "cuda", "cuda:1", "auto" or a torch.device.

    Returns:
        ``(targets, outputs)``, float32 arrays (n_trials, n_neurons), in loader order.
    """
    targets, outputs = _predict_batches(model, loader, data_key, device)
    if not targets:
        raise ValueError(f"the loader of session {data_key!r} yields no batches")
    targets_arr, outputs_arr = np.concatenate(targets), np.concatenate(outputs)
    if targets_arr.shape != outputs_arr.shape:
        raise ValueError(
            f"session {data_key!r}: the model returned {outputs_arr.shape} for responses of shape {targets_arr.shape}"
        )
    return targets_arr, outputs_arr


def model_predictions_repeats(
    model: torch.nn.Module, loader: Any, data_key: str | None, device: str | torch.device = "cpu"
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Targets and predictions grouped by image: two lists over images of (n_repeats_i, n_neurons).

    Uses ``loader.by_image()`` when the loader has it (one batch per image); otherwise runs the
    loader in order and groups trials by ``loader.dataset.trial_info.frame_image_id``, which must
    then be in loader order (true for unshuffled tiers).
    """
    if hasattr(loader, "by_image"):
        targets, outputs = _predict_batches(model, loader.by_image(), data_key, device)
        if not targets:
            raise ValueError(f"the loader of session {data_key!r} yields no images")
        return targets, outputs
    image_ids = _image_ids(loader, data_key)
    target, output = model_predictions(model, loader, data_key, device)
    if len(image_ids) != len(target):
        raise ValueError(f"session {data_key!r}: {len(image_ids)} image ids for {len(target)} trials")
    return split_by_image(target, image_ids), split_by_image(output, image_ids)


def has_repeats(loader: Any) -> bool:
    """Whether some image of the loader's tier is shown more than once."""
    try:
        ids = np.asarray(loader.dataset.trial_info.frame_image_id)
    except AttributeError:
        return False
    return ids.size > 0 and np.unique(ids).size < ids.size


def _image_ids(loader: Any, data_key: str | None) -> np.ndarray:
    try:
        return np.asarray(loader.dataset.trial_info.frame_image_id)
    except AttributeError:
        raise ValueError(
            f"the loader of session {data_key!r} has neither by_image() nor dataset.trial_info.frame_image_id, "
            "so repeats of an image cannot be found"
        ) from None


def _responses_by_image(loader: Any, data_key: str | None) -> list[np.ndarray]:
    """Responses grouped by image without a model."""
    if hasattr(loader, "by_image"):
        groups = [_to_numpy(split_batch(batch).targets) for batch in loader.by_image()]
    else:
        image_ids = _image_ids(loader, data_key)
        responses = np.concatenate([_to_numpy(split_batch(batch).targets) for batch in loader])
        groups = split_by_image(responses, image_ids)
    if not groups:
        raise ValueError(f"the loader of session {data_key!r} yields no images")
    return groups


def neuron_scores(
    model: torch.nn.Module, loader: Any, data_key: str | None, device: str | torch.device = "cpu"
) -> dict[str, np.ndarray | None]:
    """Every per-neuron score of one session (:data:`pipeline.contracts.NEURON_SCORE_NAMES`).

    Returns:
        ``{"correlation": (N,), "correlation_to_average": (N,) or None, "fev": ..., "feve": ...,
        "oracle": ...}`` float64 arrays; the repeat-based entries are None when no image of the
        loader's tier is repeated (:func:`has_repeats`).
    """
    targets, outputs = model_predictions(model, loader, data_key, device)
    scores: dict[str, np.ndarray | None] = dict.fromkeys(NEURON_SCORE_NAMES)
    scores["correlation"] = np.asarray(corr(targets, outputs, axis=0), dtype=np.float64)
    if has_repeats(loader):
        repeated_targets, repeated_outputs = model_predictions_repeats(model, loader, data_key, device)
        scores["correlation_to_average"] = corr_to_average(repeated_targets, repeated_outputs)
        scores["fev"], scores["feve"] = feve(repeated_targets, repeated_outputs, return_fev=True)
        scores["oracle"] = oracle_corr_jackknife(repeated_targets)
    return scores


# ------------------------------------------------------------------------------------------ every session
def _combine(per_session: dict[str, np.ndarray], as_dict: bool, per_neuron: bool, mean: Callable = np.mean):
    """Sensorium's result convention: dict per session, or concatenated neurons, or one mean."""
    if as_dict:
        return per_session if per_neuron else {k: float(mean(v)) for k, v in per_session.items()}
    values = np.hstack(list(per_session.values()))
    return values if per_neuron else float(mean(values))


def _nanmean(values: np.ndarray) -> float:
    """The mean over the non-NaN values; NaN, without a warning, when every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a session where every neuron is below threshold
        return np.nanmean(values)


def _model_measure(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None,
    device: str | torch.device,
    measure: Callable[[Any, Any], np.ndarray],
    as_dict: bool,
    per_neuron: bool,
    repeats: bool = False,
    mean: Callable = np.mean,
) -> Any:
    """``measure(targets, outputs)`` of the model's predictions on each session of ``tier``, combined
    by :func:`_combine`.

    ``repeats``: targets and outputs grouped by image (:func:`model_predictions_repeats`), else per
    trial (:func:`model_predictions`).
    """
    predictions = model_predictions_repeats if repeats else model_predictions
    per_session = {
        key: measure(*predictions(model, loader, key, device))
        for key, loader in tier_loaders(dataloaders, tier).items()
    }
    return _combine(per_session, as_dict, per_neuron, mean)


def _data_measure(
    dataloaders: Mapping,
    tier: str | None,
    measure: Callable[[list[np.ndarray]], np.ndarray],
    as_dict: bool,
    per_neuron: bool,
) -> Any:
    """``measure(responses grouped by image)`` on each session of ``tier`` (no model), combined."""
    per_session = {
        key: measure(_responses_by_image(loader, key))
        for key, loader in tier_loaders(dataloaders, tier).items()
    }
    return _combine(per_session, as_dict, per_neuron)


def get_correlations(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    as_dict: bool = False,
    per_neuron: bool = True,
    **kwargs: Any,
) -> Any:
    """Single-trial correlation per neuron between responses and predictions.

    Args:
        model: the model; called per session with ``data_key``.
        dataloaders: ``{data_key: loader}`` or ``{tier: {data_key: loader}}`` with ``tier``.
        tier: which tier when ``dataloaders`` holds several.
        device: where to run the model.
        as_dict: return ``{data_key: value}``.
        per_neuron: per-neuron arrays; else means (over all neurons, or per session with as_dict).
        **kwargs: accepted and ignored (sensorium passes e.g. ``avg=True``).

    Returns:
        (n_neurons_total,) array, a float, or a dict of either. Neurons with NaN responses get 0.
    """

    def measure(target: np.ndarray, output: np.ndarray) -> np.ndarray:
        return np.nan_to_num(corr(target, output, axis=0), nan=0.0)

    return _model_measure(model, dataloaders, tier, device, measure, as_dict, per_neuron)


def get_signal_correlations(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    as_dict: bool = False,
    per_neuron: bool = True,
    **kwargs: Any,
) -> Any:
    """Correlation to average: prediction vs mean response over repeats per image, per neuron.

    Arguments and return as :func:`get_correlations`; needs repeated images (the test tier).
    """

    def measure(targets: list[np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
        return np.nan_to_num(corr_to_average(targets, outputs), nan=0.0)

    return _model_measure(model, dataloaders, tier, device, measure, as_dict, per_neuron, repeats=True)


def get_poisson_loss(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    as_dict: bool = False,
    avg: bool = False,
    per_neuron: bool = True,
    eps: float = 1e-12,
    **kwargs: Any,
) -> Any:
    """Poisson loss per neuron (summed, or averaged with ``avg``, over trials) of the model's predictions.

    Without ``per_neuron`` the per-neuron values are summed (or averaged with ``avg``) as in sensorium.
    """

    def measure(target: np.ndarray, output: np.ndarray) -> np.ndarray:
        return poisson_loss(target, output, eps=eps, avg=avg, per_neuron=True)

    mean = np.mean if avg else np.sum
    return _model_measure(model, dataloaders, tier, device, measure, as_dict, per_neuron, mean=mean)


def get_feve(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    as_dict: bool = False,
    per_neuron: bool = True,
    threshold: float | None = 0.15,
    **kwargs: Any,
) -> Any:
    """Fraction of explainable variance explained per neuron (:func:`feve`), NaN below ``threshold`` FEV.

    Means ignore the NaN neurons (``np.nanmean``).
    """

    def measure(targets: list[np.ndarray], outputs: list[np.ndarray]) -> np.ndarray:
        return feve(targets, outputs, threshold=threshold)

    return _model_measure(
        model, dataloaders, tier, device, measure, as_dict, per_neuron, repeats=True, mean=_nanmean
    )


def get_fev(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    as_dict: bool = False,
    per_neuron: bool = True,
    threshold: float | None = None,
    **kwargs: Any,
) -> Any:
    """Sensorium's ``get_fev``: the model's FEVE per neuron, by default without an FEV threshold.

    Same as :func:`get_feve` except the default ``threshold=None``. For the FEV of the data itself
    (no model) use :func:`get_explainable_var`.
    """
    return get_feve(model, dataloaders, tier, device, as_dict, per_neuron, threshold=threshold)


def get_explainable_var(
    dataloaders: Mapping,
    tier: str | None = None,
    as_dict: bool = False,
    per_neuron: bool = True,
    **kwargs: Any,
) -> Any:
    """FEV of the recorded responses per neuron (:func:`fev`), from repeated images."""
    return _data_measure(dataloaders, tier, fev, as_dict, per_neuron)


def get_oracles(
    dataloaders: Mapping,
    tier: str | None = None,
    as_dict: bool = False,
    per_neuron: bool = True,
    conservative: bool = False,
    **kwargs: Any,
) -> Any:
    """Oracle correlation per neuron from repeated images: jackknife, or the conservative estimate."""
    oracle = oracle_corr_conservative if conservative else oracle_corr_jackknife
    return _data_measure(dataloaders, tier, oracle, as_dict, per_neuron)


def get_fraction_oracles(
    model: torch.nn.Module,
    dataloaders: Mapping,
    tier: str | None = None,
    device: str | torch.device = "cpu",
    conservative: bool = False,
    **kwargs: Any,
) -> float:
    """Fraction oracle over all sessions: slope through the origin of test correlation vs oracle."""
    loaders = tier_loaders(dataloaders, tier)
    oracles = get_oracles(loaders, conservative=conservative)
    correlations = get_correlations(model, loaders, device=device)
    return fraction_oracle(correlations, oracles)
