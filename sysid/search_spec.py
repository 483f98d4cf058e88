"""Search specs: what a hyper-parameter search (``sysid search SPEC.yaml``) trains and optimises.

File format (YAML; the same structure in JSON works)::

    study: {name: gauss-small, comment: readout strength and core width}   # or study: gauss-small
    fabrikant: alice                 # optional, as in registration files
    seeds: [1]                       # seeds per trial: the objective is their mean
    dataset: {fn: pipeline.data.static_loaders, config: {paths: [/data/x], batch_size: 64}}
    model: {fn: pipeline.models.stacked_core_full_gauss_readout, config: {layers: 3}}
    trainer: {fn: pipeline.training.standard_trainer, config: {max_iter: 30}}
    search_space:                    # <section>.<config key>; dotted keys reach nested dicts
      model.gamma_readout: {type: float, low: 0.001, high: 1.0, log: true}
      model.hidden_channels: {type: int, low: 8, high: 32, step: 8}
      model.grid_mean_predictor.hidden_features: {type: int, low: 10, high: 40}
      trainer.lr_init: {type: categorical, choices: [0.003, 0.01]}
    objective: score                 # TrainedModel.score (validation correlation, the default) or a
                                     # score-table column: validation_correlation, test_correlation ...
    direction: maximize              # or minimize
    n_trials: 20                     # trials asked of Optuna in all (pruned and failed ones count)
    parallelism: 4                   # trials pending at once (give the workers something to do)
    sampler: tpe                     # tpe (default), random or grid; or {name: tpe, seed: 0, ...}
    pruner: median                   # median (default) or none; or {name: median, n_startup_trials: 5,
                                     #   n_warmup_steps: 2}
    grid_points: 3                   # grid sampler: values per numeric parameter (default: enough
                                     #   for n_trials combinations)
    enqueue: [{model.gamma_readout: 0.01, model.hidden_channels: 16, ...}]   # optional first trials

Parsing checks the structure and every range (no imports, no database); :func:`validate_spec` then
checks each section's function and config keys exactly as ``sysid register`` does, for a config
with every searched key set, so a bad spec is refused before anything is written.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .register import SECTIONS, RegistrationError, expand_grid, load_file, parse_plan, validate_plan

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Parameter",
    "SearchSpec",
    "SearchSpecError",
    "load_spec",
    "parse_spec",
    "trial_document",
    "validate_spec",
]

#: samplers by name (Optuna classes created in :mod:`sysid.search`)
SAMPLERS = ("tpe", "random", "grid")
#: pruners by name
PRUNERS = ("median", "none")
#: objectives: ``score`` (TrainedModel) or a per-model summary column of the score table
OBJECTIVES = (
    "score",
    "train_correlation",
    "validation_correlation",
    "test_correlation",
    "test_correlation_to_average",
    "test_feve",
    "fraction_oracle",
)
_TYPES = ("float", "int", "categorical")
_TOP_LEVEL_KEYS = {
    "study",
    "fabrikant",
    "seeds",
    *SECTIONS,
    "search_space",
    "objective",
    "direction",
    "n_trials",
    "parallelism",
    "sampler",
    "pruner",
    "grid_points",
    "enqueue",
}
_PARAMETER_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_SAMPLER_OPTIONS = {"tpe": {"seed", "n_startup_trials"}, "random": {"seed"}, "grid": {"seed"}}
_PRUNER_OPTIONS = {"median": {"n_startup_trials", "n_warmup_steps"}, "none": set()}


class SearchSpecError(RegistrationError):
    """A search spec is malformed or invalid; ``problems`` lists every problem found."""


@dataclass(frozen=True)
class Parameter:
    """One searched config value.

    Attributes:
        name: ``<section>.<config key>`` (dotted config keys reach nested dicts), the Optuna name.
        type: "float", "int" or "categorical".
        low, high: bounds (inclusive) of numeric parameters.
        log: sample on a log scale.
        step: grid step of numeric parameters (None: continuous floats, 1 for ints).
        choices: the values of a categorical parameter.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def section(self) -> str:
        """The config section: "dataset", "model" or "trainer"."""
        return self.name.split(".", 1)[0]

    @property
    def key(self) -> str:
        """The (dotted) key inside the section's config."""
        return self.name.split(".", 1)[1]

    def sample_value(self) -> Any:
        """A value inside the range (the lower bound, the first choice): used to validate configs."""
        return self.choices[0] if self.type == "categorical" else self.low

    def grid_values(self, points: int) -> list[Any]:
        """``points`` values spread over the range (all choices of a categorical parameter)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = self.step or 1
            count = (self.high - self.low) // step + 1
            if count <= points:
                return [self.low + i * step for i in range(count)]
        values = []
        for i in range(points):
            t = i / (points - 1) if points > 1 else 0.5
            if self.log:
                value = math.exp(math.log(self.low) + t * (math.log(self.high) - math.log(self.low)))
            else:
                value = self.low + t * (self.high - self.low)
            if self.type == "int" or self.step:
                step = self.step or 1
                value = self.low + round((value - self.low) / step) * step
                value = int(value) if self.type == "int" else float(value)
            else:
                value = float(f"{value:.6g}")
            if value not in values:
                values.append(value)
        return values


@dataclass
class SearchSpec:
    """A parsed search spec (see the module docstring for the file format).

    Attributes:
        study: the study's name (also the ``Experiments`` name of its trials; at most 64 characters).
        comment: free text stored with the study.
        base: ``{section: {"fn", "config", "comment"}}`` for dataset, model, trainer.
        seeds: seeds trained per trial.
        parameters: the search space, in file order.
        objective, direction: what to optimise and which way.
        n_trials, parallelism: trials in all, trials pending at once.
        sampler, sampler_options: "tpe"/"random"/"grid" and its keyword arguments.
        pruner, pruner_options: "median"/"none" and its keyword arguments.
        grid_points: values per numeric parameter for the grid sampler (None: from n_trials).
        enqueue: parameter dicts to try first.
        fabrikant: the registering person, as in registration files (or None).
        document: the spec as given (stored with the study).
    """

    study: str
    base: dict[str, dict[str, Any]]
    seeds: list[int]
    parameters: list[Parameter]
    objective: str = "score"
    direction: str = "maximize"
    n_trials: int = 20
    parallelism: int = 2
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    grid_points: int | None = None
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    comment: str = ""
    fabrikant: Any = None
    document: dict[str, Any] = field(default_factory=dict)

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's values per parameter (a numeric parameter gets ``grid_points`` values).

        Without ``grid_points``, numeric parameters get the fewest points per parameter whose
        grid (with the categorical choices) holds at least ``n_trials`` combinations.
        """
        numeric = [p for p in self.parameters if p.type != "categorical"]
        points = self.grid_points
        if points is None:
            fixed = math.prod(len(p.choices) for p in self.parameters if p.type == "categorical")
            points = 2
            while numeric and fixed * points ** len(numeric) < self.n_trials and points < 1000:
                points += 1
        return {p.name: p.grid_values(points) for p in self.parameters}

    def total_trials(self) -> int:
        """Trials the study runs: ``n_trials``, or fewer when the grid sampler's grid is smaller."""
        if self.sampler != "grid":
            return self.n_trials
        return min(self.n_trials, math.prod(len(v) for v in self.grid().values()))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_parameter(name: Any, raw: Any, problems: list[str]) -> Parameter | None:
    where = f"search_space[{name!r}]"
    if not isinstance(name, str) or "." not in name or name.split(".", 1)[0] not in SECTIONS:
        problems.append(
            f"{where}: a searched key is '<section>.<config key>' with section one of {list(SECTIONS)}"
        )
        return None
    if isinstance(raw, list):  # shorthand: a list of values is a categorical parameter
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping with 'type' (one of {list(_TYPES)}) or a list of values")
        return None
    kind = raw.get("type")
    if kind not in _TYPES:
        problems.append(f"{where}: 'type' must be one of {list(_TYPES)}, got {kind!r}")
        return None
    unknown = set(raw) - _PARAMETER_KEYS[kind]
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_PARAMETER_KEYS[kind])}"
        )
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}: 'choices' must be a non-empty list")
            return None
        if any(not (c is None or isinstance(c, (bool, int, float, str))) for c in choices):
            problems.append(f"{where}: choices must be numbers, strings, booleans or null")
            return None
        if len({repr(c) for c in choices}) != len(choices):
            problems.append(f"{where}: choices repeat a value")
        return Parameter(name, kind, choices=tuple(choices))
    low, high, log, step = raw.get("low"), raw.get("high"), raw.get("log", False), raw.get("step")
    bad = len(problems)
    if not _number(low) or not _number(high):
        problems.append(f"{where}: 'low' and 'high' must be finite numbers, got {low!r} and {high!r}")
    elif kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        problems.append(f"{where}: an int parameter needs integer bounds, got {low!r} and {high!r}")
    elif low >= high:
        problems.append(f"{where}: 'low' ({low}) must be below 'high' ({high})")
    elif log and low <= 0:
        problems.append(f"{where}: a log range needs 'low' > 0, got {low}")
    if not isinstance(log, bool):
        problems.append(f"{where}: 'log' must be true or false")
    if step is not None:
        if not _number(step) or step <= 0 or (kind == "int" and not float(step).is_integer()):
            problems.append(f"{where}: 'step' must be a positive {'integer' if kind == 'int' else 'number'}")
        elif log:
            problems.append(f"{where}: 'step' and 'log' cannot be combined (Optuna's rule)")
    if len(problems) > bad:
        return None
    if kind == "int":
        return Parameter(name, kind, int(low), int(high), log, int(step) if step else None)
    return Parameter(name, kind, float(low), float(high), log, float(step) if step else None)


