"""Ensemble: trained models of one dataset whose predictions are averaged; EnsembleScore scores it.

An ensemble's key is its dataset and ``ensemble_hash``, the config hash of its sorted member keys
(:func:`ensemble_hash`), so the same members give the same ensemble whatever order they are named
in. Members are rows of a part table per kind of trained model: ``Member`` for ``TrainedModel``
(a second kind, such as transferred models, gets its own part and an entry in
:data:`MEMBER_KINDS`; the hash already names each member's table). ``load_model`` returns a
:class:`pipeline.models.EnsembleEncoder`, so ensembles are scored by the same score table code as
trained models (:class:`schemas.neuron_scores.NeuronScoreTable`) and are the models of MEIs.

Deleting a trained model deletes every ensemble it is a member of, with the ensembles' scores and
MEIs (an ensemble without one of its members is not the same ensemble).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datajoint as dj

from pipeline.builder import config_hash
from pipeline.models import EnsembleEncoder

from ._schema import schema
from .columns import DATASET_KEY
from .configs import Dataset, Fabrikant  # noqa: F401  (in the definitions)
from .data_info import DataInfo, build_dataloaders  # noqa: F401  (DataInfo: in the definitions)
from .hybrid import hybridmethod
from .model_loading import dataloader_flag
from .neuron_scores import NEURON_SCORE_UNIT_DEFINITION, NeuronScoreTable, neuron_score_definition
from .trained_model import TrainedModel
from .training import primary_key

__all__ = ["MEMBER_KINDS", "Ensemble", "EnsembleScore", "ensemble_hash"]

#: the kinds of member: ``(training table, name of the Ensemble part that holds its members)``
MEMBER_KINDS: tuple[tuple[type, str], ...] = ((TrainedModel, "Member"),)


def ensemble_hash(members: list[tuple[str, Mapping[str, Any]]]) -> str:
    """The hash of an ensemble's members, independent of their order.

    Args:
        members: ``(table name, primary key)`` of every member.

    Raises:
        ValueError: no member, or a member named twice.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    described = [{"table": table, "key": {k: key[k] for k in sorted(key)}} for table, key in members]
    canonical = sorted(described, key=lambda m: config_hash(m))
    if len({config_hash(m) for m in canonical}) != len(canonical):
        raise ValueError("an ensemble names a member twice")
    return config_hash({"members": canonical})


