"""``sysid ensemble``: which trained models a command-line restriction selects, and the ensembles so far."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = ["ensemble_overview", "member_restriction"]

_HEX = re.compile(r"^[0-9a-f]{1,32}$")


def _hash_condition(column: str, prefix: str) -> str:
    prefix = prefix.strip().lower()
    if not _HEX.match(prefix):
        raise ValueError(f"{column} prefix must be 1 to 32 hexadecimal digits, got {prefix!r}")
    return f"{column} LIKE '{prefix}%'"


def member_restriction(
    schemas: Any,
    model: str | None = None,
    dataset: str | None = None,
    trainer: str | None = None,
    seeds: Sequence[int] = (),
    experiment: str | None = None,
):
    """The trained models a ``sysid ensemble create`` call names (a query of ``TrainedModel``).

    Args:
        schemas: the activated ``schemas`` package.
        model, dataset, trainer: hash prefixes (as ``sysid results`` and ``sysid register`` show them).
        seeds: only these seeds (empty: every seed).
        experiment: only the models of this experiment.

    Raises:
        ValueError: a prefix that is not hexadecimal, an unknown experiment, or nothing selected at all
            (every trained model is never meant).
    """
    if not (model or dataset or trainer or seeds or experiment):
        raise ValueError("name the members: give --model, --dataset, --trainer, --seed or --experiment")
    query = schemas.TrainedModel()
    for column, prefix in (("model_hash", model), ("dataset_hash", dataset), ("trainer_hash", trainer)):
        if prefix:
            query = query & _hash_condition(column, prefix)
    if seeds:
        query = query & [{"seed": int(s)} for s in seeds]
    if experiment:
        query = query & schemas.Experiments.experiment_keys(experiment)
    return query


def ensemble_overview(schemas: Any) -> pd.DataFrame:
    """One row per ensemble: dataset, hash, members, test correlation (when scored), MEI rows."""
    rows = []
    for ensemble in schemas.Ensemble().to_dicts(order_by="ensemble_ts"):
        key = {k: ensemble[k] for k in ("dataset_fn", "dataset_hash", "ensemble_hash")}
        members = (schemas.Ensemble.Member & key).to_dicts(order_by="seed")
        score = (schemas.EnsembleScore & key).to_dicts()
        rows.append(
            {
                "dataset": f"{key['dataset_fn'].rsplit('.', 1)[-1]}:{key['dataset_hash'][:8]}",
                "ensemble_hash": key["ensemble_hash"][:12],
                "members": len(members),
                "models": ", ".join(
                    sorted({f"{m['model_fn'].rsplit('.', 1)[-1]}:{m['model_hash'][:8]}" for m in members})
                ),
                "seeds": ", ".join(str(m["seed"]) for m in members),
                "test_correlation": score[0]["test_correlation"] if score else None,
                "mei_sessions": len(schemas.MEI & key),
                "comment": ensemble["ensemble_comment"],
            }
        )
    return pd.DataFrame(rows)
