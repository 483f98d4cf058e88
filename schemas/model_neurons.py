"""What the per-neuron tables of trained models share: :class:`ModelNeuronTable`.

A model-neuron table (scores, readout parameters, later MEIs) has one master row per trained model
of a ``source`` training table and dataset, and one ``Unit`` part row per neuron of
``DataInfo.Neuron``. Its key is ``-> <source>`` and ``-> DataInfo``; its parts ``-> master`` and
``-> DataInfo.Neuron``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .data_info import neuron_units
from .training import primary_key

__all__ = ["ModelNeuronTable", "attribute_lines", "master_definition", "unit_definition"]


def attribute_lines(attributes, comments: Mapping[str, str] | None = None, indent: str = "    ") -> str:
    """Definition lines ``name=null: float64   # comment`` (a ``(name, type)`` pair declares another type)."""
    lines = []
    for attribute in attributes:
        name, declaration = (
            (attribute, f"{attribute}=null: float64")
            if isinstance(attribute, str)
            else (
                attribute[0],
                f"{attribute[0]}: {attribute[1]}",
            )
        )
        comment = (comments or {}).get(name)
        lines.append(f"{indent}{declaration}" + (f"   # {comment}" if comment else ""))
    return "\n".join(lines)


def master_definition(comment: str, source: str, attributes: str) -> str:
    """A model-neuron master: one row per trained model of the table named ``source`` and its dataset."""
    return f"""
    # {comment}
    -> {source}
    -> DataInfo
    ---
{attributes}
    """


def unit_definition(attributes: str, key: str = "") -> str:
    """A model-neuron ``Unit`` part: one row per neuron (and ``key``, e.g. a tier)."""
    return f"""
        -> master
        -> DataInfo.Neuron
        {key}
        ---
{attributes}
        """


class ModelNeuronTable:
    """Base of a per-neuron table of ``source``'s models (mix in before ``dj.Computed``).

    Class attribute:
        source: the table whose models it describes: a :class:`schemas.training.TrainingTable`, or
            any table (an ensemble) whose key holds ``dataset_fn``/``dataset_hash`` and which has
            ``load_model(key, include_dataloader=..., device=...)`` returning ``(dataloaders, model)``,
            or the model alone with ``include_dataloader=False`` (nnfabrik's signature).
    """

    source: ClassVar[type]

    def make_fetch(self, key) -> tuple[dict[str, list[int]]]:
        """Neuron ids of the dataset, ``{data_key: [unit_id in model output order]}`` (the model is loaded in make_compute)."""
        return (neuron_units(key),)

    def source_key(self, key: Mapping[str, Any]) -> dict[str, Any]:
        """The key of the trained model in ``source``."""
        return primary_key(self.source(), key)

    def insert_master_and_units(self, key, master: Mapping[str, Any], units: list[dict[str, Any]]) -> None:
        """The master row and one ``Unit`` row per neuron (called in ``make_insert``: one transaction)."""
        key = primary_key(self, key)
        self.insert1({**key, **master})
        self.Unit.insert([{**key, **row} for row in units])
