"""Registration files: YAML/JSON descriptions of datasets, models, trainers and seeds, with grids.

File format (YAML shown; the same structure in JSON works)::

    experiment:                 # optional: names this set of combinations
      name: demo                #   `sysid worker --restrict demo` trains only these
      comment: two cores, two seeds
    fabrikant: alice            # optional: who registers (a name, or {name, email, affiliation})
    seeds: [1, 2]               # one int or a list of ints
    dataset:                    # each section: one entry or a list of entries
      fn: pipeline.data.static_loaders
      config: {paths: [/data/static20457-5-9], batch_size: 64}
    model:
      - fn: pipeline.models.stacked_core_full_gauss_readout
        comment: small core
        config:
          hidden_channels: 16
          grid:                 # every combination of these lists becomes one entry
            layers: [2, 3]
            gamma_readout: [0.1, 1.0]
            grid_mean_predictor.hidden_features: [10, 30]   # dotted keys reach nested dicts
    trainer:
      fn: pipeline.training.standard_trainer
      config: {max_iter: 50}
    mei_method:                 # optional: MEI methods (MEIMethod), validated by pipeline.mei.MEIConfig
      fn: pipeline.mei.optimize_meis
      config: {norm: 10.0, blur_sigma: 1.0, grid: {jitter: [0, 2]}}
    mei_seeds: [0]              # optional: seeds of the MEIs' initial noise (MEISeed)

Lists outside a ``grid:`` block are ordinary values (e.g. ``paths``). The trained models are every
combination dataset × model × trainer × seed. Every entry is validated (its function imports and
accepts the config keys; an MEI method's config by its settings class, unknown keys refused) before
anything is written to the database. A file may hold only ``mei_method``/``mei_seeds`` (no training
sections): MEIs are computed for every ensemble × MEI method × MEI seed × session.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.columns import CONFIG_ROLES

__all__ = [
    "MEI_SECTION",
    "SECTIONS",
    "Entry",
    "Plan",
    "RegistrationError",
    "expand_grid",
    "limit_problems",
    "load_file",
    "parse_plan",
    "register_plan",
    "validate_plan",
]

#: the config sections of a registration file, in the order they are shown and inserted
SECTIONS = CONFIG_ROLES
#: the optional section of MEI methods (rows of ``MEIMethod``) and the key of the MEI seeds
MEI_SECTION = "mei_method"
MEI_SEEDS = "mei_seeds"
_TOP_LEVEL_KEYS = set(SECTIONS) | {"seeds", "experiment", "fabrikant", MEI_SECTION, MEI_SEEDS, "transfer"}
_ENTRY_KEYS = {"fn", "config", "comment"}


class RegistrationError(ValueError):
    """A registration file is malformed or holds invalid entries; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str], source: str = "registration file"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Entry:
    """One config row to register.

    Attributes:
        section: "dataset", "model" or "trainer".
        fn: dotted path of the function ("package.module.function").
        config: keyword arguments for ``fn`` (JSON-representable).
        comment: free text stored beside the config.
        label: where the entry came from, for messages (e.g. ``model[0] layers=2``).
        grid_values: the grid values that produced this entry (empty without a grid).
    """

    section: str
    fn: str
    config: dict[str, Any]
    comment: str = ""
    label: str = ""
    grid_values: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """The config hash the database keys this entry by (``pipeline.builder.config_hash``).

        An MEI method is keyed by its complete settings (defaults filled in), as ``MEIMethod`` stores it.
        """
        from pipeline.builder import config_hash

        if self.section == MEI_SECTION:
            from pipeline.mei import validate_method

            return config_hash(validate_method(self.fn, self.config)[1].model_dump(mode="json"))
        return config_hash(self.config)

    def summary(self, width: int = 60) -> str:
        """A one-line description of the config: the grid values, or the config itself, shortened."""
        items = self.grid_values or self.config
        text = ", ".join(f"{k}={_short(v)}" for k, v in items.items())
        return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Plan:
    """Everything a registration file asks for, expanded and ready to validate and insert.

    Attributes:
        entries: mapping section -> list of entries (grids already expanded, duplicates removed);
            the training sections and ``mei_method``.
        seeds: the seeds (ints >= 0).
        experiment: ``{"name": str, "comment": str}`` or None.
        fabrikant: ``{"name": str, "email": ..., "affiliation": ...}`` or None.
    """

    entries: dict[str, list[Entry]]
    seeds: list[int]
    experiment: dict[str, str] | None = None
    fabrikant: dict[str, str] | None = None
    mei_seeds: list[int] = field(default_factory=list)
    #: the ``transfer:`` section (:mod:`sysid.transfer_plan`), or None
    transfer: dict[str, Any] | None = None

    @property
    def n_combinations(self) -> int:
        """Number of models to train: datasets × models × trainers × seeds (0 for an MEI-only file)."""
        if not any(self.entries.get(section) for section in SECTIONS):
            return 0
        n = len(self.seeds)
        for section in SECTIONS:
            n *= len(self.entries[section])
        return n

    def all_entries(self) -> list[Entry]:
        """All entries, datasets first, then models, then trainers, then MEI methods."""
        return [e for section in (*SECTIONS, MEI_SECTION) for e in self.entries.get(section, [])]


