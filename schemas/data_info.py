"""DataInfo: what a dataset holds (sessions, neurons, shapes), and building a dataset's loaders.

``DataInfo`` is computed once per ``Dataset`` row: enough facts to rebuild a model without reading
the data (:func:`stored_data_info`), plus one row per session and per neuron with scalar columns
(unit id, area, layer, cortical position) that the score and readout tables reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import datajoint as dj
import numpy as np

from pipeline import builder
from pipeline.contracts import finite_or_none
from pipeline.models import data_info_from_loaders

from . import job_events
from ._schema import schema
from .columns import DATASET_KEY
from .configs import Dataset

__all__ = ["DataInfo", "build_dataloaders", "neuron_units", "stored_data_info"]

#: tiers whose trial counts are stored per session
_COUNTED_TIERS = ("train", "validation", "test")


def build_dataloaders(dataset_fn: str, dataset_config: Mapping[str, Any], seed: int):
    """Call the dataset function with the seed (when it takes one and the config has none), as nnfabrik does.

    Returns:
        ``{tier: {data_key: loader}}``.
    """
    config = dict(dataset_config)
    function = builder.resolve_fn(dataset_fn)
    if "seed" not in config and builder.accepts_argument(function, "seed"):
        config["seed"] = int(seed)
    return builder.get_data(function, config)


def _text(values, index: int, default: str = "") -> str:
    if values is None:
        return default
    return str(np.asarray(values)[index])[:32]


@schema
class DataInfo(dj.Computed):
    definition = """
    # facts about a dataset's sessions and neurons (enough to rebuild a model without the data)
    -> Dataset
    ---
    fingerprint: char(32)          # hash of the sessions' content fingerprints
    data_info: <blob>              # pipeline.models.data_info_from_loaders(...) for get_model(data_info=...)
    n_sessions: int32
    n_neurons: int32               # over all sessions
    image_channels: int32          # model input channels of the first session
    image_height: int32
    image_width: int32
    """

    class Session(dj.Part):
        definition = """
        -> master
        data_key: varchar(64)
        ---
        n_neurons: int32
        n_train=0: int32           # trials per tier
        n_validation=0: int32
        n_test=0: int32
        session_fingerprint="": varchar(64)
        """

    class Neuron(dj.Part):
        definition = """
        -> DataInfo.Session
        unit_id: int64
        ---
        neuron_index: int32        # position in the model's output for this session
        area="": varchar(32)
        layer="": varchar(32)
        cortex_x=null: float64
        cortex_y=null: float64
        cortex_z=null: float64
        """

    def make_fetch(self, key):
        """The dataset's function and config (cheap; DataJoint calls it twice)."""
        fn, config = Dataset.get_config(key)
        return fn, config

    @job_events.compute_step
    def make_compute(self, key, dataset_fn, dataset_config):
        """Load the data once and describe it."""
        dataloaders = build_dataloaders(dataset_fn, dataset_config, seed=0)
        info = data_info_from_loaders(dataloaders)
        tier_loaders = dataloaders["train"] if "train" in dataloaders else next(iter(dataloaders.values()))
        sessions, neurons, fingerprints = [], [], []
        for data_key, session in info.items():
            dataset = tier_loaders[data_key].dataset
            fingerprint = str(getattr(dataset, "fingerprint", ""))[:64]
            fingerprints.append(f"{data_key}:{fingerprint}")
            counts = {
                f"n_{tier}": len(loaders[data_key].dataset)
                for tier, loaders in dataloaders.items()
                if tier in _COUNTED_TIERS and data_key in loaders
            }
            sessions.append(
                {
                    "data_key": data_key,
                    "n_neurons": session["n_neurons"],
                    "session_fingerprint": fingerprint,
                    **counts,
                }
            )
            neurons.extend(_neuron_rows(data_key, session, getattr(dataset, "neurons", None)))
        first = next(iter(info.values()))
        channels, height, width = first["input_shape"]
        master = {
            "fingerprint": hashlib.sha256("|".join(sorted(fingerprints)).encode()).hexdigest()[:32],
            "data_info": info,
            "n_sessions": len(info),
            "n_neurons": sum(s["n_neurons"] for s in info.values()),
            "image_channels": channels,
            "image_height": height,
            "image_width": width,
        }
        return master, sessions, neurons

    @job_events.insert_step
    def make_insert(self, key, master, sessions, neurons):
        """Master and parts in one transaction."""
        key = {k: key[k] for k in self.primary_key}
        self.insert1({**key, **master})
        self.Session.insert([{**key, **row} for row in sessions])
        self.Neuron.insert([{**key, **row} for row in neurons])


def _neuron_rows(data_key: str, session: Mapping[str, Any], meta: Any) -> list[dict[str, Any]]:
    """One ``DataInfo.Neuron`` row per neuron of a session (``meta``: the tier's ``neurons``)."""
    n = session["n_neurons"]
    unit_ids = getattr(meta, "unit_ids", None)
    unit_ids = np.arange(n) if unit_ids is None else np.asarray(unit_ids).astype(np.int64)
    if len(np.unique(unit_ids)) != n:
        raise ValueError(f"session {data_key!r}: unit_ids are not unique ({n} neurons)")
    coordinates = session.get("cortex_coordinates")
    rows = []
    for i in range(n):
        xyz = coordinates[i] if coordinates is not None else (None, None, None)
        rows.append(
            {
                "data_key": data_key,
                "unit_id": int(unit_ids[i]),
                "neuron_index": i,
                "area": _text(getattr(meta, "area", None), i),
                "layer": _text(getattr(meta, "layer", None), i),
                "cortex_x": finite_or_none(xyz[0]),
                "cortex_y": finite_or_none(xyz[1]),
                "cortex_z": finite_or_none(xyz[2]) if len(xyz) > 2 else None,
            }
        )
    return rows


def stored_data_info(key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored ``data_info`` of the key's dataset (for ``get_model(data_info=...)``), or None when not populated."""
    rows = (DataInfo() & {k: key[k] for k in DATASET_KEY}).to_dicts()
    return rows[0]["data_info"] if rows else None


def neuron_units(key: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{data_key: [unit_id in model output order]}`` of the key's dataset."""
    rows = (DataInfo.Neuron() & {k: key[k] for k in DATASET_KEY}).to_dicts(
        order_by=("data_key", "neuron_index")
    )
    units: dict[str, list[int]] = {}
    for row in rows:
        units.setdefault(row["data_key"], []).append(int(row["unit_id"]))
    return units
