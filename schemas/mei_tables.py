"""Most exciting inputs: MEIMethod (configs by hash), MEISeed, and MEI, computed by the workers.

Key granularity: one ``MEI`` row per ensemble × method × seed × **session**, with one ``MEI.Unit``
row per neuron of that session. A session is the unit of batching (one optimisation of all its
neurons' images, :func:`pipeline.mei.optimize_meis`), so one make computes a session's MEIs
together; a key per neuron would make a job (a model load and a one-image optimisation) per neuron
and lose the batching, and a key per ensemble would put all sessions of a large dataset into one
long job that only one worker can run. Per-neuron facts are scalar columns of ``MEI.Unit`` (the
image is a blob beside them), so SQL can filter and join them (``meis_view``).

A single trained model's MEIs are those of its one-member ensemble (``Ensemble.create(key)``), so
one table and one view serve models and ensembles.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import datajoint as dj
import numpy as np

from pipeline.builder import plain_config
from pipeline.contracts import finite_or_none, resolve_device, train_loaders
from pipeline.mei import data_reference, validate_method

from . import job_events
from ._schema import schema
from .configs import ConfigTable, Fabrikant, config_definition, deprecated_alias  # noqa: F401  (Fabrikant: in the definitions)
from .data_info import DataInfo  # noqa: F401  (in the definitions)
from .ensembles import Ensemble
from .run_info import device_used, host_name
from .training import primary_key

__all__ = ["MEI", "MEI_BATCH_SIZE", "MEIMethod", "MEISeed"]

#: images per forward pass of an MEI optimisation (chunks of a session's neurons; results do not depend on it)
MEI_BATCH_SIZE = 256


@schema
class MEIMethod(ConfigTable, dj.Manual):
    _role = "mei"
    definition = config_definition(
        "mei", "MEI methods: mei_fn(model, data_key, neurons, input_shape, config, seed=...) -> MEIResult"
    )

    @classmethod
    def add_entry(
        cls,
        mei_fn: str | Callable,
        mei_config: Mapping[str, Any] | None,
        mei_comment: str = "",
        mei_fabrikant: str | None = None,
        skip_duplicates: bool = False,
        return_pk_only: bool = True,
        *,
        fabrikant: str | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Register an MEI method and its settings, like the other config tables' ``add_entry``.

        Args:
            mei_fn: dotted path of the method (``"pipeline.mei.optimize_meis"``) or the function.
            mei_config: its settings (completed with the defaults before hashing).
            mei_comment, mei_fabrikant, skip_duplicates, return_pk_only: see
                :meth:`schemas.configs.ConfigTable.insert_config`. ``fabrikant``/``comment``: deprecated aliases.

        Returns:
            ``{"mei_fn", "mei_hash"}``, or the whole row with ``return_pk_only=False``.
        """
        return cls.insert_config(
            mei_fn,
            mei_config,
            deprecated_alias(mei_comment, "mei_comment", comment, "comment", default=""),
            deprecated_alias(mei_fabrikant, "mei_fabrikant", fabrikant, "fabrikant"),
            skip_duplicates,
            return_pk_only,
        )

    @classmethod
    def checked_config(cls, path: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """The method's complete settings (defaults filled in): stored and hashed, so equal settings share a row.

        Raises:
            ValueError: ``path`` is not an MEI method. pipeline.mei.MEIConfigError: an unknown key or a bad value.
        """
        _, settings = validate_method(path, config)
        return plain_config(settings.model_dump(mode="json"))


@schema
class MEISeed(dj.Lookup):
    definition = """
    # seeds of the MEIs' initial noise (neuron n starts from noise seeded by (mei_seed, n))
    mei_seed: int32
    """


@schema
class MEI(dj.Computed):
    definition = """
    # most exciting inputs of every neuron of one session of an ensemble, for one method and seed
    -> Ensemble
    -> MEIMethod
    -> MEISeed
    -> DataInfo.Session
    ---
    n_neurons: int32
    seconds: float64               # wall time of the session's batched optimisation
    mean_steps: float64
    host: varchar(255)
    device: varchar(64)
    mei_ts=CURRENT_TIMESTAMP: datetime
    """

    class Unit(dj.Part):
        definition = """
        # the MEI of one neuron
        -> master
        -> DataInfo.Neuron
        ---
        image: <blob>                       # (C, H, W) float32 in the data's normalised units
        activation: float64                 # the ensemble's predicted response to the image
        relative_activation=null: float64   # activation / the neuron's mean response in the train tier
        norm: float64                       # L2 norm of the image
        steps: int32
        converged: bool                     # stopped by the convergence rule (not the step budget)
        seconds: float64                    # this neuron's share of the session's optimisation
        """

    def make_fetch(self, key):
        """The session's neurons in model output order, and the method (cheap; DataJoint calls it twice)."""
        neurons = (DataInfo.Neuron() & primary_key(DataInfo.Session(), key)).to_dicts(order_by="neuron_index")
        units = [(int(n["unit_id"]), int(n["neuron_index"])) for n in neurons]
        method_fn, method_config = MEIMethod.get_config(key)
        return units, method_fn, method_config

    @job_events.compute_step
    def make_compute(self, key, units, method_fn, method_config):
        """Load the ensemble with its loaders and optimise one image per neuron of the session, batched."""
        if not units:
            raise ValueError(f"session {key['data_key']!r} has no neurons in DataInfo.Neuron")
        function, settings = validate_method(method_fn, method_config)
        device = resolve_device("auto")
        dataloaders, model = Ensemble.load_model(
            primary_key(Ensemble(), key), include_dataloader=True, device=device
        )
        data_key = key["data_key"]
        reference = data_reference(train_loaders(dataloaders)[data_key])
        started = time.time()
        result = function(
            model,
            data_key,
            [index for _, index in units],
            reference.input_shape,
            settings,
            seed=int(key["mei_seed"]),
            data_range=reference.pixel_range,
            batch_size=MEI_BATCH_SIZE,
            device=device,
        )
        seconds = time.time() - started
        rows = []
        for i, (unit_id, index) in enumerate(units):
            activation = float(result.activations[i])
            mean = float(reference.mean_response[index])
            rows.append(
                {
                    "data_key": data_key,
                    "unit_id": unit_id,
                    "image": result.images[i].numpy().astype(np.float32),
                    "activation": activation,
                    "relative_activation": finite_or_none(activation / mean) if mean > 0 else None,
                    "norm": float(result.norms[i]),
                    "steps": int(result.steps[i]),
                    "converged": bool(result.converged[i]),
                    "seconds": seconds / len(units),
                }
            )
        master = {
            "n_neurons": len(units),
            "seconds": seconds,
            "mean_steps": float(result.steps.float().mean()),
            "host": host_name(),
            "device": device_used(model),
        }
        return master, rows

    @job_events.insert_step
    def make_insert(self, key, master, rows):
        """Master and parts in one transaction."""
        key = primary_key(self, key)
        self.insert1({**key, **master})
        self.Unit.insert([{**key, **row} for row in rows])
