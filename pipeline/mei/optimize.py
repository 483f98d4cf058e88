"""Most exciting (or inhibiting) inputs: gradient ascent on the input images, batched over neurons.

One optimisation runs N images for N neurons at once: the model sees a batch of N images and image
i's objective is neuron ``neurons[i]``'s output to it. In eval mode the images of a batch do not
interact (batch norm uses its running statistics, Gaussian readouts their mean positions), so the
gradient of the summed objectives with respect to image i is that image's own gradient, and the
result for a neuron does not depend on which other neurons share its batch. Each neuron's initial
noise (and jitter) comes from its own generator seeded by ``(seed, neuron)``, so an MEI is
reproducible whether it is computed alone, in a batch, or in chunks.

Each step: shift the images (jitter, optional), run the model, take the gradient of each image's
objective, blur it (preconditioning), take an optimiser step, project onto the constraints (norm,
pixel range). An image stops when its objective has not improved for ``patience`` steps (after
``min_steps``) or at ``max_steps``; stopped images leave the batch.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.contracts import resolve_device
from pipeline.mei.config import MEIConfig, mei_config
from pipeline.mei.transforms import gaussian_blur, per_image_shift, project

__all__ = ["MEIResult", "optimize_meis"]


@dataclass(frozen=True)
class MEIResult:
    """The outcome of :func:`optimize_meis` for N neurons of one session (CPU tensors).

    Attributes:
        data_key: the session.
        neurons: (N,) int64 neuron indices within the session (the model's output columns).
        images: (N, C, H, W) float32 MEIs in the data's normalised units.
        activations: (N,) the model's response of each neuron to its own MEI (no jitter, eval mode).
        norms: (N,) L2 norm of each image.
        steps: (N,) int64 steps taken by each image.
        converged: (N,) bool, whether the image stopped by the convergence rule (not the budget).
        trace: (T, N) float32 objective (the response, times −1 for ``"inhibit"``) at every step; NaN
            after an image stopped. T = the most steps any image took.
        seconds: wall time of the whole optimisation.
        config: the validated settings.
        seed: the seed of the initial noise.
    """

    data_key: str | None
    neurons: torch.Tensor
    images: torch.Tensor
    activations: torch.Tensor
    norms: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    trace: torch.Tensor
    seconds: float
    config: MEIConfig
    seed: int

    def __len__(self) -> int:
        return len(self.neurons)


def _initial_noise(seed: int, neurons: np.ndarray, shape: tuple[int, ...], std: float) -> torch.Tensor:
    """Gaussian noise for each neuron from its own generator (independent of batch composition)."""
    out = np.empty((len(neurons), *shape), dtype=np.float32)
    for i, neuron in enumerate(neurons):
        out[i] = np.random.default_rng([seed, int(neuron), 0]).standard_normal(shape) * std
    return torch.from_numpy(out)


def _jitter_shifts(seed: int, neurons: np.ndarray, steps: int, jitter: int) -> torch.Tensor:
    """(N, steps, 2) integer shifts in [-jitter, jitter], one generator per neuron."""
    out = np.zeros((len(neurons), steps, 2), dtype=np.int64)
    if jitter > 0:
        for i, neuron in enumerate(neurons):
            out[i] = np.random.default_rng([seed, int(neuron), 1]).integers(-jitter, jitter + 1, (steps, 2))
    return torch.from_numpy(out)


def _broadcast_extra(name: str, value: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """A fixed behaviour / eye position (k,) or (1, k) repeated for n images."""
    if value is None:
        return None
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device)
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2 or tensor.shape[0] != 1:
        raise ValueError(
            f"{name} must have shape (k,) or (1, k): one value for every image, got {tuple(tensor.shape)}"
        )
    return tensor.expand(n, -1)


def _check_inputs(
    model: nn.Module,
    neurons: Sequence[int] | np.ndarray | torch.Tensor,
    input_shape: Sequence[int],
    config: MEIConfig,
    data_range: Sequence[float] | None,
    seed: int,
) -> tuple[np.ndarray, tuple[int, int, int], tuple[float, float] | None]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    index = np.asarray(neurons.cpu() if isinstance(neurons, torch.Tensor) else neurons)
    if index.ndim != 1 or index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"neurons must be a non-empty 1-D sequence of integer indices, got {neurons!r}")
    if (index < 0).any():
        raise ValueError(f"neuron indices must be >= 0, got {index[index < 0].tolist()}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
    pixel_range: tuple[float, float] | None
    if config.pixel_range == "data":
        if data_range is None:
            raise ValueError(
                "the MEI config clips pixels to the data's range (pixel_range='data'): pass data_range=(low, high) "
                "in normalised units, e.g. ((0 - mean) / std, (255 - mean) / std) of the training images"
            )
        pixel_range = (float(data_range[0]), float(data_range[1]))
        if not pixel_range[0] < pixel_range[1]:
            raise ValueError(f"data_range must be (low, high) with low < high, got {pixel_range}")
    else:
        pixel_range = config.pixel_range
    if config.norm is not None and config.norm_mode == "fixed" and pixel_range is not None:
        reachable = float(np.sqrt(np.prod(shape))) * max(abs(pixel_range[0]), abs(pixel_range[1]))
        if config.norm > reachable:
            raise ValueError(
                f"norm {config.norm} cannot be reached by a {shape} image with pixels in {pixel_range} "
                f"(at most {reachable:.3g}); lower the norm or use norm_mode='bound'"
            )
    return index.astype(np.int64), shape, pixel_range


def optimize_meis(
    model: nn.Module,
    data_key: str | None,
    neurons: Sequence[int] | np.ndarray | torch.Tensor,
    input_shape: Sequence[int],
    config: MEIConfig | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    data_range: Sequence[float] | None = None,
    behavior: Any = None,
    pupil_center: Any = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> MEIResult:
    """Optimise one image per neuron so that it drives (or suppresses) that neuron most.

    Args:
        model: an encoder or :class:`~pipeline.models.EnsembleEncoder`, called as
            ``model(images, data_key=..., behavior=..., pupil_center=...)`` → (B, n_neurons). It is put
            in eval mode for the optimisation and its training flag restored afterwards; its
            parameters are not changed.
        data_key: the session (None when the model has one session).
        neurons: N neuron indices of that session (the model's output columns); repeats allowed.
        input_shape: (C, H, W) of the model's input images.
        config: :class:`~pipeline.mei.MEIConfig` or its fields as a mapping (validated; unknown keys refused).
        seed: seed of the initial noise and jitter; neuron n's start depends only on ``(seed, n)``.
        data_range: (low, high) pixel range of the data in normalised units, needed when the config
            says ``pixel_range="data"``.
        behavior, pupil_center: fixed (k,) values given to every image, for models with a modulator
            or shifter.
        batch_size: at most this many images per forward pass (chunks of the N neurons, for memory);
            None: all N at once. Results do not depend on it.
        device: where to run; default the model's device.

    Returns:
        :class:`MEIResult`.

    Raises:
        MEIConfigError: an invalid config. ValueError / TypeError: bad neurons, shapes or ranges; a
        neuron index the model's output does not have.
    """
    config = mei_config(config)
    index, shape, pixel_range = _check_inputs(model, neurons, input_shape, config, data_range, seed)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    first = next(iter(model.parameters()), None)
    run_on = (
        resolve_device(device)
        if device is not None
        else (first.device if first is not None else torch.device("cpu"))
    )

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        chunk = batch_size or len(index)
        parts = [
            _optimize_chunk(
                model,
                data_key,
                index[i : i + chunk],
                shape,
                config,
                seed,
                pixel_range,
                behavior,
                pupil_center,
                run_on,
            )
            for i in range(0, len(index), chunk)
        ]
    finally:
        model.train(was_training)
    images = torch.cat([p[0] for p in parts])
    length = max(p[4].shape[0] for p in parts)
    trace = torch.cat(
        [torch.cat([p[4], torch.full((length - p[4].shape[0], p[4].shape[1]), float("nan"))]) for p in parts],
        dim=1,
    )
    return MEIResult(
        data_key=data_key,
        neurons=torch.from_numpy(index),
        images=images,
        activations=torch.cat([p[1] for p in parts]),
        norms=images.flatten(1).norm(dim=1),
        steps=torch.cat([p[2] for p in parts]),
        converged=torch.cat([p[3] for p in parts]),
        trace=trace,
        seconds=time.perf_counter() - start,
        config=config,
        seed=int(seed),
    )


def _responses(model: nn.Module, x: torch.Tensor, data_key: str | None, extras: dict) -> torch.Tensor:
    kwargs = {name: value[: len(x)] for name, value in extras.items() if value is not None}
    out = model(x, data_key=data_key, **kwargs)
    if out.dim() != 2 or out.shape[0] != len(x):
        raise ValueError(
            f"the model returned shape {tuple(out.shape)} for {len(x)} images; expected (B, n_neurons)"
        )
    return out


def _optimize_chunk(
    model: nn.Module,
    data_key: str | None,
    neurons: np.ndarray,
    shape: tuple[int, int, int],
    config: MEIConfig,
    seed: int,
    pixel_range: tuple[float, float] | None,
    behavior: Any,
    pupil_center: Any,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batched optimisation: (images, activations, steps, converged, trace) for these neurons."""
    n = len(neurons)
    fixed = config.norm_mode == "fixed"
    extras = {
        "behavior": _broadcast_extra("behavior", behavior, n, device),
        "pupil_center": _broadcast_extra("pupil_center", pupil_center, n, device),
    }
    columns = torch.from_numpy(neurons).to(device)
    shifts = _jitter_shifts(seed, neurons, config.max_steps, config.jitter).to(device)
    x = project(
        _initial_noise(seed, neurons, shape, config.init_std).to(device), config.norm, fixed, pixel_range
    )

    with torch.no_grad():
        n_out = _responses(model, x[:1], data_key, extras).shape[1]
    if int(neurons.max()) >= n_out:
        raise ValueError(
            f"neuron index {int(neurons.max())} is out of range: session {data_key!r} has {n_out} neurons"
        )

    x = x.clone().requires_grad_(True)
    optimizer = (torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD)([x], lr=config.lr)
    best = torch.full((n,), -float("inf"), device=device)
    last_progress = torch.zeros(n, dtype=torch.long, device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    active = torch.ones(n, dtype=torch.bool, device=device)
    trace = torch.full((config.max_steps, n), float("nan"))

    for step in range(config.max_steps):
        idx = active.nonzero().squeeze(1)
        images = x[idx]
        if config.jitter > 0:
            images = per_image_shift(images, shifts[idx, step])
        out = _responses(model, images, data_key, extras)
        objective = config.sign * out.gather(1, columns[idx, None]).squeeze(1)
        (grad,) = torch.autograd.grad(objective.sum(), x)
        # ascent: the optimisers minimise, so hand them the negative, preconditioned gradient
        x.grad = -gaussian_blur(grad, config.blur_sigma)
        before = x.detach().clone()
        optimizer.step()
        with torch.no_grad():
            # stopped images stay as they were (Adam's moments would otherwise still move them)
            x.copy_(
                torch.where(active[:, None, None, None], project(x, config.norm, fixed, pixel_range), before)
            )
            value = objective.detach()
            trace[step, idx.cpu()] = value.float().cpu()
            steps[idx] += 1
            improved = value > best[idx] + config.tol * best[idx].abs()
            best[idx] = torch.maximum(best[idx], value)
            last_progress[idx] = torch.where(improved, torch.full_like(idx, step), last_progress[idx])
            done = (step + 1 >= config.min_steps) & (step - last_progress[idx] >= config.patience)
            converged[idx[done]] = True
            active[idx[done]] = False
        if not active.any():
            break

    with torch.no_grad():
        final = x.detach()
        activations = _responses(model, final, data_key, extras).gather(1, columns[:, None]).squeeze(1)
    used = int(steps.max())
    return (
        final.float().cpu(),
        activations.float().cpu(),
        steps.cpu(),
        converged.cpu(),
        trace[:used],
    )