def _positive_int(doc: Mapping[str, Any], key: str, default: int, problems: list[str]) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"{key}: must be a positive integer, got {value!r}")
        return default
    return value


def _named_option(
    doc: Mapping[str, Any], key: str, names: Sequence[str], options: Mapping[str, set], problems: list[str]
) -> tuple[str, dict[str, Any]]:
    raw = doc.get(key, names[0])
    spec = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, Mapping) or spec.get("name") not in names:
        problems.append(f"{key}: must be one of {list(names)} or a mapping with 'name', got {raw!r}")
        return names[0], {}
    name = spec["name"]
    extra = {k: v for k, v in spec.items() if k != "name"}
    unknown = set(extra) - options[name]
    if unknown:
        problems.append(
            f"{key}: unknown option(s) {sorted(unknown)} for {name}; allowed: {sorted(options[name])}"
        )
    for option, value in extra.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{key}.{option}: must be a non-negative integer, got {value!r}")
    return name, {k: v for k, v in extra.items() if k in options[name]}


def parse_spec(doc: Mapping[str, Any], source: str = "search spec") -> SearchSpec:
    """Turn a parsed spec document into a :class:`SearchSpec` (structure and ranges; no imports).

    Args:
        doc: the parsed file (see the module docstring).
        source: the file name, for messages.

    Raises:
        SearchSpecError: listing every problem found.
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise SearchSpecError([f"the top level must be a mapping, got {type(doc).__name__}"], source)
    unknown = set(doc) - _TOP_LEVEL_KEYS
    if unknown:
        problems.append(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    study = doc.get("study")
    study_spec = {"name": study} if isinstance(study, str) else study
    name, comment = "", ""
    if not isinstance(study_spec, Mapping) or not isinstance(study_spec.get("name"), str):
        problems.append("study: give the study's name (or a mapping with 'name' and 'comment')")
    else:
        name, comment = study_spec["name"], str(study_spec.get("comment", "") or "")
        if not name or len(name) > 64 or any(c in name for c in "'\"`\\"):
            problems.append(f"study: the name must be 1-64 characters without quotes, got {name!r}")
        if set(study_spec) - {"name", "comment"}:
            problems.append(f"study: unknown key(s) {sorted(set(study_spec) - {'name', 'comment'})}")
    base: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        entry = doc.get(section)
        if not isinstance(entry, Mapping) or not isinstance(entry.get("fn"), str):
            problems.append(f"{section}: one entry with 'fn' and 'config' (a search has one base config)")
            continue
        extra = set(entry) - {"fn", "config", "comment"}
        if extra:
            problems.append(
                f"{section}: unknown key(s) {sorted(extra)}; allowed: ['comment', 'config', 'fn']"
            )
        config = entry.get("config") or {}
        if not isinstance(config, Mapping) or "grid" in config:
            problems.append(
                f"{section}: 'config' must be a mapping without 'grid' (search the values instead)"
            )
            continue
        base[section] = {
            "fn": entry["fn"],
            "config": copy.deepcopy(dict(config)),
            "comment": entry.get("comment", ""),
        }
    raw_seeds = doc.get("seeds", [0])
    seeds = raw_seeds if isinstance(raw_seeds, list) else [raw_seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        problems.append(f"seeds: one non-negative integer or a list of them, got {raw_seeds!r}")
    seeds = list(dict.fromkeys(seeds))
    space = doc.get("search_space")
    parameters: list[Parameter] = []
    if not isinstance(space, Mapping) or not space:
        problems.append(
            "search_space: a non-empty mapping of '<section>.<key>' to a range or a list of choices"
        )
    else:
        for key, raw in space.items():
            parameter = _parse_parameter(key, raw, problems)
            if parameter is not None:
                parameters.append(parameter)
    objective = doc.get("objective", "score")
    if objective not in OBJECTIVES:
        problems.append(f"objective: one of {list(OBJECTIVES)}, got {objective!r}")
    direction = doc.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        problems.append(f"direction: 'maximize' or 'minimize', got {direction!r}")
    n_trials = _positive_int(doc, "n_trials", 20, problems)
    parallelism = _positive_int(doc, "parallelism", 2, problems)
    sampler, sampler_options = _named_option(doc, "sampler", SAMPLERS, _SAMPLER_OPTIONS, problems)
    pruner, pruner_options = _named_option(doc, "pruner", PRUNERS, _PRUNER_OPTIONS, problems)
    if pruner != "none" and direction != "maximize":
        problems.append(
            "pruner: pruning compares validation correlations, which grow: use direction maximize or pruner none"
        )
    grid_points = doc.get("grid_points")
    if grid_points is not None and (
        isinstance(grid_points, bool) or not isinstance(grid_points, int) or grid_points < 1
    ):
        problems.append(f"grid_points: a positive integer, got {grid_points!r}")
    enqueue = doc.get("enqueue", []) or []
    names = {p.name for p in parameters}
    if not isinstance(enqueue, list) or any(not isinstance(e, Mapping) for e in enqueue):
        problems.append("enqueue: a list of mappings of searched key -> value")
        enqueue = []
    for i, params in enumerate(enqueue):
        extra = set(params) - names
        if extra:
            problems.append(f"enqueue[{i}]: key(s) {sorted(extra)} are not in search_space")
    if problems:
        raise SearchSpecError(problems, source)
    return SearchSpec(
        study=name,
        comment=comment,
        base=base,
        seeds=seeds,
        parameters=parameters,
        objective=objective,
        direction=direction,
        n_trials=n_trials,
        parallelism=parallelism,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        grid_points=grid_points,
        enqueue=[dict(e) for e in enqueue],
        fabrikant=doc.get("fabrikant"),
        document=copy.deepcopy(dict(doc)),
    )


def load_spec(path: str | Path) -> SearchSpec:
    """Read and parse a spec file (``.yaml``/``.yml``/``.json``); raises :class:`SearchSpecError`."""
    try:
        doc = load_file(path)
    except RegistrationError as err:
        raise SearchSpecError(err.problems, err.source) from err
    return parse_spec(doc, source=str(path))


def trial_document(spec: SearchSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """The registration document (``sysid register`` format) of one trial.

    The searched values are set into the base configs by their dotted keys, with the same rules as
    a registration file's ``grid:`` (a searched key must not also be set in the base config); the
    trial's combinations are recorded under the experiment named after the study.

    Args:
        spec: the search.
        params: ``{parameter name: value}`` for every parameter of ``spec``.
    """
    doc: dict[str, Any] = {
        "experiment": {"name": spec.study, "comment": spec.comment},
        "seeds": list(spec.seeds),
    }
    if spec.fabrikant is not None:
        doc["fabrikant"] = spec.fabrikant
    for section in SECTIONS:
        entry = spec.base[section]
        grid = {p.key: [params[p.name]] for p in spec.parameters if p.section == section}
        config = dict(entry["config"])
        if grid:
            config = {**config, "grid": grid}
            ((config, _),) = expand_grid(config)
        doc[section] = {"fn": entry["fn"], "config": config, "comment": entry["comment"] or ""}
    return doc


def validate_spec(spec: SearchSpec, validator=None, source: str = "search spec") -> None:
    """Check the spec's functions and config keys as ``sysid register`` does, touching no database.

    Every searched key is set (to its lower bound or first choice) into its section's config, and
    the resulting document goes through :func:`sysid.register.validate_plan`.

    Raises:
        SearchSpecError: listing every problem (a searched key the function does not accept, a key
            also set in the base config, an unknown function ...).
    """
    problems = []
    samples = [{p.name: p.sample_value() for p in spec.parameters}]
    samples += [{**samples[0], **params} for params in spec.enqueue]
    for params in samples:
        try:
            plan = parse_plan(trial_document(spec, params), source)
            validate_plan(plan, validator=validator, source=source)
        except RegistrationError as err:
            problems.extend(p for p in err.problems if p not in problems)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise SearchSpecError(problems, source)
