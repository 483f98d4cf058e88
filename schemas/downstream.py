"""Tables computed from datasets and trained models: data facts, per-neuron scores, readout parameters.

Every queryable number is a scalar column (one row per session / neuron), so SQL can filter and
join on it; only feature vectors and builder inputs are blobs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import datajoint as dj
import numpy as np

from pipeline.scoring import score_model

from ._schema import schema
from .configs import Dataset
from .trained_model import TrainedModel, build_dataloaders

__all__ = ["DataInfo", "NeuronScore", "ReadoutParameters"]


def _scalar(value: Any) -> float | None:
    """A finite float or None (NULL): MySQL cannot store NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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

    def make_compute(self, key, dataset_fn, dataset_config):
        """Load the data once and describe it."""
        from pipeline.models import data_info_from_loaders

        dataloaders = build_dataloaders(dataset_fn, dataset_config, seed=0)
        info = data_info_from_loaders(dataloaders)
        tier_loaders = dataloaders["train"] if "train" in dataloaders else next(iter(dataloaders.values()))
        sessions, neurons, fingerprints = [], [], []
        for data_key, session in info.items():
            loader = tier_loaders[data_key]
            dataset = loader.dataset
            fingerprint = str(getattr(dataset, "fingerprint", ""))[:64]
            fingerprints.append(f"{data_key}:{fingerprint}")
            counts = {
                f"n_{tier}": len(loaders[data_key].dataset)
                for tier, loaders in dataloaders.items()
                if tier in ("train", "validation", "test") and data_key in loaders
            }
            sessions.append(
                {
                    "data_key": data_key,
                    "n_neurons": session["n_neurons"],
                    "session_fingerprint": fingerprint,
                    **counts,
                }
            )
            meta = getattr(dataset, "neurons", None)
            unit_ids = getattr(meta, "unit_ids", None)
            n = session["n_neurons"]
            unit_ids = np.arange(n) if unit_ids is None else np.asarray(unit_ids).astype(np.int64)
            if len(np.unique(unit_ids)) != n:
                raise ValueError(f"session {data_key!r}: unit_ids are not unique ({n} neurons)")
            coordinates = session.get("cortex_coordinates")
            for i in range(n):
                xyz = coordinates[i] if coordinates is not None else (None, None, None)
                neurons.append(
                    {
                        "data_key": data_key,
                        "unit_id": int(unit_ids[i]),
                        "neuron_index": i,
                        "area": _text(getattr(meta, "area", None), i),
                        "layer": _text(getattr(meta, "layer", None), i),
                        "cortex_x": _scalar(xyz[0]),
                        "cortex_y": _scalar(xyz[1]),
                        "cortex_z": _scalar(xyz[2]) if len(xyz) > 2 else None,
                    }
                )
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

    def make_insert(self, key, master, sessions, neurons):
        """Master and parts in one transaction."""
        key = {k: key[k] for k in self.primary_key}
        self.insert1({**key, **master})
        self.Session.insert([{**key, **row} for row in sessions])
        self.Neuron.insert([{**key, **row} for row in neurons])


def _neuron_keys(key: Mapping[str, Any]) -> dict[str, list[int]]:
    """``{data_key: [unit_id in model output order]}`` of the key's dataset."""
    rows = (DataInfo.Neuron() & {k: key[k] for k in ("dataset_fn", "dataset_hash")}).to_dicts(
        order_by=("data_key", "neuron_index")
    )
    units: dict[str, list[int]] = {}
    for row in rows:
        units.setdefault(row["data_key"], []).append(int(row["unit_id"]))
    return units


_TIER_SUMMARY = ("train", "validation", "test")