def _short(value: Any, width: int = 24) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


#: largest registration file read (a grid of thousands of entries is a few hundred kB)
MAX_FILE_BYTES = 4 * 2**20
#: most values a parsed file may hold, counting every alias (``*name``) as a copy of what it names
MAX_NODES = 200_000
#: deepest nesting of mappings and lists in a file
MAX_DEPTH = 64


def _safe_yaml_loader():
    """A ``yaml.SafeLoader`` that refuses alias bombs and deep nesting while it composes the document."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self._depth = 0
            self._sizes: dict[int, int] = {}  # id(node) -> values in it, aliases expanded

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                return super().compose_node(parent, index)  # the anchored node, already sized
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"nesting deeper than {MAX_DEPTH} levels")
            try:
                node = super().compose_node(parent, index)
            finally:
                self._depth -= 1
            self._sizes[id(node)] = self._size(node)
            if self._sizes[id(node)] > MAX_NODES:
                raise yaml.YAMLError(
                    f"the document expands to more than {MAX_NODES} values (aliases counted as copies)"
                )
            return node

        def _size(self, node) -> int:
            if isinstance(node, yaml.MappingNode):
                children = [item for pair in node.value for item in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                return 1
            return 1 + sum(self._sizes.get(id(child), 1) for child in children)

    return BoundedLoader


def _json_shape_problem(doc: Any) -> str | None:
    """Why a parsed JSON document is too deep or too large, or None (iterative: no recursion limit)."""
    stack, count = [(doc, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            return f"the document holds more than {MAX_NODES} values"
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return f"nesting deeper than {MAX_DEPTH} levels"
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a registration file.

    Args:
        path: a ``.yaml``/``.yml`` or ``.json`` file (other suffixes are parsed as YAML, which is a
            superset of JSON).

    Returns:
        The parsed document (a dict).

    Raises:
        FileNotFoundError: the file does not exist.
        RegistrationError: the file cannot be parsed, is larger than :data:`MAX_FILE_BYTES`, nests
            deeper than :data:`MAX_DEPTH`, expands (aliases counted as copies) to more than
            :data:`MAX_NODES` values, or is not a mapping at the top level.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"registration file not found: {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise RegistrationError(
            [f"the file is {size} bytes; a registration file may hold at most {MAX_FILE_BYTES}"],
            source=str(path),
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RegistrationError([f"not UTF-8 text: {err}"], source=str(path)) from err
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
            problem = _json_shape_problem(doc)
            if problem:
                raise RegistrationError([f"cannot register: {problem}"], source=str(path))
        else:
            doc = yaml.load(text, Loader=_safe_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as err:
        if isinstance(err, RecursionError):
            err = f"nesting deeper than {MAX_DEPTH} levels"
        raise RegistrationError([f"cannot parse: {err}"], source=str(path)) from None
    if not isinstance(doc, dict):
        raise RegistrationError(
            [
                f"the top level must be a mapping with sections {', '.join(SECTIONS)}, got {type(doc).__name__}"
            ],
            source=str(path),
        )
    return doc


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for ``dotted == "a.b"``, creating dicts on the way."""
    *parents, last = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise ValueError(f"grid key {dotted!r}: {where!r} is {type(child).__name__}, not a mapping")
        node = child
    if last in node:
        raise ValueError(f"grid key {dotted!r} is also set outside the grid; set it in one place only")
    node[last] = value


