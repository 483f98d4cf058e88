"""The cross-cutting contracts every layer relies on, each written once.

* :func:`split_batch` — a batch (namedtuple, dict or tuple) as ``(inputs, targets, extra fields)``;
  :func:`batch_as_dict` — the same batch as ``{field: value}``.
* :data:`TIERS` / :func:`ordered_tiers` — the tier names in their canonical order.
* :func:`tier_loaders` / :func:`train_loaders` — the ``{data_key: loader}`` dict of one tier, from
  either a tier dict or the full ``{tier: {data_key: loader}}`` dict.
* :func:`resolve_data_key` and :class:`UnknownDataKeyError` — choosing a session's module.
* :func:`resolve_device` — ``"auto"``/``"cpu"``/``"cuda[:k]"`` to a ``torch.device``, with a clear
  error where CUDA is missing.
* :func:`finite_or_none` — a number as a finite float or None (SQL NULL: MySQL cannot store NaN).
* :data:`NEURON_SCORE_NAMES` — the per-neuron score names of :func:`pipeline.scoring.score_model`.

The per-neuron readout parameter names live with the readouts
(:data:`pipeline.models.readouts.base.NEURON_PARAMETER_KEYS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

__all__ = [
    "INPUT_FIELDS",
    "NEURON_SCORE_NAMES",
    "TARGET_FIELDS",
    "TIERS",
    "SplitBatch",
    "UnknownDataKeyError",
    "batch_as_dict",
    "finite_or_none",
    "is_tier_dict",
    "ordered_tiers",
    "resolve_data_key",
    "resolve_device",
    "split_batch",
    "tier_loaders",
    "train_loaders",
]

#: names of the input field of a dict batch, in the order they are looked for
INPUT_FIELDS = ("images", "inputs")
#: names of the target field of a dict batch, in the order they are looked for
TARGET_FIELDS = ("responses", "targets")

#: per-neuron scores computed for every tier (the repeat-based ones are None without repeats)
NEURON_SCORE_NAMES = ("correlation", "correlation_to_average", "fev", "feve", "oracle")


# ------------------------------------------------------------------------------------------ batches
class SplitBatch(NamedTuple):
    """A batch split into the model input, the target responses and every other field."""

    inputs: Any
    targets: Any
    extra: dict[str, Any]


def split_batch(batch: Any) -> SplitBatch:
    """Split a batch into ``(inputs, targets, extra)``.

    Args:
        batch: a namedtuple whose first two fields are the images and responses (the loaders'
            batches: ``images, responses[, behavior][, pupil_center]``); a dict with an input key
            (:data:`INPUT_FIELDS`) and a target key (:data:`TARGET_FIELDS`); or a plain tuple/list
            ``(images, responses, ...)``.

    Returns:
        :class:`SplitBatch`; ``extra`` holds the remaining named fields (``behavior``,
        ``pupil_center`` ...), to be passed to a model as keyword arguments (empty for tuples).

    Raises:
        ValueError: a dict without input or target key, or fewer than two fields.
        TypeError: anything else.
    """
    if isinstance(batch, Mapping):
        fields = dict(batch)
        in_key = next((k for k in INPUT_FIELDS if k in fields), None)
        out_key = next((k for k in TARGET_FIELDS if k in fields), None)
        if in_key is None or out_key is None:
            raise ValueError(
                f"a dict batch needs an input key {INPUT_FIELDS} and a target key {TARGET_FIELDS}, "
                f"got {sorted(fields)}"
            )
        inputs, targets = fields.pop(in_key), fields.pop(out_key)
        return SplitBatch(inputs, targets, fields)
    if hasattr(batch, "_asdict"):
        fields = dict(batch._asdict())
        names = list(fields)
        if len(names) < 2:
            raise ValueError(f"a batch needs at least images and responses, got fields {names}")
        inputs, targets = fields.pop(names[0]), fields.pop(names[1])
        return SplitBatch(inputs, targets, fields)
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        if len(batch) < 2:
            raise ValueError(f"a batch needs at least images and responses, got {len(batch)} field(s)")
        return SplitBatch(batch[0], batch[1], {})
    raise TypeError(
        f"a batch must be a namedtuple, dict or tuple of (images, responses, ...), got {type(batch).__name__}"
    )


def batch_as_dict(batch: Any) -> dict[str, Any]:
    """Every field of a batch by name, in the batch's order (what shapes are read from).

    Args:
        batch: as for :func:`split_batch`; a namedtuple or dict keeps its names, a plain tuple/list's
            fields are named ``inputs``, ``targets`` (sensorium's names), ``field2``, ``field3`` ...

    Raises:
        TypeError: anything but a namedtuple, dict, tuple or list.
    """
    if isinstance(batch, Mapping):
        return dict(batch)
    if hasattr(batch, "_asdict"):
        return dict(batch._asdict())
    if isinstance(batch, Sequence) and not isinstance(batch, str | bytes):
        names = ["inputs", "targets"] + [f"field{i}" for i in range(2, len(batch))]
        return dict(zip(names, batch))
    raise TypeError(f"a batch must be a namedtuple, a dict or a tuple of tensors, got {type(batch).__name__}")


# ------------------------------------------------------------------------------------------ loaders
#: the Sensorium tiers in their canonical order (other tier names follow them, sorted)
TIERS = ("train", "validation", "test", "final_test")


def ordered_tiers(names: Iterable[str]) -> list[str]:
    """``names`` without repeats in the canonical order: :data:`TIERS` first, then the others sorted."""
    present = list(dict.fromkeys(str(name) for name in names))
    return [t for t in TIERS if t in present] + sorted(t for t in present if t not in TIERS)


def is_tier_dict(dataloaders: Mapping) -> bool:
    """Whether ``dataloaders`` is the full ``{tier: {data_key: loader}}`` dict (not one tier)."""
    return bool(dataloaders) and all(isinstance(v, Mapping) for v in dataloaders.values())


def tier_loaders(dataloaders: Mapping, tier: str | None = None) -> Mapping[str, Any]:
    """The ``{data_key: loader}`` dict of one tier.

    Args:
        dataloaders: one tier ``{data_key: loader}`` (returned as is; ``tier`` is then ignored) or
            the full ``{tier: {data_key: loader}}`` dict.
        tier: the tier to pick from a full dict (required there).

    Raises:
        TypeError: not a dict.
        ValueError: a full dict without ``tier``, an unknown tier, or no session.
    """
    if not isinstance(dataloaders, Mapping):
        raise TypeError(
            f"dataloaders must be a dict {{data_key: loader}} or {{tier: {{data_key: loader}}}}, "
            f"got {type(dataloaders).__name__}"
        )
    if is_tier_dict(dataloaders):
        if tier is None:
            raise ValueError(f"dataloaders holds tiers {sorted(dataloaders)}: pass tier= to choose one")
        if tier not in dataloaders:
            raise ValueError(f"tier {tier!r} is not among the loaders' tiers {sorted(dataloaders)}")
        dataloaders = dataloaders[tier]
    if not dataloaders:
        raise ValueError("dataloaders holds no session: need at least one {data_key: loader}")
    return dataloaders


def train_loaders(dataloaders: Mapping) -> Mapping[str, Any]:
    """The training tier's ``{data_key: loader}`` (what builders read shapes and mean activity from).

    Raises:
        ValueError: the loaders have tiers but no ``train`` tier (a dataset without train trials).
    """
    if isinstance(dataloaders, Mapping) and is_tier_dict(dataloaders) and "train" not in dataloaders:
        raise ValueError(
            f"the dataset has no train trials (its tiers: {', '.join(sorted(dataloaders))}): "
            "models are built and trained from the train tier; check meta/trials/tiers.npy or the tier= option"
        )
    return tier_loaders(dataloaders, "train")


# ------------------------------------------------------------------------------------------ sessions
class UnknownDataKeyError(KeyError, ValueError):
    """A ``data_key`` that names no session of a model (a KeyError and a ValueError)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def resolve_data_key(keys: Iterable[str], data_key: str | None, owner: str = "model") -> str:
    """The session to use: ``data_key`` itself, or the only session when it is None.

    Args:
        keys: the sessions the module knows (e.g. a ``ModuleDict``'s keys).
        data_key: the requested session, or None.
        owner: what the sessions belong to, for the message ("readout", "shifter" ...).

    Raises:
        UnknownDataKeyError: ``data_key`` is not among ``keys``.
        ValueError: ``data_key`` is None and there is not exactly one session.
    """
    keys = list(keys)
    if data_key is None:
        if len(keys) == 1:
            return keys[0]
        raise ValueError(f"data_key is required with several sessions; choose one of {keys}")
    if data_key not in keys:
        raise UnknownDataKeyError(f"unknown data_key {data_key!r}; the {owner} has sessions {keys}")
    return data_key


# ------------------------------------------------------------------------------------------ devices
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` / a ``torch.device`` into a ``torch.device``.

    ``"auto"`` (or None) picks CUDA when available, else CPU. Asking for CUDA on a machine without it
    raises a ValueError instead of failing later inside a forward pass.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
            ) from err
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


# ------------------------------------------------------------------------------------------ numbers
def finite_or_none(value: Any) -> float | None:
    """A finite float, or None (SQL NULL) for None, NaN, ±inf and values that are not numbers."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