@schema
class Ensemble(dj.Manual):
    definition = """
    # trained models of one dataset whose predictions are averaged (pipeline.models.EnsembleEncoder)
    -> Dataset
    ensemble_hash: char(32)        # schemas.ensembles.ensemble_hash of the sorted member keys
    ---
    n_members: int32
    -> Fabrikant.proj(ensemble_fabrikant='fabrikant_name')
    ensemble_comment="": varchar(256)
    ensemble_ts=CURRENT_TIMESTAMP: datetime
    """

    class Member(dj.Part):
        definition = """
        # a trained model of the ensemble (of the ensemble's dataset)
        -> master
        -> TrainedModel
        """

    @classmethod
    def create(
        cls,
        restriction: Any = None,
        comment: str = "",
        fabrikant: str | None = None,
        table: type = TrainedModel,
    ) -> dict[str, Any]:
        """Make (or find) the ensemble of every trained model matching ``restriction``.

        Args:
            restriction: anything DataJoint restricts ``TrainedModel`` with: a key dict (e.g. a
                model, dataset and trainer key: every seed of one config), a list of keys, a query
                or an SQL condition string. None: every trained model (of one dataset).
            comment: free text (at most 256 characters).
            fabrikant: who creates it; default from the environment / OS user.
            table: the training table the members come from (one of :data:`MEMBER_KINDS`).

        Returns:
            The ensemble's key ``{dataset_fn, dataset_hash, ensemble_hash}``; the same members give
            the same key (nothing new is inserted then).

        Raises:
            ValueError: the restriction matches no trained model, or models of several datasets.
        """
        if not isinstance(comment, str) or len(comment) > 256:
            raise ValueError("comment must be a string of at most 256 characters")
        parts = dict(MEMBER_KINDS)
        if table not in parts:
            raise ValueError(f"ensemble members come from {[t.__name__ for t in parts]}, not {table!r}")
        if isinstance(restriction, dj.expression.QueryExpression):
            restriction = restriction.proj()  # restrict by its key only: its other columns may share names
        query = table() if restriction is None else table() & restriction
        members = query.keys()
        if not members:
            raise ValueError(
                f"the restriction {restriction!r} matches no row of {table.__name__}: ensembles are made of trained models "
                "(run the workers first)"
            )
        datasets = sorted({tuple(m[k] for k in DATASET_KEY) for m in members})
        if len(datasets) > 1:
            raise ValueError(
                f"ensemble members must predict one dataset; the restriction matches models of {len(datasets)} "
                f"datasets {datasets}: restrict it to one dataset_hash"
            )
        key = {
            **dict(zip(DATASET_KEY, datasets[0])),
            "ensemble_hash": ensemble_hash([(table.__name__, m) for m in members]),
        }
        if cls() & key:
            return key
        with cls.connection.transaction:
            cls.insert1(
                {
                    **key,
                    "n_members": len(members),
                    "ensemble_fabrikant": Fabrikant.ensure(fabrikant),
                    "ensemble_comment": comment,
                },
                skip_duplicates=True,  # a concurrent identical creation is fine
            )
            getattr(cls, parts[table]).insert([{**key, **m} for m in members], skip_duplicates=True)
        return key

    @hybridmethod
    def members(self, key=None) -> list[tuple[type, dict[str, Any]]]:
        """``(table, primary key)`` of every member of one ensemble, in a fixed order."""
        key = self._one_key(key)
        out = []
        for source, part_name in MEMBER_KINDS:
            part = getattr(type(self), part_name)
            for row in (part() & key).to_dicts(order_by=list(source.primary_key)):
                out.append((source, primary_key(source(), row)))
        return out

    @hybridmethod
    def load_model(
        self,
        key=None,
        include_dataloader: bool = True,
        *,
        device: Any = "cpu",
        include_dataloaders: bool | None = None,
    ):
        """The ensemble as an :class:`~pipeline.models.EnsembleEncoder` of its members (eval mode).

        Called like ``TrainedModel.load_model`` (nnfabrik's order and defaults), so the score and
        MEI tables load either kind of model the same way.

        Args:
            key: restriction selecting exactly one ensemble (None: this restricted table).
            include_dataloader: also build and return the dataset's loaders (seeded with the first
                member's seed; only the train tier's shuffling depends on it).
            device: where the parameters go.
            include_dataloaders: deprecated alias of ``include_dataloader``.

        Returns:
            ``(dataloaders, model)``, or ``model`` with ``include_dataloader=False``.
        """
        include_dataloader = dataloader_flag(include_dataloader, include_dataloaders)
        key = self._one_key(key)
        members = self.members(key)
        model = EnsembleEncoder(
            [table.load_model(member, include_dataloader=False, device=device) for table, member in members]
        )
        model = model.to(device).eval()
        if not include_dataloader:
            return model
        dataset_fn, dataset_config = Dataset.get_config(key)
        dataloaders = build_dataloaders(dataset_fn, dataset_config, seed=int(members[0][1].get("seed", 0)))
        return dataloaders, model

    def _one_key(self, key) -> dict[str, Any]:
        query = self & key if key is not None else self
        keys = query.keys()
        if len(keys) != 1:
            raise ValueError(f"need exactly one ensemble, the restriction matches {len(keys)}")
        return keys[0]


@schema
class EnsembleScore(NeuronScoreTable, dj.Computed):
    source = Ensemble
    definition = neuron_score_definition("Ensemble")

    class Unit(dj.Part):
        definition = NEURON_SCORE_UNIT_DEFINITION