def expand_grid(config: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Expand a config's ``grid:`` block into every combination.

    Args:
        config: a config mapping; an optional key ``"grid"`` maps parameter names (dotted names
            reach into nested dicts) to non-empty lists of values.

    Returns:
        A list of ``(config, grid_values)`` pairs, one per combination, in the order of
        ``itertools.product`` over the grid keys as written; ``grid_values`` maps each grid key to
        its value in that combination. Without a grid: one pair ``(copy of config, {})``.

    Raises:
        ValueError: the grid is not a mapping, a grid value is not a non-empty list, or a grid key is
            also set outside the grid.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    base = {k: copy.deepcopy(v) for k, v in config.items() if k != "grid"}
    grid = config.get("grid")
    if grid is None:
        return [(base, {})]
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("'grid' must be a non-empty mapping of parameter name -> list of values")
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"grid keys must be non-empty strings, got {key!r}")
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"grid value for {key!r} must be a non-empty list of values, got {values!r} "
                "(put a single value outside the grid)"
            )
    keys = list(grid)
    combinations = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = copy.deepcopy(base)
        for key, value in zip(keys, values):
            _set_dotted(cfg, key, copy.deepcopy(value))
        combinations.append((cfg, dict(zip(keys, values))))
    return combinations


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _parse_section(section: str, raw: Any, problems: list[str]) -> list[Entry]:
    entries: list[Entry] = []
    seen: set[str] = set()
    for i, item in enumerate(_as_list(raw)):
        where = f"{section}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: must be a mapping with 'fn' and 'config', got {type(item).__name__}")
            continue
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
        fn = item.get("fn")
        if not isinstance(fn, str) or "." not in fn:
            problems.append(f"{where}: 'fn' must be a dotted path like 'package.module.function', got {fn!r}")
            continue
        config = item.get("config", {}) or {}
        comment = item.get("comment", "") or ""
        if not isinstance(comment, str):
            problems.append(f"{where}: 'comment' must be a string")
            comment = str(comment)
        try:
            expanded = expand_grid(config)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        for cfg, grid_values in expanded:
            # the same config twice (e.g. overlapping grids) is one row in the database
            identity = json.dumps([fn, cfg], sort_keys=True, default=repr)
            if identity in seen:
                continue
            seen.add(identity)
            label = where + (
                " " + ", ".join(f"{k}={_short(v)}" for k, v in grid_values.items()) if grid_values else ""
            )
            entries.append(Entry(section, fn, cfg, comment, label, grid_values))
    return entries


def _parse_seeds(raw: Any, problems: list[str], name: str = "seeds") -> list[int]:
    seeds = []
    for value in _as_list(raw):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{name}: each seed must be a non-negative integer, got {value!r}")
        elif value not in seeds:
            seeds.append(value)
    if not seeds and not problems:
        problems.append(f"{name}: give at least one seed")
    return seeds