@schema
class NeuronScore(dj.Computed):
    definition = """
    # scores of a trained model: summary here, one row per neuron and tier in part Unit
    -> TrainedModel
    -> DataInfo
    ---
    train_correlation=null: float64          # mean single-trial correlation per tier
    validation_correlation=null: float64
    test_correlation=null: float64
    test_correlation_to_average=null: float64
    test_feve=null: float64                  # mean FEVE over neurons with FEV >= 0.15
    fraction_oracle=null: float64            # slope of test correlation vs. oracle correlation
    """

    class Unit(dj.Part):
        definition = """
        -> master
        -> DataInfo.Neuron
        tier: varchar(16)
        ---
        correlation=null: float64
        correlation_to_average=null: float64   # NULL in tiers without repeated images
        fev=null: float64
        feve=null: float64
        oracle=null: float64
        """

    def make_fetch(self, key):
        """Neuron ids of the dataset (the model is loaded in make_compute)."""
        return (_neuron_keys(key),)

    def make_compute(self, key, units):
        """Rebuild the model with its loaders and score it on every tier."""
        import torch

        from pipeline import measures

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dataloaders, model = TrainedModel.load_model(
            _trained_key(key), device=device, include_dataloaders=True
        )
        scores = score_model(model, dataloaders, device=device)
        rows, summary = [], {}
        for tier, sessions in scores.items():
            correlations, oracles = [], []
            for data_key, values in sessions.items():
                ids = units.get(data_key)
                if ids is None or len(ids) != len(values["correlation"]):
                    raise ValueError(f"session {data_key!r}: DataInfo neurons do not match the model output")
                for i, unit_id in enumerate(ids):
                    rows.append(
                        {
                            "data_key": data_key,
                            "unit_id": unit_id,
                            "tier": tier[:16],
                            **{name: None if v is None else _scalar(v[i]) for name, v in values.items()},
                        }
                    )
                correlations.append(values["correlation"])
                if values["oracle"] is not None:
                    oracles.append(values["oracle"])
            if tier in _TIER_SUMMARY:
                summary[f"{tier}_correlation"] = _scalar(np.nanmean(np.concatenate(correlations)))
            if tier == "test" and oracles and len(oracles) == len(correlations):
                summary["test_correlation_to_average"] = _scalar(
                    np.nanmean(np.concatenate([v["correlation_to_average"] for v in sessions.values()]))
                )
                feve = np.concatenate([v["feve"] for v in sessions.values()])
                summary["test_feve"] = _scalar(np.nanmean(feve)) if np.isfinite(feve).any() else None
                summary["fraction_oracle"] = _scalar(
                    measures.fraction_oracle(np.concatenate(correlations), np.concatenate(oracles))
                )
        return summary, rows

    def make_insert(self, key, summary, rows):
        """Master and parts in one transaction."""
        key = {k: key[k] for k in self.primary_key}
        self.insert1({**key, **summary})
        self.Unit.insert([{**key, **row} for row in rows])


@schema
class ReadoutParameters(dj.Computed):
    definition = """
    # per-neuron readout parameters of a trained model (receptive-field position, spread, features)
    -> TrainedModel
    -> DataInfo
    ---
    n_neurons: int32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        -> DataInfo.Neuron
        ---
        readout_type: varchar(64)    # readout class name
        mu_x=null: float64           # position in grid units [-1, 1], x along width
        mu_y=null: float64
        sigma_x=null: float64
        sigma_y=null: float64
        sigma_xy=null: float64
        feature_norm=null: float64
        bias=null: float64
        features: <blob>             # (C,) float32 feature vector
        """

    def make_fetch(self, key):
        """Neuron ids of the dataset (the model is rebuilt from DataInfo in make_compute)."""
        return (_neuron_keys(key),)

    def make_compute(self, key, units):
        """Rebuild the model (no data needed) and read each session's readout parameters."""
        model = TrainedModel.load_model(_trained_key(key))
        rows = []
        for data_key, ids in units.items():
            readout = model.readout[data_key]
            params = readout.neuron_parameters()
            features = np.asarray(params["features"], dtype=np.float32)
            if features.shape[0] != len(ids):
                raise ValueError(
                    f"session {data_key!r}: readout has {features.shape[0]} neurons, DataInfo {len(ids)}"
                )
            for i, unit_id in enumerate(ids):
                row = {
                    "data_key": data_key,
                    "unit_id": unit_id,
                    "readout_type": type(readout).__name__[:64],
                    "features": features[i],
                }
                for name in ("mu_x", "mu_y", "sigma_x", "sigma_y", "sigma_xy", "feature_norm", "bias"):
                    value = params.get(name)
                    row[name] = None if value is None else _scalar(np.asarray(value)[i])
                rows.append(row)
        return (rows,)

    def make_insert(self, key, rows):
        """Master and parts in one transaction."""
        key = {k: key[k] for k in self.primary_key}
        self.insert1({**key, "n_neurons": len(rows)})
        self.Unit.insert([{**key, **row} for row in rows])


def _trained_key(key: Mapping[str, Any]) -> dict[str, Any]:
    return {k: key[k] for k in TrainedModel().primary_key}
