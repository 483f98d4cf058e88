"""Fetch the DataFrames that :mod:`sysid.report` plots for one trained model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from schemas.job_events import describe_key
from schemas.trained_model import TRAINED_MODEL_KEY

__all__ = [
    "ReportData",
    "fetch_report_data",
    "parse_key_argument",
    "report_meis",
    "report_neurons",
    "select_model",
]


@dataclass
class ReportData:
    """What a report needs.

    Attributes:
        key: the trained model's primary key.
        score: its score.
        neurons: one row per neuron (:func:`report_neurons`): ``data_key``, ``unit_id``, ``mu_x``,
            ``mu_y``, ``cortex_x``, ``cortex_y``, ``correlation`` (test tier when present, else
            validation), ``oracle``.
        progress: one row per epoch: ``epoch``, ``train_loss``, ``val_correlation``.
        title: a short description for plot titles.
        meis: the MEIs of the best ensemble the model is a member of (:func:`report_meis`), or None.
        meis_title: which ensemble, method and seed they are.
    """

    key: dict[str, Any]
    score: float
    neurons: pd.DataFrame | None
    progress: pd.DataFrame | None
    title: str
    meis: pd.DataFrame | None = None
    meis_title: str = ""


def parse_key_argument(text: str) -> dict[str, Any]:
    """Parse ``sysid report KEY``: ``name=value`` pairs and/or a model-hash prefix, comma-separated.

    Example: ``"3f9a2c,seed=2"`` -> ``{"model_hash_prefix": "3f9a2c", "seed": 2}``.

    Raises:
        ValueError: an unknown column name or an empty argument.
    """
    spec: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            spec["model_hash_prefix"] = item.lower()
            continue
        name, value = (s.strip() for s in item.split("=", 1))
        if name not in TRAINED_MODEL_KEY:
            raise ValueError(f"unknown key column {name!r} in {text!r}; use {', '.join(TRAINED_MODEL_KEY)}")
        spec[name] = int(value) if name == "seed" else value
    if not spec:
        raise ValueError("empty KEY: give name=value pairs or a model-hash prefix")
    return spec


def select_model(models: pd.DataFrame, spec: Mapping[str, Any] | None) -> pd.Series:
    """Pick one trained model from a DataFrame of ``TrainedModel`` keys and scores.

    Args:
        models: columns of the model key plus ``score``.
        spec: from :func:`parse_key_argument`; None picks the highest score.

    Raises:
        ValueError: no trained models, or the spec matches none or several.
    """
    if models.empty:
        raise ValueError("no trained models yet: register some and run `sysid worker --once`")
    if spec is None:
        return models.sort_values("score", ascending=False, kind="stable").iloc[0]
    selected = models
    for name, value in spec.items():
        if name == "model_hash_prefix":
            selected = selected[selected["model_hash"].str.startswith(value)]
        else:
            selected = selected[selected[name].astype(type(value)) == value]
    if selected.empty:
        raise ValueError(f"no trained model matches {dict(spec)}; see `sysid results`")
    if len(selected) > 1:
        options = "; ".join(
            f"model_hash={r.model_hash[:10]} seed={r.seed}" for r in selected.head(5).itertuples()
        )
        raise ValueError(
            f"{len(selected)} trained models match {dict(spec)} (e.g. {options}): add seed=... or more hash"
        )
    return selected.iloc[0]


def _frame(query) -> pd.DataFrame:
    return pd.DataFrame(query.to_dicts())


#: tiers whose per-neuron correlation a report shows, in order of preference
_REPORT_TIERS = ("test", "validation", "train")


def report_neurons(rows: pd.DataFrame) -> pd.DataFrame | None:
    """The per-neuron columns a report plots, from one model's rows of ``neurons_view``.

    Returns:
        ``data_key``, ``unit_id``, ``mu_x``, ``mu_y``, ``cortex_x``, ``cortex_y``, ``correlation``
        (of the first tier of test / validation / train that has values), ``correlation_tier``,
        ``oracle`` (test tier); None without rows.
    """
    if rows.empty:
        return None
    neurons = rows[["data_key", "unit_id", "mu_x", "mu_y", "cortex_x", "cortex_y"]].copy()
    tier = next((t for t in _REPORT_TIERS if rows[f"{t}_correlation"].notna().any()), None)
    if tier is not None:
        neurons["correlation"] = rows[f"{tier}_correlation"]
        neurons["correlation_tier"] = tier
        neurons["oracle"] = rows["test_oracle"]
    for column in ("mu_x", "mu_y", "cortex_x", "cortex_y", "correlation", "oracle"):
        if column in neurons.columns:
            neurons[column] = pd.to_numeric(neurons[column], errors="coerce")
    return neurons


def fetch_report_data(schemas: Any, spec: Mapping[str, Any] | None = None) -> ReportData:
    """Fetch the key, progress rows and per-neuron rows (``neurons_view``) of one trained model.

    Args:
        schemas: the activated ``schemas`` package.
        spec: which model (see :func:`parse_key_argument`); None: the best score.
    """
    models = _frame(schemas.TrainedModel.proj("score"))
    row = select_model(models, spec)
    key = {name: (int(row[name]) if name == "seed" else row[name]) for name in TRAINED_MODEL_KEY}
    progress = _frame(schemas.TrainingProgress & key)
    progress = progress[["epoch", "train_loss", "val_correlation"]] if not progress.empty else None
    neurons = report_neurons(schemas.neurons(key))
    # plot titles: the model and seed identify the run within a dataset/trainer; the full key is in the log
    short = describe_key({k: key[k] for k in ("model_fn", "model_hash", "seed")})
    title = f"{short}  score {float(row['score']):.3f}"
    meis, meis_title = report_meis(schemas, key)
    return ReportData(
        key=key,
        score=float(row["score"]),
        neurons=neurons,
        progress=progress,
        title=title,
        meis=meis,
        meis_title=meis_title,
    )


def report_meis(schemas: Any, key: Mapping[str, Any]) -> tuple[pd.DataFrame | None, str]:
    """The MEIs of the best-scored ensemble that has ``key`` (a trained model) as a member and has MEIs.

    Of that ensemble, the MEIs of its first method (by hash) and smallest seed, one row per neuron:
    ``data_key``, ``unit_id``, ``image``, ``activation``, ``relative_activation``, ``correlation``
    (the ensemble's test correlation of the neuron; validation where there is no test tier).

    Returns:
        ``(rows, title)``, or ``(None, "")`` when no ensemble of the model has MEIs.
    """
    ensembles = (schemas.Ensemble & (schemas.Ensemble.Member & dict(key)).proj()).proj()
    computed = (schemas.MEI & ensembles).proj().to_dicts()
    if not computed:
        return None, ""
    ensemble_key = ("dataset_fn", "dataset_hash", "ensemble_hash")
    scores = {
        tuple(r[k] for k in ensemble_key): r["test_correlation"]
        if r["test_correlation"] is not None
        else -1.0
        for r in (schemas.EnsembleScore & ensembles).to_dicts()
    }
    # the best-scored ensemble, then its first method (by hash), then its smallest seed
    best = min(
        computed,
        key=lambda r: (-scores.get(tuple(r[k] for k in ensemble_key), -2.0), r["mei_hash"], r["mei_seed"]),
    )
    choice = {k: best[k] for k in (*ensemble_key, "mei_fn", "mei_hash", "mei_seed")}
    rows = schemas.meis(choice)
    images = pd.DataFrame((schemas.MEI.Unit & choice).proj("image").to_dicts())[
        ["data_key", "unit_id", "image"]
    ]
    rows = rows.merge(images, on=["data_key", "unit_id"])
    for column in ("test_correlation", "validation_correlation", "activation", "relative_activation"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    rows["correlation"] = rows["test_correlation"].fillna(rows["validation_correlation"])
    members = len(schemas.Ensemble.Member & choice)
    title = (
        f"MEIs of ensemble {choice['ensemble_hash'][:8]} ({members} member(s)), method "
        f"{choice['mei_hash'][:8]}, seed {choice['mei_seed']}: best-predicted neurons"
    )
    return rows, title