def _parse_named(key: str, raw: Any, problems: list[str], allowed: set[str]) -> dict[str, str] | None:
    if raw is None:
        return None
    spec = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
        problems.append(f"{key}: must be a name or a mapping with a non-empty 'name'")
        return None
    unknown = set(spec) - allowed
    if unknown:
        problems.append(f"{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {k: str(v) for k, v in spec.items() if k in allowed and v is not None}


def parse_plan(doc: Mapping[str, Any], source: str = "registration file") -> Plan:
    """Turn a parsed registration document into a :class:`Plan` (structure checks only, no imports).

    Args:
        doc: the parsed file (see the module docstring for the format).
        source: the file name, used in error messages.

    Raises:
        RegistrationError: listing every structural problem found.
    """
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise RegistrationError([f"the top level must be a mapping, got {type(doc).__name__}"], source)
    unknown = set(doc) - _TOP_LEVEL_KEYS
    if unknown:
        problems.append(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    entries: dict[str, list[Entry]] = {}
    # a file of MEI methods only needs no training sections
    mei_only = not any(k in doc for k in (*SECTIONS, "seeds")) and any(
        k in doc for k in (MEI_SECTION, MEI_SEEDS)
    )
    for section in SECTIONS:
        if doc.get(section) is None:
            if not mei_only:
                problems.append(f"missing section {section!r} (needs 'fn' and 'config')")
            entries[section] = []
        else:
            entries[section] = _parse_section(section, doc[section], problems)
    seeds = _parse_seeds(doc.get("seeds"), problems) if "seeds" in doc else []
    if "seeds" not in doc and not mei_only:
        problems.append("missing 'seeds' (one int or a list of ints)")
    entries[MEI_SECTION] = (
        _parse_section(MEI_SECTION, doc[MEI_SECTION], problems) if doc.get(MEI_SECTION) is not None else []
    )
    mei_seeds = _parse_seeds(doc[MEI_SEEDS], problems, MEI_SEEDS) if MEI_SEEDS in doc else []
    experiment = _parse_named("experiment", doc.get("experiment"), problems, {"name", "comment"})
    fabrikant = _parse_named("fabrikant", doc.get("fabrikant"), problems, {"name", "email", "affiliation"})
    from .transfer_plan import parse_transfer

    transfer = parse_transfer(doc.get("transfer"), problems, expand_grid)
    if problems:
        raise RegistrationError(problems, source)
    return Plan(
        entries=entries,
        seeds=seeds,
        experiment=experiment,
        fabrikant=fabrikant,
        mei_seeds=mei_seeds,
        transfer=transfer,
    )


def _default_validator(fn: str, config: dict[str, Any], role: str) -> None:
    if role == MEI_SECTION:
        from pipeline.mei import validate_method

        validate_method(fn, config)
        return
    from pipeline.builder import validate_config

    validate_config(fn, config, role)


def validate_plan(
    plan: Plan,
    validator: Callable[[str, dict[str, Any], str], Any] | None = None,
    source: str = "registration file",
) -> None:
    """Check every entry without touching the database.

    Each entry's function must import and accept its config keys, and its config must hash
    (JSON-representable). All problems are collected before raising.

    Args:
        plan: from :func:`parse_plan`.
        validator: ``validator(fn, config, role)`` (role: "dataset", "model", "trainer" or
            "mei_method") raising on a bad entry; default ``pipeline.builder.validate_config``
            (``pipeline.mei.validate_method`` for MEI methods).
        source: the file name, used in error messages.

    Raises:
        RegistrationError: listing every invalid entry.
    """
    validator = validator or _default_validator
    problems = limit_problems(plan)
    for entry in plan.all_entries():
        try:
            validator(entry.fn, entry.config, entry.section)
            entry.hash  # noqa: B018  (hashing rejects configs that are not JSON-representable)
        except (ImportError, AttributeError, ValueError, TypeError) as err:
            problems.append(f"{entry.label}: {type(err).__name__}: {err}")
    if problems:
        raise RegistrationError(problems, source)


def _config_tables() -> dict[str, Any]:
    """The table class of each section (imported on demand: the MEI tables import torch)."""
    from schemas import configs

    tables = {"dataset": configs.Dataset, "model": configs.Model, "trainer": configs.Trainer}
    return tables


def limit_problems(plan: Plan) -> list[str]:
    """Every value of ``plan`` that its database column cannot hold, read from the table definitions.

    Checks function paths and comments of every entry, seeds, MEI seeds, the experiment's name and
    comment and the fabrikant's name, e-mail and affiliation (lengths, integer ranges, NUL
    characters; see :mod:`schemas.limits`). Needs no database connection.
    """
    from schemas import configs
    from schemas.limits import row_problems

    tables = _config_tables()
    needs_mei = bool(plan.entries.get(MEI_SECTION) or plan.mei_seeds)
    if needs_mei:
        from schemas import mei_tables

        tables[MEI_SECTION] = mei_tables.MEIMethod
    problems: list[str] = []
    for entry in plan.all_entries():
        table = tables[entry.section]
        role = table._role
        row = {f"{role}_fn": entry.fn, f"{role}_comment": entry.comment}
        problems += row_problems(table, row, entry.label)
    for seed in plan.seeds:
        problems += row_problems(configs.Seed, {"seed": seed}, "seeds")
    if needs_mei:
        for seed in plan.mei_seeds:
            problems += row_problems(mei_tables.MEISeed, {"mei_seed": seed}, MEI_SEEDS)
    if plan.experiment is not None:
        row = {
            "experiment_name": plan.experiment["name"],
            "experiment_comment": plan.experiment.get("comment"),
        }
        problems += row_problems(configs.Experiments, row, "experiment")
    if plan.fabrikant is not None:
        row = {
            "fabrikant_name": plan.fabrikant["name"],
            "email": plan.fabrikant.get("email"),
            "affiliation": plan.fabrikant.get("affiliation"),
        }
        problems += row_problems(configs.Fabrikant, row, "fabrikant")
    return problems


def _fabrikant_name(schemas: Any, fabrikant: dict[str, str] | None) -> str | None:
    """Insert the file's fabrikant (when given and new) and return its name; None means the default."""
    if fabrikant is None:
        return None
    from schemas.configs import default_fabrikant

    row = default_fabrikant()  # dj_username and defaults for what the file leaves out
    row.update({"fabrikant_name": fabrikant["name"], "email": fabrikant.get("email", row["email"])})
    row["affiliation"] = fabrikant.get("affiliation", row["affiliation"])
    schemas.Fabrikant().insert1(row, skip_duplicates=True)
    return fabrikant["name"]


def register_plan(plan: Plan, schemas: Any) -> dict[str, list[dict[str, Any]]]:
    """Insert a validated plan into the (activated) database.

    Args:
        plan: from :func:`parse_plan`, already checked by :func:`validate_plan`.
        schemas: the activated ``schemas`` package.

    Everything is inserted in one transaction: when any row fails, nothing of the file stays.

    Returns:
        ``{"dataset": [key, ...], "model": [...], "trainer": [...], "seed": [{"seed": s}, ...],
        "mei_method": [...], "mei_seed": [{"mei_seed": s}, ...]}``, keys in the order of ``plan``
        (existing rows are reused, not duplicated).

    Raises:
        RegistrationError: the database refused a row (the message names the entry); nothing was written.
    """
    from schemas.configs import atomic

    step = ["the fabrikant"]
    try:
        with atomic(schemas.Dataset.connection):
            return _insert_plan(plan, schemas, step)
    except RegistrationError:
        raise
    except (ValueError, TypeError) as err:  # our own checks (add_entry validates again)
        raise RegistrationError([f"{step[0]}: {err}; nothing was written"]) from err
    except Exception as err:  # driver errors (pymysql, psycopg2, datajoint) have no common base
        raise RegistrationError(
            [f"{step[0]}: the database refused it ({type(err).__name__}: {err}); nothing was written"]
        ) from err


def _insert_plan(plan: Plan, schemas: Any, step: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The inserts of :func:`register_plan`; ``step[0]`` names what is being inserted (for messages)."""
    fabrikant = _fabrikant_name(schemas, plan.fabrikant)
    tables = {"dataset": schemas.Dataset, "model": schemas.Model, "trainer": schemas.Trainer}
    keys: dict[str, list[dict[str, Any]]] = {}
    tables[MEI_SECTION] = schemas.MEIMethod
    for section in (*SECTIONS, MEI_SECTION):
        keys[section] = []
        for e in plan.entries.get(section, []):
            step[0] = e.label
            keys[section].append(_add_config(tables[section], e, fabrikant, schemas))
    step[0] = "seeds"
    if plan.seeds:
        schemas.Seed().insert([{"seed": s} for s in plan.seeds], skip_duplicates=True)
    keys["seed"] = [{"seed": s} for s in plan.seeds]
    step[0] = MEI_SEEDS
    if plan.mei_seeds:
        schemas.MEISeed().insert([{"mei_seed": s} for s in plan.mei_seeds], skip_duplicates=True)
    keys["mei_seed"] = [{"mei_seed": s} for s in plan.mei_seeds]
    if plan.experiment is not None:
        step[0] = "experiment"
        _add_experiment(schemas, plan.experiment, fabrikant, keys)
    if plan.transfer:
        from .transfer_plan import register_transfers

        keys["transfer"] = register_transfers(plan, schemas, keys)
    return keys


def _add_config(table: Any, entry: Any, fabrikant: str | None, schemas: Any) -> dict[str, Any]:
    """Register one config entry of the file, reusing an existing row silently (nnfabrik's add_entry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", schemas.DuplicateEntryWarning)
        return dict(table.add_entry(entry.fn, entry.config, entry.comment, fabrikant, skip_duplicates=True))


def _add_experiment(
    schemas: Any, experiment: dict[str, str], fabrikant: str | None, keys: Mapping[str, list[dict[str, Any]]]
) -> None:
    """Record the experiment and all its combinations (``Experiments`` and its ``Restrictions`` part)."""
    schemas.Experiments().add_entry(
        experiment["name"],
        keys["dataset"],
        keys["model"],
        keys["trainer"],
        [k["seed"] for k in keys["seed"]],
        fabrikant=fabrikant,
        comment=experiment.get("comment", ""),
    )
