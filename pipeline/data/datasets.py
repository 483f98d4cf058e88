"""``StaticDataset``: a Sensorium-format static-image dataset read once into contiguous tensors.

Format (folder or .zip of it)::

    data/<field>/<i>.npy          one file per trial i = 0..n-1; fields images (C, H, W), responses (N,),
                                  optionally behavior (3,) and pupil_center (2,)
    meta/neurons/*.npy            one entry per neuron (unit_ids, area, layer, cell_motor_coordinates, ...)
    meta/trials/*.npy             one entry per trial (tiers, frame_image_id, trial_idx, ...)
    meta/statistics/<field>/<all|stimulus_frame>/{mean,std,min,max,median}.npy

The dataset location is only ever read. Images are kept as uint8 when every value is an integer in
0..255 (4x less memory than float32); loaders normalise them per batch.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from pipeline.contracts import ordered_tiers

from . import cache as _cache
from .files import FileTreeSource, open_source, read_npy_bytes, read_trials

__all__ = ["StaticDataset", "ArrayNamespace", "get_data_key", "DATA_FIELDS", "STAT_NAMES"]

#: Per-trial data fields, in batch order; images and responses are required.
DATA_FIELDS = ("images", "responses", "behavior", "pupil_center")
#: The summary statistics stored per field and statistics source.
STAT_NAMES = ("mean", "std", "min", "max", "median")
_REQUIRED_NEURON_META = ("unit_ids",)
_SESSION_RE = re.compile(r"static(\d+-\d+-\d+)")


class ArrayNamespace(SimpleNamespace):
    """Attribute access to a set of equally long numpy arrays (``ns.tiers``), plus ``keys()`` and ``ns["tiers"]``."""

    def keys(self) -> list[str]:
        """Names of the arrays, sorted."""
        return sorted(vars(self))

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return name in vars(self)

    def subset(self, index: np.ndarray) -> ArrayNamespace:
        """A new namespace with every array indexed by ``index`` along its first axis."""
        return ArrayNamespace(**{k: np.asarray(v)[index] for k, v in vars(self).items()})


def get_data_key(path: str | os.PathLike, neurons: ArrayNamespace | None = None) -> str:
    """The session key of a dataset, derived as sensorium's ``static_loader`` derives it.

    From the folder or zip name, the part after its last ``static``:

    * names with ``preproc``: up to the first ".", with "preproc" and "_nobehavior" removed
      (``static20457-5-9-preproc0`` -> ``20457-5-9-0``, the key of the Lurz et al. 2021 models);
    * names with ``-GrayImageNet`` / ``-ColorImageNet``: the part before it
      (``static21067-10-18-GrayImageNet-94c6...zip`` -> ``21067-10-18``);
    * otherwise: the first neuron's ``animal_ids``-``sessions``-``scan_idx``
      (``static90001-1-1-synthetic`` -> ``90001-1-1`` when the metadata says so), and without that
      metadata the ``<animal>-<session>-<scan>`` that follows ``static`` in the name.

    sensorium applies these tests to the whole path string; here only the dataset's own name is
    read, so folders above it cannot change the key.

    Args:
        path: the dataset folder or zip.
        neurons: the dataset's neuron metadata, used when the name has neither pattern.

    Raises:
        ValueError: no rule gives a key (no pattern in the name and no neuron metadata).
    """
    name = Path(path).name
    after = name.split("static")[-1]
    if "preproc" in name:
        return after.split(".")[0].replace("preproc", "").replace("_nobehavior", "")
    for marker in ("-ColorImageNet", "-GrayImageNet"):
        if marker in name:
            return after.split(marker)[0]
    if neurons is not None and all(k in neurons for k in ("animal_ids", "sessions", "scan_idx")):
        if len(neurons.animal_ids):
            return f"{int(neurons.animal_ids[0])}-{int(neurons.sessions[0])}-{int(neurons.scan_idx[0])}"
    match = _SESSION_RE.search(name)
    if match:
        return match.group(1)
    raise ValueError(
        f"cannot derive a session key from {name!r}: expected a name like "
        f"'static<animal>-<session>-<scan>-...' or neuron metadata animal_ids/sessions/scan_idx"
    )


def _read_npy_dir(source: FileTreeSource, folder: str) -> dict[str, np.ndarray]:
    names = [n for n in source.list_dir(folder) if n.endswith(".npy")]
    raws = source.read_many([f"{folder}/{n}" for n in names])
    return {n[:-4]: read_npy_bytes(raw, f"{folder}/{n}") for n, raw in zip(names, raws)}


def _trial_files(source: FileTreeSource, field: str, n_trials: int) -> list[str]:
    folder = f"data/{field}"
    names = set(source.list_dir(folder))
    expected = [f"{i}.npy" for i in range(n_trials)]
    missing = [n for n in expected if n not in names]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{folder} lacks {len(missing)} of the {n_trials} trial files listed in meta/trials "
            f"(missing: {shown})"
        )
    extra = sorted(names.difference(expected))
    extra = [n for n in extra if n.endswith(".npy")]
    if extra:
        raise ValueError(
            f"{folder} holds {len(extra)} trial files beyond the {n_trials} trials in meta/trials "
            f"(e.g. {extra[0]}); trial counts disagree"
        )
    return [f"{folder}/{n}" for n in expected]


class StaticDataset:
    """A Sensorium static-image dataset held in memory as contiguous tensors.

    Args:
        path: the dataset folder (with ``data/`` and ``meta/``) or a .zip of it. Never written to.
        use_cache: save the consolidated arrays after the first read and load them from there next
            time (see ``pipeline.data.cache``).
        cache_dir: the cache folder (default ``$SYSID_CACHE_DIR`` or the user cache folder).
        num_workers: threads used to read a folder's per-trial files.

    Attributes:
        images: uint8 tensor (n, C, H, W) when the files hold integers 0..255, float32 otherwise.
        responses: float32 tensor (n, N).
        behavior: float64 tensor (n, 3) or None when the dataset has no ``data/behavior``.
        pupil_center: float64 tensor (n, 2) or None (loaders normalise both, then hand out float32).
        neurons: ``ArrayNamespace`` of per-neuron arrays (``unit_ids``, ``area``, ``layer``,
            ``animal_ids``, ``sessions``, ``scan_idx``, ``cell_motor_coordinates`` (N, 3), ...).
        trial_info: ``ArrayNamespace`` of per-trial arrays (``tiers``, ``frame_image_id``, ``trial_idx``, ...).
        statistics: ``statistics[field][all|stimulus_frame][mean|std|min|max|median]`` numpy arrays.
        data_key: the session key as sensorium derives it, e.g. "20457-5-9-0" (see :func:`get_data_key`).
        fingerprint: lowercase hex content hash of all arrays (identifies the data, e.g. in a database).
        n_neurons: N.
        path: the dataset location.
        from_cache: whether the arrays came from the consolidated cache.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the tree is malformed (missing meta files or statistics, trial counts that
            disagree, arrays of the wrong shape); the message names the offending file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        use_cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        num_workers: int | None = None,
    ):
        self.path = Path(path).expanduser()
        source = open_source(self.path, num_workers=num_workers)
        try:
            self._load(source, use_cache, cache_dir)
        finally:
            source.close()

    # ------------------------------------------------------------------ reading
    def _load(self, source: FileTreeSource, use_cache: bool, cache_dir: str | os.PathLike | None) -> None:
        for folder in ("data", "meta", "meta/neurons", "meta/trials", "meta/statistics"):
            if not source.is_dir(folder):
                raise ValueError(f"{self.path} is not a Sensorium dataset: the folder '{folder}/' is missing")
        neurons = _read_npy_dir(source, "meta/neurons")
        trials = _read_npy_dir(source, "meta/trials")
        for name in _REQUIRED_NEURON_META:
            if name not in neurons:
                raise ValueError(f"{self.path}: meta/neurons/{name}.npy is missing")
        if "tiers" not in trials:
            raise ValueError(f"{self.path}: meta/trials/tiers.npy is missing")
        n_trials = len(trials["tiers"])
        n_neurons = len(neurons["unit_ids"])
        self._check_lengths(neurons, n_neurons, "meta/neurons", "unit_ids")
        self._check_lengths(trials, n_trials, "meta/trials", "tiers")
        statistics = self._read_statistics(source)

        fields = [f for f in DATA_FIELDS if source.is_dir(f"data/{f}")]
        for required in ("images", "responses"):
            if required not in fields:
                raise ValueError(f"{self.path}: the folder 'data/{required}/' is missing")
        for field in fields:
            if field not in statistics:
                raise ValueError(
                    f"{self.path}: statistics for '{field}' are missing (meta/statistics/{field}/)"
                )

        key = None
        arrays = None
        self.from_cache = False
        if use_cache:
            key = self._cache_key(source, neurons, trials, statistics, fields, n_trials)
            arrays = _cache.load_entry(key, cache_dir)
            if arrays is not None and not all(f in arrays for f in fields + ["fingerprint"]):
                arrays = None
            self.from_cache = arrays is not None
        if arrays is None:
            arrays = {}
            for field in fields:
                names = _trial_files(source, field, n_trials)
                arrays[field] = read_trials(
                    source,
                    names,
                    field,
                    as_images=field == "images",
                    float_dtype=np.float64 if field in ("behavior", "pupil_center") else np.float32,
                )
            arrays = self._consolidate(arrays)
        cached_fingerprint = arrays.pop("fingerprint", None)
        self._validate(arrays, n_trials, n_neurons)
        if cached_fingerprint is not None:
            fingerprint = str(cached_fingerprint)
        else:
            fingerprint = _fingerprint(arrays, neurons, trials, statistics)
            if use_cache and key is not None:
                _cache.save_entry(key, {**arrays, "fingerprint": np.array(fingerprint)}, cache_dir)

        self.images = torch.from_numpy(arrays["images"])
        self.responses = torch.from_numpy(arrays["responses"])
        self.behavior = torch.from_numpy(arrays["behavior"]) if "behavior" in arrays else None
        self.pupil_center = torch.from_numpy(arrays["pupil_center"]) if "pupil_center" in arrays else None
        self.neurons = ArrayNamespace(**neurons)
        self.trial_info = ArrayNamespace(**trials)
        self.statistics = statistics
        self.fingerprint = fingerprint
        self.data_key = get_data_key(self.path, self.neurons)

    def _check_lengths(self, arrays: dict[str, np.ndarray], n: int, folder: str, ref: str) -> None:
        for name, arr in arrays.items():
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(
                    f"{self.path}: {folder}/{name}.npy has {arr.shape[0] if arr.ndim else 0} entries "
                    f"but {folder}/{ref}.npy has {n}; every array in {folder} needs one entry per item"
                )

    def _read_statistics(self, source: FileTreeSource) -> dict[str, dict[str, dict[str, np.ndarray]]]:
        statistics: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for field in source.list_dir("meta/statistics"):
            base = f"meta/statistics/{field}"
            if not source.is_dir(base):
                continue
            statistics[field] = {}
            for kind in source.list_dir(base):
                if source.is_dir(f"{base}/{kind}"):
                    statistics[field][kind] = _read_npy_dir(source, f"{base}/{kind}")
        for field, by_kind in statistics.items():
            if "all" not in by_kind:
                raise ValueError(f"{self.path}: meta/statistics/{field}/all/ is missing")
            for name in ("mean", "std"):
                if name not in by_kind["all"]:
                    raise ValueError(f"{self.path}: meta/statistics/{field}/all/{name}.npy is missing")
        return statistics

    def _cache_key(
        self, source: FileTreeSource, neurons, trials, statistics, fields: list[str], n_trials: int
    ) -> str:
        # The listing signature catches added/removed/resized/touched files; hashing the (small) meta
        # arrays and the bytes of a sample of each field's trial files as well catches edits that keep
        # size and time stamp (of the meta files always, of the trial files where the sample sees them).
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"format{_cache.CACHE_FORMAT}\0{source.signature()}".encode())
        for name, arr in _iter_meta(neurons, trials, statistics):
            _hash_array(digest, name, arr)
        for rel in _sampled_trial_files(fields, n_trials):
            if source.exists(rel):
                digest.update(f"{rel}\0".encode())
                digest.update(source.read_bytes(rel))
        return digest.hexdigest()

    @staticmethod
    def _consolidate(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = arrays["images"]
        if images.dtype != np.uint8 and np.issubdtype(images.dtype, np.number):
            # Sensorium images are integers 0..255 stored as float32: keep them 4x smaller.
            lo, hi = (images.min(), images.max()) if images.size else (0, 0)
            if lo >= 0 and hi <= 255 and np.array_equal(images, np.round(images)):
                images = images.astype(np.uint8)
            else:
                images = images.astype(np.float32, copy=False)
        out = {"images": np.ascontiguousarray(images)}
        if "responses" in arrays:
            out["responses"] = np.ascontiguousarray(arrays["responses"], dtype=np.float32)
        # behaviour and eye position stay float64 (a few numbers per trial): an eye position of ~750 px
        # in float32 keeps only ~6e-5 px, which z-scoring would turn into errors of ~1e-5 std
        for field in ("behavior", "pupil_center"):
            if field in arrays:
                out[field] = np.ascontiguousarray(arrays[field], dtype=np.float64)
        return out

    def _validate(self, arrays: dict[str, np.ndarray], n_trials: int, n_neurons: int) -> None:
        images = arrays["images"]
        if images.ndim != 4:
            raise ValueError(
                f"{self.path}: each data/images file must be (channels, height, width); got per-trial shape "
                f"{images.shape[1:]}"
            )
        expected = {"responses": (n_neurons,), "behavior": None, "pupil_center": None}
        for field, arr in arrays.items():
            if arr.shape[0] != n_trials:
                raise ValueError(
                    f"{self.path}: data/{field} has {arr.shape[0]} trials but meta/trials has {n_trials}"
                )
            want = expected.get(field)
            if want is not None and arr.shape[1:] != want:
                raise ValueError(
                    f"{self.path}: each data/{field} file must have shape {want} (one value per neuron in "
                    f"meta/neurons); got {arr.shape[1:]}"
                )
            if field in ("behavior", "pupil_center") and arr.ndim != 2:
                raise ValueError(f"{self.path}: each data/{field} file must be a vector; got {arr.shape[1:]}")

    # ------------------------------------------------------------------ API
    @property
    def n_neurons(self) -> int:
        """Number of neurons N."""
        return int(self.responses.shape[1])

    @property
    def tiers(self) -> list[str]:
        """The tiers present, in the canonical order train, validation, test, final_test, then others."""
        return ordered_tiers(self.trial_info.tiers)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one stored image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"StaticDataset({self.data_key!r}: {len(self)} trials, {self.n_neurons} neurons, "
            f"images {tuple(self.images.shape[1:])} {str(self.images.dtype).replace('torch.', '')})"
        )


