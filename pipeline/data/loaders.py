"""Loaders over in-memory tensors: ``static_loaders`` (sensorium's arguments) and ``TensorLoader``.

A tier's trials are gathered once into contiguous tensors on the chosen device; a batch is an index
slice of them. Responses, behaviour and pupil centre are normalised once at construction. Images
stay uint8 (when the data allows) and are normalised per batch, which keeps memory 4x smaller, except
for CPU tiers small enough (``PRENORMALIZE_MAX_BYTES``) to be normalised once as float32 for speed.

Normalisation (``normalize=True``, statistics source "all", as in sensorium's NeuroNormalizer):
images ``(x - mean) / std`` with the dataset's scalar statistics; responses ``x / std`` per neuron
with std floored at 1% of the mean std (never centred); behaviour ``x / std``; pupil centre
``(x - mean) / std``. ``exclude`` names fields left raw.

``scale`` resizes the whole image tensor once, with the values sensorium's scikit-image
rescaling gives (bilinear, no anti-aliasing, mirror boundaries, output size ``round(H * scale) x
round(W * scale)``; see :mod:`pipeline.data.rescale`), so pretrained models see the images they
were trained on.

Behaviour and eye position as image channels follow sensorium's rule: 3 behaviour channels when
``include_behavior`` and ``add_behavior_as_channels`` (default True); 2 eye-position channels only
when ``add_eye_pos_as_channels`` is truthy (default None). ``include_eye_position=True`` alone adds
the ``pupil_center`` batch field (for a shifter) and no channel.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Iterator, Sequence
from functools import cache
from itertools import zip_longest

import numpy as np
import torch

from pipeline.config_types import PositiveFloat, PositiveInt
from pipeline.contracts import ordered_tiers, resolve_device

from .datasets import ArrayNamespace, StaticDataset, get_data_key
from .rescale import rescale_images

__all__ = ["TensorLoader", "TierView", "static_loaders", "static_loader", "get_data_key", "batch_type"]

#: CPU tiers whose images take at most this many bytes as float32 are normalised once at construction;
#: larger tiers, and tiers on a GPU (where converting a batch costs next to nothing), keep uint8 images
#: and normalise each batch.
PRENORMALIZE_MAX_BYTES = 512 * 2**20


@cache
def batch_type(fields: tuple[str, ...]) -> type:
    """The namedtuple class for batches with the given fields (one class per field combination)."""
    return namedtuple("Batch", fields)


class TierView:
    """The trials of one tier of one session, as tensors on one device (``loader.dataset``).

    Attributes:
        images: tensor (n, C, H, W): uint8 (or float32 when the data or ``scale`` require it) normalised
            per batch as ``(x - image_mean) / image_std``, or, for CPU tiers up to
            ``PRENORMALIZE_MAX_BYTES``, float32 already normalised (``image_mean`` 0, ``image_std`` 1).
        responses: float32 (n, N), normalised when requested.
        behavior: float32 (n, 3) or None; pupil_center: float32 (n, 2) or None (normalised when requested).
        neurons: per-neuron metadata of the selected neurons (``ArrayNamespace``).
        trial_info: per-trial metadata of this tier's trials, in the order of the tensors.
        trial_indices: the trials' numbers in the file tree (n,).
        statistics: the dataset statistics (per-neuron response statistics restricted to the selection).
        data_key, fingerprint, tier: session key, dataset content hash, tier name.
        fields: the batch fields, e.g. ("images", "responses", "behavior").
        session_trials: trials of the whole session, every tier (what ``len(loader.dataset)`` counts
            in sensorium, whose dataset is the session; the trainer's loss scale uses it).
    """

    def __init__(
        self,
        *,
        images: torch.Tensor,
        responses: torch.Tensor,
        behavior: torch.Tensor | None,
        pupil_center: torch.Tensor | None,
        image_mean: float,
        image_std: float,
        behavior_channels: bool,
        eye_channels: bool,
        fields: tuple[str, ...],
        neurons: ArrayNamespace,
        trial_info: ArrayNamespace,
        trial_indices: np.ndarray,
        statistics: dict,
        data_key: str,
        fingerprint: str,
        tier: str,
        session_trials: int | None = None,
    ):
        self.images = images
        self.responses = responses
        self.behavior = behavior
        self.pupil_center = pupil_center
        self.image_mean = image_mean
        self.image_std = image_std
        self.behavior_channels = behavior_channels
        self.eye_channels = eye_channels
        self.fields = fields
        self.neurons = neurons
        self.trial_info = trial_info
        self.trial_indices = trial_indices
        self.statistics = statistics
        self.data_key = data_key
        self.fingerprint = fingerprint
        self.tier = tier
        self.session_trials = len(responses) if session_trials is None else int(session_trials)
        self._batch_cls = batch_type(fields)

    def __len__(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_neurons(self) -> int:
        """Number of selected neurons."""
        return int(self.responses.shape[1])

    @property
    def device(self) -> torch.device:
        """The device holding the tensors."""
        return self.responses.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C', H, W) of a batch's images, including behaviour / eye-position channels."""
        c, h, w = self.images.shape[1:]
        return (c + 3 * self.behavior_channels + 2 * self.eye_channels, h, w)

    def batch(self, index: torch.Tensor | slice) -> tuple:
        """Assemble the batch for ``index`` (a slice or a 1-d long tensor on ``self.device``).

        Returns:
            A ``Batch`` namedtuple: images float32 (B, C', H, W), responses (B, N), then behavior
            (B, 3) and pupil_center (B, 2) when included.
        """
        take = self._slicer(index)
        images = take(self.images)
        if images.dtype == torch.float32 and isinstance(index, slice):
            images = images.clone()  # a float32 slice is a view of the stored tensor: never modify it
        images = images.float()
        if self.image_std != 1.0 or self.image_mean != 0.0:
            images.sub_(self.image_mean).div_(self.image_std)
        behavior = take(self.behavior) if self.behavior is not None else None
        pupil = take(self.pupil_center) if self.pupil_center is not None else None
        h, w = images.shape[-2:]
        extra = []
        if self.behavior_channels:
            extra.append(behavior[:, :, None, None].expand(-1, -1, h, w))
        if self.eye_channels:
            extra.append(pupil[:, :, None, None].expand(-1, -1, h, w))
        if extra:
            images = torch.cat([images, *extra], dim=1)
        values = {
            "images": images,
            "responses": take(self.responses),
            "behavior": behavior,
            "pupil_center": pupil,
        }
        return self._batch_cls(*(values[f] for f in self.fields))

    @staticmethod
    def _slicer(index: torch.Tensor | slice):
        if isinstance(index, slice):
            return lambda t: t[index]  # a view, no copy
        # index_select is far faster than advanced indexing for gathering rows (~20x for uint8 images).
        return lambda t: torch.index_select(t, 0, index)

    def __getitem__(self, i: int) -> tuple:
        """One trial as a ``Batch`` without the batch dimension."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"trial {i} out of range for a tier of {len(self)} trials")
        i = i % len(self)
        return self._batch_cls(*(t[0] for t in self.batch(slice(i, i + 1))))

    def image_groups(self) -> list[torch.Tensor]:
        """Index tensors (on ``self.device``), one per distinct ``frame_image_id`` in first-seen order."""
        if not hasattr(self, "_groups"):
            ids = np.asarray(self.trial_info.frame_image_id) if "frame_image_id" in self.trial_info else None
            if ids is None:
                raise ValueError(
                    f"session {self.data_key}: meta/trials/frame_image_id is needed to group repeats"
                )
            _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
            order = np.argsort(first)  # groups in order of first appearance
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            members = np.argsort(rank[inverse], kind="stable")
            counts = np.bincount(rank[inverse], minlength=len(order))
            splits = np.split(members, np.cumsum(counts)[:-1])
            self._groups = [torch.as_tensor(g, dtype=torch.long, device=self.device) for g in splits]
        return self._groups

    def __repr__(self) -> str:
        return f"TierView({self.data_key!r}, {self.tier!r}: {len(self)} trials, {self.n_neurons} neurons)"


class TensorLoader:
    """Iterate batches over a ``TierView`` without per-trial Python work.

    Args:
        dataset: the tier view to iterate.
        batch_size: trials per batch (the last batch may be smaller).
        shuffle: draw a new random permutation every pass (training); otherwise keep file order.
        seed: seed of the loader's own ``torch.Generator``; the sequence of permutations is
            reproducible from it. None draws a seed from torch's global generator.
        per_image: iterate one batch per distinct image (all its repeats), like ``by_image()``.

    Attributes:
        batch_size, dataset, shuffle, generator.
    """

    def __init__(
        self,
        dataset: TierView,
        batch_size: int,
        shuffle: bool = False,
        seed: int | None = None,
        per_image: bool = False,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.per_image = bool(per_image)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)

    def __len__(self) -> int:
        if self.per_image:
            return len(self.dataset.image_groups())
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        if self.per_image:
            yield from self.by_image()
            return
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.dataset.device)
            for start in range(0, n, self.batch_size):
                yield self.dataset.batch(order[start : start + self.batch_size])
        else:
            for start in range(0, n, self.batch_size):
                yield self.dataset.batch(slice(start, start + self.batch_size))

    def by_image(self) -> Iterator[tuple]:
        """Yield one batch per distinct ``frame_image_id`` (all repeats together), in first-seen order."""
        for group in self.dataset.image_groups():
            yield self.dataset.batch(group)

    @property
    def device(self) -> torch.device:
        """The device of the batches."""
        return self.dataset.device

    def state_dict(self) -> dict:
        """The shuffling state (to resume the exact sequence of permutations)."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from ``state_dict()``."""
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (
            f"TensorLoader({self.dataset.data_key!r}, {self.dataset.tier!r}: {len(self.dataset)} trials, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle})"
        )


# ---------------------------------------------------------------------------- building
def _as_list(value, name: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence | np.ndarray):
        return list(value)
    raise TypeError(f"{name} must be a list, got {type(value).__name__}")


def _select_neurons(
    ds: StaticDataset,
    areas,
    layers,
    neuron_ids,
    neuron_n: int | None,
    exclude_neuron_n: int,
    neuron_base_seed,
    seed: int | None,
) -> np.ndarray:
    """Indices of the selected neurons (in the order of ``neuron_ids`` when given)."""
    unit_ids = np.asarray(ds.neurons.unit_ids)
    if neuron_ids is not None:
        if any(v is not None for v in (areas, layers, neuron_n, neuron_base_seed)) or exclude_neuron_n:
            raise ValueError("neuron_ids cannot be combined with areas, layers, neuron_n or neuron_base_seed")
        position = {int(u): i for i, u in enumerate(unit_ids)}
        unknown = [u for u in neuron_ids if int(u) not in position]
        if unknown:
            raise ValueError(
                f"session {ds.data_key}: neuron_ids not in meta/neurons/unit_ids: {unknown[:10]}"
            )
        return np.array([position[int(u)] for u in neuron_ids], dtype=np.int64)
    keep = np.ones(len(unit_ids), dtype=bool)
    for name, wanted in (("area", areas), ("layer", layers)):
        if wanted is not None:
            if name not in ds.neurons:
                raise ValueError(f"session {ds.data_key}: selecting by {name} needs meta/neurons/{name}.npy")
            keep &= np.isin(np.asarray(getattr(ds.neurons, name)), _as_list(wanted, name + "s"))
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise ValueError(f"session {ds.data_key}: no neuron matches areas={areas!r}, layers={layers!r}")
    if neuron_n is not None:
        if exclude_neuron_n and neuron_base_seed is None:
            raise ValueError("neuron_base_seed must be set when exclude_neuron_n is not 0")
        if len(idx) < exclude_neuron_n + neuron_n:
            raise ValueError(
                f"session {ds.data_key}: neuron_n={neuron_n} (+ exclude_neuron_n={exclude_neuron_n}) exceeds "
                f"the {len(idx)} available neurons"
            )
        # Same draw as sensorium: RandomState(neuron_base_seed * neuron_n).choice over unit ids.
        rng = np.random.RandomState(
            int(neuron_base_seed * neuron_n) if neuron_base_seed is not None else seed
        )
        chosen = rng.choice(unit_ids[idx], size=exclude_neuron_n + neuron_n, replace=False)[exclude_neuron_n:]
        position = {int(u): i for i, u in enumerate(unit_ids)}
        idx = np.array([position[int(u)] for u in chosen], dtype=np.int64)
    return idx


def _tier_trials(ds: StaticDataset, tier: str, image_ids, image_n, image_base_seed, seed) -> np.ndarray:
    tiers = np.asarray(ds.trial_info.tiers).astype(str)
    in_tier = np.flatnonzero(tiers == tier)
    if tier != "train":
        return in_tier
    if image_ids is not None:
        frame_ids = np.asarray(ds.trial_info.frame_image_id)
        picked = []
        for image_id in image_ids:
            hits = np.flatnonzero(frame_ids == image_id)
            if len(hits) == 0:
                raise ValueError(
                    f"session {ds.data_key}: image_id {image_id!r} is not in meta/trials/frame_image_id"
                )
            if tiers[hits[0]] != "train":
                raise ValueError(
                    f"session {ds.data_key}: image_id {image_id!r} is a {tiers[hits[0]]} image, not train"
                )
            picked.append(hits[0])
        return np.sort(np.array(picked, dtype=np.int64))
    if image_n is not None:
        if image_n > len(in_tier):
            raise ValueError(
                f"session {ds.data_key}: image_n={image_n} exceeds the {len(in_tier)} train trials"
            )
        rng = np.random.RandomState(int(image_base_seed * image_n) if image_base_seed is not None else seed)
        return np.sort(rng.choice(in_tier, size=image_n, replace=False))
    return in_tier


def _response_precision(std: np.ndarray) -> np.ndarray:
    """1 / std per neuron, with std floored at 1% of the mean std (avoids dividing by ~0)."""
    std = np.asarray(std, dtype=np.float64)
    threshold = 0.01 * std.mean()
    return 1.0 / np.where(std > threshold, std, threshold)


def _subset_statistics(statistics: dict, neuron_idx: np.ndarray, n_neurons: int) -> dict:
    out = {}
    for field, by_kind in statistics.items():
        out[field] = {}
        for kind, stats in by_kind.items():
            out[field][kind] = {
                name: (
                    arr[neuron_idx]
                    if field == "responses" and arr.ndim and arr.shape[0] == n_neurons
                    else arr
                )
                for name, arr in stats.items()
            }
    return out


def static_loader(
    path: str | os.PathLike,
    batch_size: int,
    areas: list | None = None,
    layers: list | None = None,
    tier: str | None = None,
    neuron_ids: list | None = None,
    neuron_n: int | None = None,
    exclude_neuron_n: int = 0,
    neuron_base_seed: int | None = None,
    image_ids: list | None = None,
    image_n: int | None = None,
    image_base_seed: int | None = None,
    get_key: bool = False,
    cuda: bool = False,
    device: str | torch.device | None = None,
    normalize: bool = True,
    exclude: str | list | None = None,
    include_behavior: bool = False,
    add_behavior_as_channels: bool = True,
    include_eye_position: bool = False,
    add_eye_pos_as_channels: bool | None = None,
    file_tree: bool = True,
    inputs_mean: float | None = None,
    inputs_std: float | None = None,
    scale: float | None = None,
    return_test_sampler: bool = False,
    seed: int | None = None,
    stats_source: str = "all",
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    dataset: StaticDataset | None = None,
    shuffle_seed: int | None = None,
):
    """Loaders for the tiers of one session (sensorium's ``static_loader``).

    Args:
        path: dataset folder or .zip.
        batch_size: trials per batch.
        areas, layers: keep neurons whose ``meta/neurons/area`` / ``layer`` is in these lists.
        tier: build only this tier ("train", "validation", "test", "final_test"); default all present.
        neuron_ids: keep exactly these unit ids, in this order (not combinable with other neuron options).
        neuron_n: draw this many neurons at random (among those passing areas/layers), after skipping
            ``exclude_neuron_n`` draws; the draw is seeded with ``neuron_base_seed * neuron_n``
            (as sensorium) or ``seed`` when no base seed is given.
        image_ids: train only on the first trial of each of these ``frame_image_id`` values.
        image_n: train on this many random train trials, seeded with ``image_base_seed * image_n`` (or ``seed``).
        get_key: return ``(data_key, loaders)`` instead of ``loaders``.
        cuda, device: where the tensors live (``device`` wins; ``cuda=True`` means "cuda"). The whole
            tier is moved to the device once.
        normalize: normalise the data (see the module docstring); ``exclude`` names fields left raw.
        include_behavior: add the ``behavior`` batch field (and 3 constant image channels when
            ``add_behavior_as_channels``).
        add_behavior_as_channels: with ``include_behavior``, append the 3 behaviour values as constant
            image channels (default True, as sensorium).
        include_eye_position: add the ``pupil_center`` batch field (for a shifter); no image channel.
        add_eye_pos_as_channels: append the 2 eye-position values as constant image channels (after
            the behaviour channels); needs ``include_eye_position``. Default None = no channels, as
            sensorium.
        file_tree: must be True (HDF5 datasets are not supported).
        inputs_mean, inputs_std: override the image statistics used for normalisation.
        scale: resize the images by this factor (e.g. 0.25: 144x256 -> 36x64).
        return_test_sampler: the test loader yields one batch per distinct image (all repeats).
        seed: seeds the neuron/image draws that have no base seed, as sensorium's
            ``np.random.seed(seed)`` does (``RandomState(seed)``), and the train loader's shuffling
            unless ``shuffle_seed`` is given.
        shuffle_seed: seed of the train loader's shuffling (default ``seed``).
        stats_source: which statistics to normalise with ("all" as sensorium, or "stimulus_frame").
        use_cache, cache_dir: the consolidated dataset cache (see ``pipeline.data.cache``).
        dataset: an already loaded ``StaticDataset`` for ``path`` (skips reading).

    Returns:
        ``{tier: TensorLoader}`` for the tiers present (or ``(data_key, that dict)`` with ``get_key``).

    Raises:
        ValueError: unknown tier or field, inconsistent selection options, missing data or statistics.
    """
    if not file_tree:
        raise ValueError("file_tree=False (HDF5 datasets) is not supported; convert the data to a file tree")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if image_ids is not None and (image_n is not None or image_base_seed is not None):
        raise ValueError("image_ids cannot be combined with image_n or image_base_seed")
    if stats_source not in ("all", "stimulus_frame"):
        raise ValueError(f"stats_source must be 'all' or 'stimulus_frame', got {stats_source!r}")
    excluded = set(_as_list(exclude, "exclude") or [])
    unknown = excluded - {"images", "responses", "behavior", "pupil_center"}
    if unknown:
        raise ValueError(
            f"exclude names unknown fields {sorted(unknown)}; use images/responses/behavior/pupil_center"
        )
    dev = resolve_device(device if device is not None else "cuda" if cuda else "cpu")
    ds = dataset if dataset is not None else StaticDataset(path, use_cache=use_cache, cache_dir=cache_dir)

    if tier is not None and tier not in ds.tiers:
        raise ValueError(f"session {ds.data_key}: tier {tier!r} not in the data (tiers present: {ds.tiers})")
    if include_behavior and ds.behavior is None:
        raise ValueError(f"session {ds.data_key}: include_behavior=True but the dataset has no data/behavior")
    if include_eye_position and ds.pupil_center is None:
        raise ValueError(
            f"session {ds.data_key}: include_eye_position=True but the dataset has no data/pupil_center"
        )
    if add_eye_pos_as_channels and not include_eye_position:
        raise ValueError("add_eye_pos_as_channels=True needs include_eye_position=True")
    eye_channels = bool(include_eye_position) and bool(add_eye_pos_as_channels)
    behavior_channels = bool(include_behavior) and bool(add_behavior_as_channels)

    neuron_idx = _select_neurons(
        ds, areas, layers, neuron_ids, neuron_n, exclude_neuron_n, neuron_base_seed, seed
    )
    stats = ds.statistics

    def stat(field: str, name: str) -> np.ndarray:
        try:
            return np.asarray(stats[field][stats_source][name], dtype=np.float64)
        except KeyError:
            raise ValueError(
                f"session {ds.data_key}: meta/statistics/{field}/{stats_source}/{name}.npy is needed to normalise"
            ) from None

    do = {f: normalize and f not in excluded for f in ("images", "responses", "behavior", "pupil_center")}
    image_mean, image_std = 0.0, 1.0
    if do["images"]:
        image_mean = float(inputs_mean) if inputs_mean is not None else float(stat("images", "mean").mean())
        image_std = float(inputs_std) if inputs_std is not None else float(stat("images", "std").mean())
    # Responses are gathered per tier (rows, then neuron columns) and scaled in place, so no
    # full-size normalised copy of the whole session is ever made.
    columns = None if np.array_equal(neuron_idx, np.arange(ds.n_neurons)) else torch.as_tensor(neuron_idx)
    precision = None
    if do["responses"]:
        precision = torch.as_tensor(
            _response_precision(stat("responses", "std"))[neuron_idx], dtype=torch.float32
        )

    def tier_responses(index: torch.Tensor) -> torch.Tensor:
        out = torch.index_select(ds.responses, 0, index)
        if columns is not None:
            out = torch.index_select(out, 1, columns)
        return out.mul_(precision) if precision is not None else out

    # normalised in float64 (as sensorium, whose arrays are float64), handed out as float32
    behavior = ds.behavior.double() if include_behavior else None
    if behavior is not None and do["behavior"]:
        behavior = behavior / torch.as_tensor(stat("behavior", "std"))
    pupil = ds.pupil_center.double() if include_eye_position else None
    if pupil is not None and do["pupil_center"]:
        mean, std = stat("pupil_center", "mean"), stat("pupil_center", "std")
        pupil = (pupil - torch.as_tensor(mean)) / torch.as_tensor(std)
    behavior = behavior.float() if behavior is not None else None
    pupil = pupil.float() if pupil is not None else None

    fields = ("images", "responses") + ("behavior",) * bool(include_behavior)
    fields += ("pupil_center",) * bool(include_eye_position)
    neurons = ds.neurons.subset(neuron_idx)
    view_stats = _subset_statistics(stats, neuron_idx, ds.n_neurons)

    loaders = {}
    for name in [tier] if tier is not None else ds.tiers:
        trials = _tier_trials(ds, name, image_ids, image_n, image_base_seed, seed)
        index = torch.as_tensor(trials, dtype=torch.long)
        images = torch.index_select(ds.images, 0, index)
        if scale is not None and scale != 1:
            images = rescale_images(images, float(scale))
        view_mean, view_std = image_mean, image_std
        if dev.type == "cpu" and images.numel() * 4 <= PRENORMALIZE_MAX_BYTES:
            # Small CPU tiers are normalised once: a batch is then a single gather instead of a gather,
            # a conversion and two arithmetic passes (~3x faster). Large or GPU tiers stay uint8.
            images = images.float()  # a fresh tensor (index_select / rescale copied), safe to modify
            if view_std != 1.0 or view_mean != 0.0:
                images.sub_(view_mean).div_(view_std)
            view_mean, view_std = 0.0, 1.0
        view = TierView(
            images=images.to(dev),
            responses=tier_responses(index).to(dev),
            behavior=torch.index_select(behavior, 0, index).to(dev) if behavior is not None else None,
            pupil_center=torch.index_select(pupil, 0, index).to(dev) if pupil is not None else None,
            image_mean=view_mean,
            image_std=view_std,
            behavior_channels=behavior_channels,
            eye_channels=eye_channels,
            fields=fields,
            neurons=neurons,
            trial_info=ds.trial_info.subset(trials),
            trial_indices=trials,
            statistics=view_stats,
            data_key=ds.data_key,
            fingerprint=ds.fingerprint,
            tier=name,
            session_trials=len(ds),
        )
        loaders[name] = TensorLoader(
            view,
            batch_size,
            shuffle=name == "train",
            seed=seed if shuffle_seed is None else shuffle_seed,
            per_image=return_test_sampler and name == "test",
        )
    return (ds.data_key, loaders) if get_key else loaders


#: the options of static_loaders that differ per path (the others are passed on to static_loader as they are)
_PER_PATH_OPTIONS = ("paths", "neuron_ids", "image_ids", "seed")


def _per_path(value, n_paths: int, name: str) -> list:
    """Expand a per-session list option (list of lists) to one entry per path."""
    if value is None:
        return [None] * n_paths
    value = list(value)
    if n_paths == 1 and value and not isinstance(value[0], Sequence | np.ndarray):
        return [value]  # a flat list with one path: the selection for that path
    if len(value) > n_paths:
        raise ValueError(f"{name} has {len(value)} entries but only {n_paths} paths were given")
    return [v for v, _ in zip_longest(value, range(n_paths))]


def static_loaders(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    batch_size: PositiveInt,
    seed: int | None = None,
    areas: list | None = None,
    layers: list | None = None,
    tier: str | None = None,
    neuron_ids: list | None = None,
    neuron_n: int | None = None,
    exclude_neuron_n: int = 0,
    neuron_base_seed: int | None = None,
    image_ids: list | None = None,
    image_n: int | None = None,
    image_base_seed: int | None = None,
    cuda: bool = False,
    device: str | None = None,
    normalize: bool = True,
    include_behavior: bool = False,
    add_behavior_as_channels: bool = True,
    exclude: str | list | None = None,
    file_tree: bool = True,
    inputs_mean: float | None = None,
    inputs_std: float | None = None,
    scale: PositiveFloat | None = None,
    include_eye_position: bool = False,
    add_eye_pos_as_channels: bool | None = None,
    return_test_sampler: bool = False,
    stats_source: str = "all",
    use_cache: bool = True,
    cache_dir: str | None = None,
) -> dict[str, dict[str, TensorLoader]]:
    """Loaders for one or more sessions (sensorium's ``static_loaders``; an nnfabrik dataset function).

    Args:
        paths: dataset folders or zips, one per session (a single path is accepted too).
        batch_size: trials per batch.
        seed: seeds the train loaders' shuffling (each session gets its own stream derived from it)
            and the neuron/image draws without a base seed (``RandomState(seed)`` for every session,
            the state sensorium's ``set_random_seed(seed)`` leaves them). The global RNGs are not
            touched.
        neuron_ids, image_ids: one list per path (a flat list is accepted with one path).
        Everything else: as in ``static_loader``.

    Returns:
        ``{tier: {data_key: TensorLoader}}`` for every tier present in the data (or just ``tier``).

    Raises:
        ValueError: no paths, two paths with the same session key, or any ``static_loader`` error.
    """
    # every option but the per-path ones goes to static_loader under its own name
    options = {name: value for name, value in locals().items() if name not in _PER_PATH_OPTIONS}
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise ValueError("static_loaders needs at least one dataset path")
    neuron_id_lists = _per_path(neuron_ids, len(paths), "neuron_ids")
    image_id_lists = _per_path(image_ids, len(paths), "image_ids")
    out: dict[str, dict[str, TensorLoader]] = {}
    for i, (path, n_ids, i_ids) in enumerate(zip(paths, neuron_id_lists, image_id_lists)):
        session_seed = (
            None if seed is None else int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        )
        key, loaders = static_loader(
            path,
            neuron_ids=n_ids,
            image_ids=i_ids,
            seed=seed,
            shuffle_seed=session_seed,
            get_key=True,
            **options,
        )
        if any(key in by_key for by_key in out.values()):
            raise ValueError(
                f"two paths share the session key {key!r} (last: {path}); each session must be unique"
            )
        for name, loader in loaders.items():
            out.setdefault(name, {})[key] = loader
    return {name: out[name] for name in ordered_tiers(out)}
