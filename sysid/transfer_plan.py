"""The ``transfer:`` section of a registration file: transfers from trained sources to the file's targets.

::

    dataset:                       # the targets: every dataset x model x trainer x seed of the file
      fn: pipeline.data.static_loaders
      config: {paths: [/data/new_session], batch_size: 64, grid: {image_n: [50, 100, 500]}}
    model: {fn: pipeline.models.stacked_core_full_gauss_readout, config: {...}}
    trainer: {fn: pipeline.training.standard_trainer, config: {max_iter: 100}}
    seeds: [1]
    transfer:
      sources:                     # each: hash prefixes (and seed) selecting trained models
        - {model: 3f9a, dataset: 11be, seed: 1}
      table: TrainedModel          # optional; TransferredModel for chains
      recipe:                      # one or a list, with grids like any config
        - {freeze_core: true}
        - {freeze_core: false, grid: {core_lr: [0.0001, 0.001]}}

Each source x recipe x target is one ``TransferTask`` (checked by
:func:`schemas.transfers.register_transfer`); the targets are also ordinary trained models (from
scratch), the comparison of Lurz et al. 2021.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SECTION", "parse_transfer", "register_transfers"]

SECTION = "transfer"
_KEYS = {"sources", "recipe", "table"}
_SOURCE_KEYS = {"model", "dataset", "trainer", "seed"}
_HEX = re.compile(r"^[0-9a-f]{1,32}$")


def parse_transfer(raw: Any, problems: list[str], expand_grid) -> dict[str, Any] | None:
    """Check the section's structure; return ``{"sources": [...], "recipes": [config, ...], "table": str}``.

    Args:
        raw: the section as parsed.
        problems: where every problem found is appended.
        expand_grid: ``sysid.register.expand_grid`` (a recipe may hold a ``grid:`` block).
    """
    from pipeline.models.transfer import TransferRecipe

    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.append(f"transfer: must be a mapping with 'sources' and 'recipe', got {type(raw).__name__}")
        return None
    unknown = set(raw) - _KEYS
    if unknown:
        problems.append(f"transfer: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    sources = raw.get("sources")
    sources = sources if isinstance(sources, list) else [sources]
    checked_sources = []
    for i, source in enumerate(sources):
        if not isinstance(source, Mapping) or not source or set(source) - _SOURCE_KEYS:
            problems.append(f"transfer.sources[{i}]: a mapping of {sorted(_SOURCE_KEYS)}, got {source!r}")
            continue
        for name in ("model", "dataset", "trainer"):
            if name in source and not _HEX.match(str(source[name]).lower()):
                problems.append(
                    f"transfer.sources[{i}].{name}: a hash prefix (hex digits), got {source[name]!r}"
                )
        checked_sources.append(dict(source))
    recipes = []
    for i, item in enumerate(
        raw.get("recipe") if isinstance(raw.get("recipe"), list) else [raw.get("recipe") or {}]
    ):
        try:
            for config, _ in expand_grid(item or {}):
                recipes.append(TransferRecipe.from_config(config).to_config())
        except (TypeError, ValueError) as err:
            problems.append(f"transfer.recipe[{i}]: {err}")
    table = raw.get("table", "TrainedModel")
    if table not in ("TrainedModel", "TransferredModel"):
        problems.append(f"transfer.table: TrainedModel or TransferredModel, got {table!r}")
    return {"sources": checked_sources, "recipes": recipes, "table": table}


def _source_query(schemas: Any, table: Any, source: Mapping[str, Any]):
    query = table()
    for name in ("model", "dataset", "trainer"):
        if name in source:
            query = query & f"{name}_hash LIKE '{str(source[name]).lower()}%'"
    if "seed" in source:
        query = query & {"seed": int(source["seed"])}
    return query


def register_transfers(
    plan: Any, schemas: Any, keys: Mapping[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Register every source x recipe x target of ``plan.transfer``; returns the task keys.

    Raises:
        ValueError: a source restriction that matches no trained model, or an incompatible source.
    """
    section = plan.transfer
    if not section:
        return []
    table = getattr(schemas, section["table"])
    recipes = [schemas.Transfer.add_recipe(config) for config in section["recipes"]]
    tasks = []
    for source in section["sources"]:
        matches = _source_query(schemas, table, source).keys()
        if not matches:
            raise ValueError(f"transfer source {source} matches no {section['table']} row: train it first")
        for match, recipe, dataset, model, trainer, seed in itertools.product(
            matches, recipes, keys["dataset"], keys["model"], keys["trainer"], keys["seed"]
        ):
            tasks.append(
                schemas.register_transfer(
                    match, dataset, model, trainer, seed["seed"], recipe, table=section["table"]
                )
            )
    return tasks