def _iter_meta(neurons: dict, trials: dict, statistics: dict):
    for name in sorted(neurons):
        yield f"neurons/{name}", neurons[name]
    for name in sorted(trials):
        yield f"trials/{name}", trials[name]
    for field in sorted(statistics):
        for kind in sorted(statistics[field]):
            for name in sorted(statistics[field][kind]):
                yield f"statistics/{field}/{kind}/{name}", statistics[field][kind][name]


#: trial files per field whose bytes go into the cache key (evenly spaced, first and last included)
CACHE_KEY_SAMPLES = 32


def _sampled_trial_files(fields: list[str], n_trials: int) -> list[str]:
    """The trial files whose contents the cache key hashes: :data:`CACHE_KEY_SAMPLES` per field."""
    if n_trials <= 0:
        return []
    indices = sorted({int(round(i)) for i in np.linspace(0, n_trials - 1, min(n_trials, CACHE_KEY_SAMPLES))})
    return [f"data/{field}/{i}.npy" for field in fields for i in indices]


def _hash_array(digest, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    digest.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
    if arr.size:
        digest.update(arr.reshape(-1).view(np.uint8))


def _fingerprint(arrays: dict[str, np.ndarray], neurons: dict, trials: dict, statistics: dict) -> str:
    """Content hash (blake2b, 32 hex digits) of the consolidated data and all metadata."""
    digest = hashlib.blake2b(digest_size=16)
    for field in DATA_FIELDS:
        if field in arrays:
            _hash_array(digest, f"data/{field}", arrays[field])
    for name, arr in _iter_meta(neurons, trials, statistics):
        _hash_array(digest, name, arr)
    return digest.hexdigest()
