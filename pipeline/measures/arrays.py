"""Measures on arrays: how well predictions match responses, and how reliable the responses are.

Inputs are NumPy arrays, or anything NumPy converts (torch tensors included); results are float64.
``corr``, ``poisson_loss``, ``fev``, ``feve``, ``oracle_corr_jackknife``, ``oracle_corr_conservative``,
``fraction_oracle``, ``corr_to_average`` and ``split_by_image``.

"Repeated" data is a list with one entry per distinct image, each an array (n_repeats_i, n_neurons);
a 3-d array (n_images, n_repeats, n_neurons) is accepted too. Repeat counts may differ per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "corr",
    "corr_to_average",
    "fev",
    "feve",
    "fraction_oracle",
    "oracle_corr_conservative",
    "oracle_corr_jackknife",
    "poisson_loss",
    "split_by_image",
]

_NAN_POLICIES = ("propagate", "omit", "raise")


def _as_float_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from err
    return array


def corr(y1: Any, y2: Any, axis: int | None = 0, nan_policy: str = "propagate") -> np.ndarray:
    """Pearson correlation of ``y1`` and ``y2`` along ``axis`` (population statistics, ddof 0).

    Typical use: ``y1`` = responses (n_trials, n_neurons), ``y2`` = predictions of the same shape,
    ``axis=0`` → one correlation per neuron, shape (n_neurons,).

    Args:
        y1, y2: arrays of the same shape (anything NumPy can convert, torch tensors included).
        axis: the axis that holds the samples (trials); None flattens both arrays.
        nan_policy: what NaN/inf entries do. ``"propagate"`` (default): a neuron with any non-finite
            value gets NaN. ``"omit"``: samples where either array is non-finite are ignored for that
            neuron (each neuron uses its own finite samples). ``"raise"``: a ValueError.

    Returns:
        The correlations, float64, with ``axis`` removed (a 0-d array when the result is scalar).
        A constant series (zero variance in ``y1`` or ``y2``, or fewer than two usable samples) has
        correlation 0 rather than NaN, with no warning: it carries no information about the other.
    """
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {_NAN_POLICIES}, got {nan_policy!r}")
    a = _as_float_array("y1", y1)
    b = _as_float_array("y2", y2)
    if a.shape != b.shape:
        raise ValueError(f"corr needs arrays of the same shape, got {a.shape} and {b.shape}")
    if axis is None:
        a, b, axis = a.ravel(), b.ravel(), 0
    if a.ndim == 0:
        raise ValueError("corr needs at least one sample axis, got 0-d arrays")
    axis = int(axis)
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis {axis} is out of range for arrays with {a.ndim} dimensions")

    finite = np.isfinite(a) & np.isfinite(b)
    if nan_policy == "raise" and not finite.all():
        raise ValueError(
            f"corr got {int((~finite).sum())} non-finite values (NaN/inf); use nan_policy='omit'"
        )
    if nan_policy == "omit":
        mask = finite
    else:
        mask = np.ones_like(finite)
    any_bad = (~finite).any(axis=axis)

    n = mask.sum(axis=axis, keepdims=True)
    a0 = np.where(mask, a, 0.0)
    b0 = np.where(mask, b, 0.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        da = np.where(mask, a0 - a0.sum(axis=axis, keepdims=True) / n, 0.0)
        db = np.where(mask, b0 - b0.sum(axis=axis, keepdims=True) / n, 0.0)
        cov = (da * db).sum(axis=axis)
        var_a = (da * da).sum(axis=axis)
        var_b = (db * db).sum(axis=axis)
        result = cov / np.sqrt(var_a * var_b)
        # Exactly constant series: the mean can round, leaving tiny residuals whose "correlation" is
        # noise, so constancy is decided on the raw values (range == 0), not on the variance.
        big = np.finfo(np.float64).max
        range_a = np.where(mask, a0, -big).max(axis=axis) - np.where(mask, a0, big).min(axis=axis)
        range_b = np.where(mask, b0, -big).max(axis=axis) - np.where(mask, b0, big).min(axis=axis)
    constant = (range_a <= 0) | (range_b <= 0) | (n.squeeze(axis) < 2) | (var_a == 0) | (var_b == 0)
    result = np.where(constant, 0.0, result)
    if nan_policy == "propagate":
        result = np.where(any_bad, np.nan, result)
    return np.clip(result, -1.0, 1.0)


def poisson_loss(
    targets: Any, outputs: Any, eps: float = 1e-12, avg: bool = False, per_neuron: bool = False
) -> np.ndarray | float:
    """Poisson negative log-likelihood up to a target-only constant: ``output − target·log(output + eps)``.

    Args:
        targets: observed responses (n_trials, n_neurons), ≥ 0.
        outputs: predicted rates, same shape, > 0 (``eps`` guards log(0)).
        eps: added inside the log.
        avg: average over entries instead of summing (sensorium's ``avg``).
        per_neuron: reduce over trials only and return shape (n_neurons,); else a float over all entries.

    Returns:
        The summed (or averaged) loss: a float, or an array (n_neurons,) with ``per_neuron``.
    """
    t = _as_float_array("targets", targets)
    o = _as_float_array("outputs", outputs)
    if t.shape != o.shape:
        raise ValueError(
            f"poisson_loss needs targets and outputs of the same shape, got {t.shape} and {o.shape}"
        )
    if (o + eps <= 0).any():
        raise ValueError("poisson_loss needs positive outputs (rates); got values ≤ -eps")
    loss = o - t * np.log(o + eps)
    reduce = np.mean if avg else np.sum
    if per_neuron:
        if loss.ndim < 2:
            raise ValueError(f"per_neuron needs (n_trials, n_neurons) arrays, got shape {t.shape}")
        return reduce(loss, axis=0)
    return float(reduce(loss))


def split_by_image(values: Any, image_ids: Any) -> list[np.ndarray]:
    """Group trials by image: ``values`` (n_trials, ...) → list of (n_repeats_i, ...) in sorted image-id order.

    Args:
        values: per-trial array, first axis = trials.
        image_ids: (n_trials,) image id of each trial (e.g. ``trial_info.frame_image_id``).
    """
    values = np.asarray(values)
    image_ids = np.asarray(image_ids)
    if image_ids.ndim != 1 or len(image_ids) != len(values):
        raise ValueError(
            f"image_ids must be 1-d with one entry per trial ({len(values)}), got shape {image_ids.shape}"
        )
    order = np.argsort(image_ids, kind="stable")
    _, starts = np.unique(image_ids[order], return_index=True)
    return [values[idx] for idx in np.split(order, starts[1:])]


def _repeated(name: str, repeated: Any) -> list[np.ndarray]:
    """Validate repeated data into a list of float64 (n_repeats_i, n_neurons) arrays."""
    if isinstance(repeated, np.ndarray | torch.Tensor):
        array = _as_float_array(name, repeated)
        if array.ndim != 3:
            raise ValueError(
                f"{name} as an array must be (n_images, n_repeats, n_neurons), got shape {array.shape}"
            )
        items = list(array)
    elif isinstance(repeated, Sequence):
        items = [_as_float_array(f"{name}[{i}]", r) for i, r in enumerate(repeated)]
    else:
        raise TypeError(
            f"{name} must be a list of (n_repeats, n_neurons) arrays, got {type(repeated).__name__}"
        )
    if not items:
        raise ValueError(f"{name} is empty: need at least one image")
    n_neurons = None
    for i, item in enumerate(items):
        if item.ndim != 2:
            raise ValueError(f"{name}[{i}] must be (n_repeats, n_neurons), got shape {item.shape}")
        if n_neurons is None:
            n_neurons = item.shape[1]
        elif item.shape[1] != n_neurons:
            raise ValueError(f"{name}[{i}] has {item.shape[1]} neurons, the first image has {n_neurons}")
    return items


def _with_repeats(name: str, items: list[np.ndarray], min_repeats: int = 2) -> list[np.ndarray]:
    kept = [item for item in items if item.shape[0] >= min_repeats]
    if not kept:
        raise ValueError(
            f"{name}: no image has {min_repeats} or more repeats, so the trial-to-trial noise cannot be "
            "estimated (use the test tier, whose images are repeated)"
        )
    return kept


def _noise_and_total_var(items: list[np.ndarray], ddof: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.var(np.vstack(items), axis=0, ddof=ddof)
    noise = np.mean([np.var(item, axis=0, ddof=ddof) for item in items], axis=0)
    return noise, total


def fev(repeated_targets: Any) -> np.ndarray:
    """Fraction of explainable variance of the responses, per neuron: (Var_total − Var_noise) / Var_total.

    Var_total is the variance over all trials; Var_noise the mean over images of the variance across
    that image's repeats; both with ddof=1, as in neuralpredictors/sensorium. Images with a single
    repeat are left out of both terms (their noise is undefined). A neuron with zero total variance
    has FEV 0.

    Args:
        repeated_targets: list over images of (n_repeats_i, n_neurons) responses, or an
            (n_images, n_repeats, n_neurons) array.

    Returns:
        (n_neurons,) float64. Raises ValueError when no image has two or more repeats.
    """
    items = _with_repeats("fev", _repeated("repeated_targets", repeated_targets))
    noise, total = _noise_and_total_var(items, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = (total - noise) / total
    return np.where(total > 0, result, 0.0)


def feve(
    repeated_targets: Any, repeated_outputs: Any, threshold: float | None = 0.15, return_fev: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Fraction of explainable variance explained, per neuron: 1 − (MSE − Var_noise) / (Var_total − Var_noise).

    Var_total and Var_noise as in :func:`fev` (ddof=1); MSE is the mean squared error over all
    trials of images with two or more repeats.

    Args:
        repeated_targets: list over images of (n_repeats_i, n_neurons) responses.
        repeated_outputs: predictions in the same layout, or one prediction per image, either as an
            (n_images, n_neurons) array or a list of (n_neurons,)/(1, n_neurons) arrays (broadcast
            over that image's repeats).
        threshold: neurons whose FEV is below it get NaN (sensorium uses 0.15: FEVE is unstable when
            little variance is explainable); None keeps every neuron (neurons with no explainable
            variance still get NaN, the ratio being undefined).
        return_fev: also return the per-neuron FEV.

    Returns:
        FEVE (n_neurons,) float64 with NaN for excluded neurons — average with ``np.nanmean`` —
        or ``(fev, feve)`` with ``return_fev``.
    """
    targets = _repeated("repeated_targets", repeated_targets)
    if isinstance(repeated_outputs, np.ndarray | torch.Tensor) and np.ndim(repeated_outputs) == 2:
        outputs_list = list(_as_float_array("repeated_outputs", repeated_outputs))
    else:
        if not isinstance(repeated_outputs, Sequence | np.ndarray | torch.Tensor):
            raise TypeError(
                f"repeated_outputs must be a list of arrays, got {type(repeated_outputs).__name__}"
            )
        outputs_list = [_as_float_array(f"repeated_outputs[{i}]", o) for i, o in enumerate(repeated_outputs)]
    if len(outputs_list) != len(targets):
        raise ValueError(
            f"repeated_outputs has {len(outputs_list)} images, repeated_targets has {len(targets)}"
        )
    pairs = []
    for i, (t, o) in enumerate(zip(targets, outputs_list)):
        try:
            o = np.broadcast_to(o, t.shape)
        except ValueError:
            raise ValueError(
                f"repeated_outputs[{i}] has shape {o.shape}, not broadcastable to {t.shape}"
            ) from None
        if t.shape[0] >= 2:
            pairs.append((t, o))
    if not pairs:
        raise ValueError("feve: no image has 2 or more repeats, so the noise variance cannot be estimated")
    kept_targets = [t for t, _ in pairs]
    noise, total = _noise_and_total_var(kept_targets, ddof=1)
    mse = np.mean(np.vstack([(t - o) ** 2 for t, o in pairs]), axis=0)
    explainable = total - noise
    with np.errstate(invalid="ignore", divide="ignore"):
        fev_values = np.where(total > 0, explainable / total, 0.0)
        result = 1.0 - (mse - noise) / explainable
    result = np.where(explainable > 0, result, np.nan)
    if threshold is not None:
        result = np.where(fev_values >= threshold, result, np.nan)
    return (fev_values, result) if return_fev else result


def oracle_corr_jackknife(repeated_targets: Any) -> np.ndarray:
    """Leave-one-out oracle correlation per neuron.

    Every trial of an image with n ≥ 2 repeats is paired with the mean of that image's other n − 1
    repeats; the oracle is the correlation (:func:`corr`) of trials with their leave-one-out means,
    over all such trials. It estimates how well a perfect model of the trial-averaged response could
    do (slightly underestimating it). Images with one repeat are left out.

    Args:
        repeated_targets: list over images of (n_repeats_i, n_neurons) responses.

    Returns:
        (n_neurons,) float64; 0 for constant neurons.
    """
    items = _with_repeats("oracle_corr_jackknife", _repeated("repeated_targets", repeated_targets))
    trials = np.vstack(items)
    loo = np.vstack([(item.sum(axis=0, keepdims=True) - item) / (item.shape[0] - 1) for item in items])
    return corr(trials, loo, axis=0)


def oracle_corr_conservative(repeated_targets: Any) -> np.ndarray:
    """Noise-corrected oracle per neuron, as neuralpredictors' ``oracle_corr_conservative``.

    With Var_mean the variance (ddof 0) over images of the per-image mean response and Var_noise the
    mean over images of the variance (ddof 0) across repeats: Var_mean / sqrt(Var_mean · (Var_mean +
    Var_noise)). It tends to overestimate the oracle. Images with one repeat are left out.

    Args:
        repeated_targets: list over images of (n_repeats_i, n_neurons) responses.

    Returns:
        (n_neurons,) float64; 0 for neurons whose per-image means do not vary.
    """
    items = _with_repeats("oracle_corr_conservative", _repeated("repeated_targets", repeated_targets))
    var_noise = np.mean([np.var(item, axis=0) for item in items], axis=0)
    var_mean = np.var(np.vstack([item.mean(axis=0) for item in items]), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = var_mean / np.sqrt(var_mean * (var_mean + var_noise))
    return np.where(var_mean > 0, result, 0.0)


def fraction_oracle(test_correlation: Any, oracle_correlation: Any) -> float:
    """Least-squares slope through the origin of test correlation against oracle correlation.

    slope = Σ oracle·test / Σ oracle²; pairs where either value is NaN are ignored.

    Args:
        test_correlation: (n_neurons,) model correlations (on the test tier).
        oracle_correlation: (n_neurons,) oracle correlations of the same neurons.
    """
    test = _as_float_array("test_correlation", test_correlation).ravel()
    oracle = _as_float_array("oracle_correlation", oracle_correlation).ravel()
    if test.shape != oracle.shape:
        raise ValueError(f"fraction_oracle needs one oracle per neuron: got {test.shape} and {oracle.shape}")
    keep = np.isfinite(test) & np.isfinite(oracle)
    denominator = float(np.sum(oracle[keep] ** 2))
    if denominator == 0.0:
        raise ValueError("fraction_oracle: all oracle correlations are zero or NaN, the slope is undefined")
    return float(np.sum(oracle[keep] * test[keep]) / denominator)


def corr_to_average(
    repeated_targets: Any, repeated_outputs: Any, nan_policy: str = "propagate"
) -> np.ndarray:
    """Correlation per neuron between the prediction and the mean response over repeats, across images.

    Args:
        repeated_targets: list over images of (n_repeats_i, n_neurons) responses.
        repeated_outputs: predictions in the same layout (averaged over repeats too) or one
            prediction per image ((n_images, n_neurons) array or list of (n_neurons,) arrays).
        nan_policy: as in :func:`corr`.

    Returns:
        (n_neurons,) float64.
    """
    targets = _repeated("repeated_targets", repeated_targets)
    if len(repeated_outputs) != len(targets):
        raise ValueError(
            f"repeated_outputs has {len(repeated_outputs)} images, repeated_targets has {len(targets)}"
        )
    mean_targets = np.vstack([t.mean(axis=0) for t in targets])
    mean_outputs = []
    for i, o in enumerate(repeated_outputs):
        o = _as_float_array(f"repeated_outputs[{i}]", o)
        mean_outputs.append(o.reshape(-1, o.shape[-1]).mean(axis=0))
    return corr(mean_targets, np.vstack(mean_outputs), axis=0, nan_policy=nan_policy)
