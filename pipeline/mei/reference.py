"""What an MEI is measured against: the data's input shape, pixel range and mean responses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.contracts import split_batch

__all__ = ["DataReference", "data_reference"]


@dataclass(frozen=True)
class DataReference:
    """Facts of one session's data that MEIs need.

    Attributes:
        input_shape: (C, H, W) of the model's input images.
        pixel_range: (low, high) of the pixel values the model sees (normalised units), the
            ``data_range`` of :func:`~pipeline.mei.optimize_meis`.
        mean_response: (N,) float64 each neuron's mean response over the loader's trials (in the
            loader's units, the same as the model's output), to express an MEI's activation relative to it.
        n_trials: trials the statistics are over.
    """

    input_shape: tuple[int, int, int]
    pixel_range: tuple[float, float]
    mean_response: np.ndarray
    n_trials: int


def data_reference(loader: Iterable) -> DataReference:
    """One pass over ``loader`` (e.g. a session's train loader): input shape, pixel range, mean responses.

    Raises:
        ValueError: the loader yields no batches, images are not (B, C, H, W), or the shapes change.
    """
    low, high = float("inf"), -float("inf")
    total: torch.Tensor | None = None
    shape: tuple[int, ...] | None = None
    n = 0
    with torch.no_grad():
        for batch in loader:
            images, responses, _ = split_batch(batch)
            if images.dim() != 4 or responses.dim() != 2:
                raise ValueError(
                    f"batches must hold images (B, C, H, W) and responses (B, N), got "
                    f"{tuple(images.shape)} and {tuple(responses.shape)}"
                )
            if shape is None:
                shape = tuple(images.shape[1:])
            elif tuple(images.shape[1:]) != shape:
                raise ValueError(
                    f"image shape changes within the loader: {shape} then {tuple(images.shape[1:])}"
                )
            images = images.float()
            low, high = min(low, float(images.min())), max(high, float(images.max()))
            summed = responses.double().sum(dim=0).cpu()
            total = summed if total is None else total + summed
            n += len(responses)
    if total is None or shape is None or n == 0:
        raise ValueError(
            "the loader yields no batches: cannot take the data's pixel range and mean responses"
        )
    return DataReference(
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        pixel_range=(low, high),
        mean_response=(total / n).numpy(),
        n_trials=n,
    )
