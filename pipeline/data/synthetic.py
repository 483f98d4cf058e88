"""A synthetic Sensorium-format dataset made from a known ground-truth model of V1-like neurons.

The ground truth is simple enough for a small Gaussian-readout CNN to learn on a CPU in seconds,
so tests can check that training recovers it:

* stimuli: natural-like 1/f ("pink") noise images, integers 0..255 stored as float32 (1, H, W);
* features: ``n_features`` zero-mean Gabor filters at evenly spaced orientations, applied to the
  standardised image (``"same"`` padding);
* neuron n: one feature ``feature_index[n]`` read out at its receptive-field position
  ``(rf_x[n], rf_y[n])`` (grid units in [-1, 1], x along width, y along height, pixel centres at
  ``align_corners=True`` positions) pooled with a small Gaussian (``pool_sigma`` pixels);
  ``drive = gain[n] * z + bias[n]`` where ``z`` is that pooled feature standardised over all stimuli;
  ``rate = rate_scale[n] * softplus(drive)``; responses are Poisson draws of the rate (or the rate
  itself with ``noise="none"``, or rate + Gaussian noise of std ``sqrt(rate)`` clipped at 0);
* ``features="energy"``: a neuron reads the Gabor energy ``sqrt(even^2 + odd^2)`` (quadrature pair)
  of one orientation instead, a nonlinear feature; :func:`make_multi_session_datasets` writes several
  such sessions (own images, neurons and RF positions; the same feature basis), so a core learned on
  some sessions transfers to the others;
* cortex: ``cell_motor_coordinates`` (x, y, z in micrometres); RF positions are a rotated, scaled
  linear map of cortical (x, y) plus small Gaussian scatter (``rf_scatter``), so cortex predicts RFs;
* behaviour (pupil dilation, its derivative, running speed) and pupil centre are smooth random walks
  over the presentation order and do not influence responses.

Tiers: ``n_train`` and ``n_validation`` distinct images shown once, ``n_test_images`` shown
``n_repeats`` times each (tier "test"). Trials are stored in a random interleaved order as in real
recordings. The ground truth is written beside the data in the dataset folder:
``ground_truth.npz`` (arrays) and ``ground_truth.json`` (settings); ``load_ground_truth`` reads both.

Command line: ``python -m pipeline.data.synthetic OUT_DIR --neurons 60 --train 1500 ...`` (see --help).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FEATURE_TYPES",
    "gabor_filters",
    "linear_filters",
    "load_ground_truth",
    "make_multi_session_datasets",
    "make_synthetic_dataset",
    "pink_noise_images",
    "zip_dataset",
]

_STAT_NAMES = ("mean", "std", "min", "max", "median")


def pink_noise_images(
    n: int, shape: tuple[int, int], rng: np.random.Generator, exponent: float = 1.0
) -> np.ndarray:
    """Natural-like images: Gaussian noise with a 1/f^exponent amplitude spectrum.

    Args:
        n: number of images.
        shape: (height, width).
        rng: numpy random generator.
        exponent: amplitude spectrum falls off as 1/f**exponent (1 = natural-image statistics).

    Returns:
        float32 array (n, 1, H, W) of integers 0..255 (mean ~ 128, std ~ 50 before clipping).
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    freq[0, 0] = 1.0  # the mean is removed below, avoid dividing by zero
    amplitude = 1.0 / freq**exponent
    amplitude[0, 0] = 0.0
    spectrum = rng.standard_normal((n, h, w // 2 + 1)) + 1j * rng.standard_normal((n, h, w // 2 + 1))
    images = np.fft.irfft2(spectrum * amplitude, s=(h, w), axes=(-2, -1))
    images = (images - images.mean(axis=(1, 2), keepdims=True)) / images.std(axis=(1, 2), keepdims=True)
    images = np.clip(np.round(128.0 + 50.0 * images), 0, 255)
    return images[:, None].astype(np.float32)


def gabor_filters(
    n_features: int, size: int = 9, wavelength: float = 6.0, sigma: float = 2.0, phase: float = 0.0
) -> np.ndarray:
    """Zero-mean, unit-norm Gabor filters at ``n_features`` evenly spaced orientations.

    Args:
        n_features: number of orientations (0, pi/n, 2pi/n, ...).
        size: odd filter side length in pixels.
        wavelength: carrier wavelength in pixels.
        sigma: Gaussian envelope std in pixels.
        phase: carrier phase in radians: 0 gives even (cosine) filters, pi/2 odd (sine) ones, the
            quadrature partners of the even ones (for energy features).

    Returns:
        float64 array (n_features, size, size).
    """
    if size % 2 == 0 or size < 3:
        raise ValueError(f"filter size must be an odd integer >= 3, got {size}")
    half = size // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    filters = []
    for k in range(n_features):
        theta = np.pi * k / n_features
        along = xx * np.cos(theta) + yy * np.sin(theta)
        g = np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) * np.cos(2 * np.pi * along / wavelength + phase)
        g -= g.mean()
        filters.append(g / np.linalg.norm(g))
    return np.stack(filters)


def _grid_to_pixel(coord: np.ndarray, size: int) -> np.ndarray:
    """Grid units in [-1, 1] (align_corners=True) to pixel coordinates 0..size-1."""
    return (coord + 1.0) / 2.0 * (size - 1)


def _feature_maps(standardized: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """``conv(filter, image)`` with "same" zero padding (a cross-correlation, as torch's conv2d), by FFT.

    (n_images, H, W) and (n_features, k, k) float64 -> (n_images, n_features, H, W) float64; exact to
    rounding and much faster than a float64 direct convolution.
    """
    _, h, w = standardized.shape
    k = filters.shape[-1]
    size = (h + k - 1, w + k - 1)
    spectrum = torch.fft.rfft2(standardized, s=size)[:, None] * torch.fft.rfft2(filters.flip(-2, -1), s=size)
    r = k // 2
    return torch.fft.irfft2(spectrum, s=size)[..., r : r + h, r : r + w]


def _pooled_features(
    standardized: np.ndarray,
    filters: np.ndarray,
    feature_index: np.ndarray,
    rf_x: np.ndarray,
    rf_y: np.ndarray,
    pool_sigma: float,
    chunk: int = 512,
    odd_filters: np.ndarray | None = None,
) -> np.ndarray:
    """Each neuron's Gaussian-pooled feature for every image: (n_images, N) float64.

    The feature maps are computed once per feature: ``conv(filter, image)``, or with ``odd_filters``
    (the quadrature partners) the energy ``sqrt(conv(even)^2 + conv(odd)^2)``, a phase-invariant,
    nonlinear feature (complex-cell-like) that a linear readout of the image cannot give. The pooling Gaussian is normalised over the
    image and is separable (rows x columns); its weights farther than ``9 * pool_sigma`` from the
    centre are below 3e-18 of the peak, under float64 resolution, so each neuron reads only that
    window of its map: O(images x neurons x window) work, which keeps thousands of neurons on
    full-resolution images fast.
    """
    n_images, h, w = standardized.shape
    py, px = _grid_to_pixel(rf_y, h), _grid_to_pixel(rf_x, w)
    rows = np.exp(-((np.arange(h)[None] - py[:, None]) ** 2) / (2 * pool_sigma**2))  # (N, H)
    cols = np.exp(-((np.arange(w)[None] - px[:, None]) ** 2) / (2 * pool_sigma**2))  # (N, W)
    rows /= rows.sum(axis=1, keepdims=True)
    cols /= cols.sum(axis=1, keepdims=True)
    r = int(np.ceil(9 * pool_sigma)) + 1
    offsets = torch.arange(2 * r + 1)
    with torch.no_grad():
        maps = _feature_maps(torch.from_numpy(standardized), torch.from_numpy(filters))
        if odd_filters is not None:
            maps = torch.sqrt(
                maps**2 + _feature_maps(torch.from_numpy(standardized), torch.from_numpy(odd_filters)) ** 2
            )
        # zero padding by r: a window may reach past the image, where the weights are zero
        maps = F.pad(maps, (r, r, r, r))
        n_features, hp, wp = maps.shape[1:]
        flat_maps = maps.reshape(n_images, n_features * hp * wp)
        rows = F.pad(torch.from_numpy(rows), (r, r))
        cols = F.pad(torch.from_numpy(cols), (r, r))
        top = torch.from_numpy(np.rint(py).astype(np.int64))  # window starts in padded coordinates
        left = torch.from_numpy(np.rint(px).astype(np.int64))
        features = torch.from_numpy(np.asarray(feature_index, dtype=np.int64))
        pooled = torch.empty(n_images, len(features), dtype=torch.float64)
        side = len(offsets)
        for start in range(0, len(features), chunk):
            idx = torch.arange(start, min(start + chunk, len(features)))
            ys, xs = top[idx, None] + offsets, left[idx, None] + offsets  # (n, 2r+1) each
            flat = (features[idx, None, None] * hp + ys[:, :, None]) * wp + xs[:, None, :]
            # one index_select of each neuron's window (far faster than 4-d advanced indexing)
            patches = torch.index_select(flat_maps, 1, flat.reshape(-1)).view(n_images, len(idx), side * side)
            window = rows[idx[:, None], ys][:, :, None] * cols[idx[:, None], xs][:, None, :]  # (n, a, b)
            pooled[:, idx] = torch.einsum("ink,nk->in", patches, window.reshape(len(idx), side * side))
    return pooled.numpy()


def _save_trials(folder: Path, values: np.ndarray) -> None:
    """Write values[i] to folder/<i>.npy for every trial (same bytes as np.save, one header reused)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(values[0]))
    header = buffer.getvalue()
    for i in range(len(values)):
        with open(folder / f"{i}.npy", "wb") as handle:
            handle.write(header + np.ascontiguousarray(values[i]).tobytes())


def _smooth_walk(rng: np.random.Generator, n: int, dims: int, smooth: int = 25) -> np.ndarray:
    steps = rng.standard_normal((n + smooth, dims))
    kernel = np.ones(smooth) / smooth
    walk = np.cumsum(steps, axis=0) * 0.2
    smoothed = np.stack([np.convolve(walk[:, d], kernel, mode="valid")[:n] for d in range(dims)], axis=1)
    return smoothed - smoothed.mean(axis=0)


def _statistics(values: np.ndarray, per_column: bool) -> dict[str, np.ndarray]:
    axis = 0 if per_column else None
    return {
        "mean": np.asarray(values.mean(axis=axis), dtype=np.float32),
        "std": np.asarray(values.std(axis=axis), dtype=np.float32),
        "min": np.asarray(values.min(axis=axis), dtype=np.float32),
        "max": np.asarray(values.max(axis=axis), dtype=np.float32),
        "median": np.asarray(np.median(values, axis=axis), dtype=np.float32),
    }


def _parse_session(session: str) -> tuple[int, int, int]:
    parts = str(session).split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"session must look like '<animal>-<session>-<scan>' with integers, got {session!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def make_synthetic_dataset(
    path: str | os.PathLike,
    n_neurons: int = 60,
    n_train: int = 1500,
    n_validation: int = 250,
    n_test_images: int = 50,
    n_repeats: int = 10,
    image_shape: tuple[int, int] = (36, 64),
    seed: int = 0,
    session: str | None = None,
    n_features: int = 4,
    filter_size: int = 9,
    rf_range: float = 0.6,
    rf_scatter: float = 0.02,
    pool_sigma: float = 1.0,
    gain_range: tuple[float, float] = (1.5, 2.5),
    bias_range: tuple[float, float] = (-0.5, 0.5),
    rate_scale_range: tuple[float, float] = (3.0, 5.0),
    noise: str = "poisson",
    areas: tuple[str, ...] = ("V1",),
    layers: tuple[str, ...] = ("L2/3",),
    overwrite: bool = False,
    features: str = "linear",
) -> Path:
    """Write a synthetic dataset in the Sensorium file-tree format, with its ground truth beside it.

    Args:
        path: the dataset folder to create; name it ``static<session>-<anything>`` so the session
            key parses from the name (otherwise it is rebuilt from the neuron metadata, same value).
        n_neurons: number of neurons N.
        n_train, n_validation: distinct images shown once in the train / validation tiers.
        n_test_images, n_repeats: distinct test images, each shown ``n_repeats`` times (tier "test").
        image_shape: (height, width) of the 1-channel images.
        seed: everything is deterministic given the seed.
        session: "<animal>-<session>-<scan>", stored in the neuron metadata; default: the one in a
            ``static<animal>-<session>-<scan>-...`` folder name, else "90001-1-1" (the metadata is
            what sensorium reads the session key from when the name has no other pattern).
        n_features: number of ground-truth feature channels (Gabor orientations).
        filter_size: Gabor side length in pixels (odd).
        rf_range: RF centres lie within [-rf_range, rf_range] grid units (away from the borders).
        rf_scatter: std (grid units) of the RF scatter around the cortex-to-RF linear map.
        pool_sigma: std in pixels of each neuron's Gaussian spatial pooling.
        gain_range, bias_range, rate_scale_range: uniform ranges of the per-neuron output parameters.
        noise: "poisson" (default), "gaussian" (std sqrt(rate), clipped at 0) or "none".
        areas, layers: labels assigned to neurons in turn (e.g. ("V1", "LM") makes half of them LM).
        overwrite: replace an existing folder at ``path``.
        features: "linear" (default): a neuron reads one Gabor feature map; "energy": it reads the
            Gabor energy ``sqrt(even^2 + odd^2)`` of one orientation (a nonlinear feature basis shared by
            every dataset made with the same ``n_features`` and ``filter_size``: the ground truth of
            :func:`make_multi_session_datasets`, where a core learned on some sessions transfers).

    Returns:
        The dataset folder's path.

    Raises:
        ValueError: a size or option is invalid. FileExistsError: ``path`` exists and overwrite is False.
    """
    for name, value, low in (
        ("n_neurons", n_neurons, 1),
        ("n_train", n_train, 1),
        ("n_validation", n_validation, 0),
        ("n_test_images", n_test_images, 0),
        ("n_repeats", n_repeats, 1),
        ("n_features", n_features, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    h, w = (int(v) for v in image_shape)
    if h < filter_size or w < filter_size:
        raise ValueError(f"image_shape {image_shape} is smaller than the {filter_size}px filters")
    if not 0 < rf_range < 1:
        raise ValueError(f"rf_range must lie in (0, 1), got {rf_range}")
    if noise not in ("poisson", "gaussian", "none"):
        raise ValueError(f"noise must be 'poisson', 'gaussian' or 'none', got {noise!r}")
    if features not in FEATURE_TYPES:
        raise ValueError(f"features must be one of {FEATURE_TYPES}, got {features!r}")
    target = Path(path).expanduser()
    if session is None:
        named = re.search(r"static(\d+-\d+-\d+)", target.name)
        session = named.group(1) if named else "90001-1-1"
    animal, sess, scan = _parse_session(session)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    rng = np.random.default_rng(seed)

    # ---- stimuli and trial layout
    n_distinct = n_train + n_validation + n_test_images
    images = pink_noise_images(n_distinct, (h, w), rng)
    image_tier = np.array(["train"] * n_train + ["validation"] * n_validation + ["test"] * n_test_images)
    image_ids = rng.permutation(np.arange(1000, 1000 + n_distinct))
    trial_image = np.concatenate(
        [
            np.arange(n_train + n_validation),
            np.repeat(np.arange(n_train + n_validation, n_distinct), n_repeats),
        ]
    )
    trial_image = trial_image[rng.permutation(len(trial_image))]  # interleave tiers, as in a recording
    n_trials = len(trial_image)

    # ---- ground-truth neurons
    cortex = np.column_stack(
        [
            rng.uniform(-250, 250, n_neurons),
            rng.uniform(-250, 250, n_neurons),
            rng.uniform(180, 260, n_neurons),
        ]
    )
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # (u, v) in [-1, 1] -> rotated and shrunk so that every mapped point stays within rf_range.
    mapping = rf_range / (np.cos(angle) + np.sin(angle)) * rotation / 250.0
    rf = cortex[:, :2] @ mapping.T + rng.normal(0.0, rf_scatter, (n_neurons, 2))
    rf = np.clip(rf, -rf_range, rf_range)
    rf_x, rf_y = rf[:, 0], rf[:, 1]
    feature_index = rng.permutation(np.arange(n_neurons) % n_features)
    gains = rng.uniform(*gain_range, n_neurons)
    biases = rng.uniform(*bias_range, n_neurons)
    rate_scale = rng.uniform(*rate_scale_range, n_neurons)
    filters = gabor_filters(n_features, size=filter_size)
    odd_filters = (
        gabor_filters(n_features, size=filter_size, phase=np.pi / 2) if features == "energy" else None
    )

    # ---- noise-free rates for every distinct image
    standardized = (images[:, 0].astype(np.float64) - 128.0) / 50.0
    pooled = _pooled_features(
        standardized, filters, feature_index, rf_x, rf_y, pool_sigma, odd_filters=odd_filters
    )  # (n_distinct, N)
    pooled_mean, pooled_std = pooled.mean(axis=0), pooled.std(axis=0)
    z = (pooled - pooled_mean) / pooled_std
    rates = rate_scale * np.logaddexp(0.0, gains * z + biases)  # softplus, numerically safe

    # ---- noisy single-trial responses
    trial_rates = rates[trial_image]
    if noise == "poisson":
        responses = rng.poisson(trial_rates).astype(np.float64)
    elif noise == "gaussian":
        responses = np.clip(
            trial_rates + rng.standard_normal(trial_rates.shape) * np.sqrt(trial_rates), 0, None
        )
    else:
        responses = trial_rates.copy()

    # ---- behaviour and eye position, smooth over presentation order
    presentation = rng.permutation(n_trials)  # trial_idx: the order in which trials were shown
    order = np.argsort(presentation)
    pupil_size = 45.0 + 8.0 * _smooth_walk(rng, n_trials, 1)[:, 0]
    running = np.abs(2.0 * _smooth_walk(rng, n_trials, 1)[:, 0])
    behavior_seq = np.column_stack([pupil_size, np.gradient(pupil_size), running])
    eye_seq = np.array([750.0, 470.0]) + 3.0 * _smooth_walk(rng, n_trials, 2)
    behavior = np.empty_like(behavior_seq)
    behavior[order] = behavior_seq
    pupil_center = np.empty_like(eye_seq)
    pupil_center[order] = eye_seq
    trial_images = images[trial_image]

    # ---- write into a temporary sibling folder, then move into place (no half-written dataset)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for field, values in (
            ("images", trial_images),
            ("responses", responses),
            ("behavior", behavior),
            ("pupil_center", pupil_center),
        ):
            folder = tmp / "data" / field
            folder.mkdir(parents=True)
            _save_trials(folder, values)
        area_labels = np.array([areas[i % len(areas)] for i in range(n_neurons)])
        layer_labels = np.array([layers[i % len(layers)] for i in range(n_neurons)])
        meta_neurons = {
            "unit_ids": np.arange(1, n_neurons + 1, dtype=np.uint16 if n_neurons < 65535 else np.int64),
            "area": area_labels,
            "layer": layer_labels,
            "animal_ids": np.full(n_neurons, animal, dtype=np.int64),
            "sessions": np.full(n_neurons, sess, dtype=np.int64),
            "scan_idx": np.full(n_neurons, scan, dtype=np.int64),
            "cell_motor_coordinates": cortex.astype(np.float64),
        }
        meta_trials = {
            "tiers": image_tier[trial_image],
            "frame_image_id": image_ids[trial_image].astype(np.int64),
            "trial_idx": presentation.astype(np.int64),
            "frame_image_class": np.full(n_trials, "pink_noise"),
            "animal_id": np.full(n_trials, animal, dtype=np.int64),
            "session": np.full(n_trials, sess, dtype=np.int64),
            "scan_idx": np.full(n_trials, scan, dtype=np.int64),
        }
        for group, arrays in (("neurons", meta_neurons), ("trials", meta_trials)):
            folder = tmp / "meta" / group
            folder.mkdir(parents=True)
            for name, arr in arrays.items():
                np.save(folder / f"{name}.npy", arr)
        stats = {
            "images": _statistics(trial_images, per_column=False),
            "responses": _statistics(responses, per_column=True),
            "behavior": _statistics(behavior, per_column=True),
            "pupil_center": _statistics(pupil_center, per_column=True),
        }
        for field, values in stats.items():
            for kind in ("all", "stimulus_frame"):
                folder = tmp / "meta" / "statistics" / field / kind
                folder.mkdir(parents=True)
                for name in _STAT_NAMES:
                    np.save(folder / f"{name}.npy", values[name])
        (tmp / "config.json").write_text(json.dumps({"links": {"targets": "responses", "inputs": "images"}}))

        test_images = np.arange(n_train + n_validation, n_distinct)
        np.savez(
            tmp / "ground_truth.npz",
            rf_x=rf_x,
            rf_y=rf_y,
            cortex_xyz=cortex,
            mapping=mapping,
            feature_index=feature_index,
            features=np.eye(n_features)[feature_index] * gains[:, None],
            filters=filters,
            **({"odd_filters": odd_filters} if odd_filters is not None else {}),
            gains=gains,
            biases=biases,
            rate_scale=rate_scale,
            pooled_mean=pooled_mean,
            pooled_std=pooled_std,
            rates=trial_rates,
            test_image_ids=image_ids[test_images],
            test_rates=rates[test_images],
        )
        settings = {
            "seed": int(seed),
            "session": session,
            "n_neurons": int(n_neurons),
            "n_train": int(n_train),
            "n_validation": int(n_validation),
            "n_test_images": int(n_test_images),
            "n_repeats": int(n_repeats),
            "image_shape": [h, w],
            "n_features": int(n_features),
            "filter_size": int(filter_size),
            "rf_range": float(rf_range),
            "rf_scatter": float(rf_scatter),
            "pool_sigma": float(pool_sigma),
            "features": features,
            "noise": {"type": noise, "description": _NOISE_TEXT[noise]},
            "model": "rate = rate_scale * softplus(gains * (pooled - pooled_mean) / pooled_std + biases); "
            "pooled = Gaussian(pool_sigma px at rf_x, rf_y)-weighted sum of conv(filters[feature_index], "
            "(image - 128) / 50)",
            "units": {
                "rf": "grid units in [-1, 1], align_corners=True; x along width, y along height",
                "cortex_xyz": "micrometres",
                "mapping": "rf_xy = mapping @ cortex_xy (+ scatter)",
            },
        }
        (tmp / "ground_truth.json").write_text(json.dumps(settings, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


#: the ground-truth feature types of :func:`make_synthetic_dataset`
FEATURE_TYPES = ("linear", "energy")


def make_multi_session_datasets(
    root: str | os.PathLike,
    n_sessions: int = 4,
    n_neurons: int | Sequence[int] = 60,
    n_train: int | Sequence[int] = 1500,
    seed: int = 0,
    features: str = "energy",
    first_session: int = 90001,
    **kwargs: Any,
) -> list[Path]:
    """Several synthetic sessions whose neurons read out the same nonlinear feature basis.

    Session ``i`` is the dataset ``root / f"static{first_session + i}-1-1-synthetic"`` made by
    :func:`make_synthetic_dataset` with seed ``seed + 1000 * i``: its own images, neurons, receptive-field
    positions, gains and noise, but the same features (Gabor energy of ``n_features`` orientations by
    default), so a core learned on some sessions serves the others (Lurz et al. 2021's transfer).

    Args:
        root: folder the sessions go in (created).
        n_sessions: number of sessions.
        n_neurons, n_train: per session, one value for all or one per session.
        seed: base seed.
        features: the shared feature type (:data:`FEATURE_TYPES`).
        first_session: the first session's animal id (the data key is ``"<id>-1-1"``).
        **kwargs: passed to every :func:`make_synthetic_dataset` call (``n_validation``,
            ``image_shape``, ``n_features``, ``noise``, ``overwrite`` ...).

    Returns:
        The session folders, in order.

    Raises:
        ValueError: a per-session list of the wrong length, or a bad option.
    """
    if isinstance(n_sessions, bool) or not isinstance(n_sessions, int) or n_sessions < 1:
        raise ValueError(f"n_sessions must be a positive integer, got {n_sessions!r}")
    for name in ("seed", "session", "path"):
        if name in kwargs:
            raise ValueError(f"make_multi_session_datasets sets {name!r} itself for every session")

    def per_session(name: str, value: int | Sequence[int]) -> list[int]:
        if isinstance(value, int | np.integer):
            return [int(value)] * n_sessions
        values = [int(v) for v in value]
        if len(values) != n_sessions:
            raise ValueError(f"{name} has {len(values)} entries for {n_sessions} sessions")
        return values

    neurons, trains = per_session("n_neurons", n_neurons), per_session("n_train", n_train)
    base = Path(root).expanduser()
    paths = []
    for i in range(n_sessions):
        session = f"{first_session + i}-1-1"
        paths.append(
            make_synthetic_dataset(
                base / f"static{session}-synthetic",
                n_neurons=neurons[i],
                n_train=trains[i],
                seed=seed + 1000 * i,
                session=session,
                features=features,
                **kwargs,
            )
        )
    return paths


_NOISE_TEXT = {
    "poisson": "responses ~ Poisson(rate), independent across neurons and trials",
    "gaussian": "responses = max(0, rate + sqrt(rate) * N(0, 1))",
    "none": "responses = rate (noise-free)",
}


def load_ground_truth(path: str | os.PathLike) -> dict:
    """Read the ground truth written by ``make_synthetic_dataset``.

    Args:
        path: the synthetic dataset folder (or a .zip made from it with ``zip_dataset``).

    Returns:
        A dict with numpy arrays ``rf_x``, ``rf_y`` (N,) in grid units, ``cortex_xyz`` (N, 3),
        ``mapping`` (2, 2), ``feature_index`` (N,), ``features`` (N, n_features), ``filters``
        (n_features, k, k), ``gains``, ``biases``, ``rate_scale``, ``rates`` (trials, N, noise-free, in
        file order), ``test_image_ids`` (n_test_images,), ``test_rates`` (n_test_images, N); and the
        settings: ``noise`` (dict with ``type``), ``seed``, ``n_neurons``, ``image_shape``, ... .

    Raises:
        FileNotFoundError: no ground truth at ``path`` (not a synthetic dataset).
    """
    location = Path(path).expanduser()
    if location.is_file() and zipfile.is_zipfile(location):
        from .files import ZipSource

        source = ZipSource(location)
        try:
            if not source.exists("ground_truth.npz"):
                raise FileNotFoundError(f"{location} holds no ground_truth.npz (not a synthetic dataset)")
            raw_npz, raw_json = source.read_bytes("ground_truth.npz"), source.read_bytes("ground_truth.json")
        finally:
            source.close()
    else:
        npz_path, json_path = location / "ground_truth.npz", location / "ground_truth.json"
        if not npz_path.is_file() or not json_path.is_file():
            raise FileNotFoundError(f"{location} holds no ground_truth.npz/.json (not a synthetic dataset)")
        raw_npz, raw_json = npz_path.read_bytes(), json_path.read_bytes()
    with np.load(io.BytesIO(raw_npz), allow_pickle=False) as archive:
        truth = {name: archive[name] for name in archive.files}
    truth.update(json.loads(raw_json))
    return truth


def _effective_filters(
    filters: np.ndarray,
    feature_index: np.ndarray,
    rf_x: np.ndarray,
    rf_y: np.ndarray,
    shape: tuple[int, int],
    pool_sigma: float,
) -> np.ndarray:
    """Each neuron's whole linear receptive field (N, H, W) on the standardised image.

    Pooling the "same"-padded feature map ``conv(filter, image)`` with a Gaussian centred at the RF
    equals a dot product of the image with the Gaussian spread by the filter (a transposed conv):
    computing that once per neuron is far cheaper than filtering every image.
    """
    h, w = shape
    py, px = _grid_to_pixel(rf_y, h), _grid_to_pixel(rf_x, w)
    yy, xx = np.mgrid[0:h, 0:w]
    pools = np.exp(
        -((yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2) / (2 * pool_sigma**2)
    )
    pools /= pools.sum(axis=(1, 2), keepdims=True)
    weights = torch.from_numpy(filters[feature_index][:, None])  # (N, 1, k, k)
    with torch.no_grad():
        spread = F.conv_transpose2d(
            torch.from_numpy(pools)[None], weights, padding=filters.shape[-1] // 2, groups=len(feature_index)
        )
    return spread[0].numpy()


def linear_filters(truth: Mapping[str, Any] | str | os.PathLike) -> np.ndarray:
    """Each ground-truth neuron's linear filter: its Gabor feature at its RF position, pooled by its Gaussian.

    A neuron's drive is ``gain * (<filter, s> - pooled_mean) / pooled_std + bias`` with
    ``s = (image - 128) / 50`` the standardised image and ``gain > 0``, so its response (a softplus of
    the drive) grows along ``+filter``: under a fixed image norm the most exciting input is the filter
    itself (scaled), the most inhibitory one its negative. The data loaders' normalised images
    ``(image - mean) / std`` are an increasing affine map of ``s``, so the filter is the same up to scale
    in the model's input units.

    Args:
        truth: the dict from :func:`load_ground_truth`, or the dataset folder / zip to read it from.

    Returns:
        float64 array (N, H, W), one filter per neuron, in the dataset's neuron order.
    """
    if not isinstance(truth, Mapping):
        truth = load_ground_truth(truth)
    if truth.get("features", "linear") != "linear":
        raise ValueError(
            f"the neurons of a {truth['features']!r}-feature dataset have no linear filter (their feature is nonlinear)"
        )
    try:
        shape = tuple(int(v) for v in truth["image_shape"])
        return _effective_filters(
            np.asarray(truth["filters"], dtype=np.float64),
            np.asarray(truth["feature_index"]),
            np.asarray(truth["rf_x"], dtype=np.float64),
            np.asarray(truth["rf_y"], dtype=np.float64),
            (shape[0], shape[1]),
            float(truth["pool_sigma"]),
        )
    except KeyError as err:
        raise ValueError(
            f"the ground truth lacks {err.args[0]!r}; it must come from load_ground_truth"
        ) from None


def zip_dataset(folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip a dataset folder the way Sensorium distributes data (the folder inside the archive).

    Args:
        folder: the dataset folder.
        zip_path: the .zip to write (replaced atomically).

    Returns:
        ``zip_path`` as a Path.
    """
    src = Path(folder)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder does not exist: {src}")
    out = Path(zip_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(p for p in src.rglob("*") if p.is_file()):
                archive.write(file, f"{src.name}/{file.relative_to(src).as_posix()}")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry: ``python -m pipeline.data.synthetic OUT_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.data.synthetic",
        description="Write a synthetic Sensorium-format dataset with a known ground truth (RFs, features, noise).",
    )
    parser.add_argument("out_dir", help="dataset folder to create, e.g. data/static90001-1-1-synthetic")
    parser.add_argument("--neurons", type=int, default=60, help="number of neurons (default 60)")
    parser.add_argument("--train", type=int, default=1500, help="train images (default 1500)")
    parser.add_argument("--validation", type=int, default=250, help="validation images (default 250)")
    parser.add_argument("--test-images", type=int, default=50, help="distinct test images (default 50)")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of each test image (default 10)")
    parser.add_argument("--height", type=int, default=36, help="image height in pixels (default 36)")
    parser.add_argument("--width", type=int, default=64, help="image width in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--session",
        default=None,
        help="<animal>-<session>-<scan> (default: from a static<a>-<s>-<c>-... folder name, else 90001-1-1)",
    )
    parser.add_argument("--noise", choices=["poisson", "gaussian", "none"], default="poisson")
    parser.add_argument(
        "--features",
        choices=list(FEATURE_TYPES),
        default="linear",
        help="ground-truth features: linear Gabor maps (default) or Gabor energy (nonlinear)",
    )
    parser.add_argument("--zip", action="store_true", help="also write OUT_DIR.zip")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)
    path = make_synthetic_dataset(
        args.out_dir,
        n_neurons=args.neurons,
        n_train=args.train,
        n_validation=args.validation,
        n_test_images=args.test_images,
        n_repeats=args.repeats,
        image_shape=(args.height, args.width),
        seed=args.seed,
        session=args.session,
        noise=args.noise,
        overwrite=args.overwrite,
        features=args.features,
    )
    print(f"wrote {path}")
    if args.zip:
        print(f"wrote {zip_dataset(path, str(path) + '.zip')}")
    return path


if __name__ == "__main__":
    main()
