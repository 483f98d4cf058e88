"""nnfabrik-style builders: functions named by dotted paths, configs canonicalised and hashed.

A dataset, model or trainer is described by a function path (``"pipeline.data.static_loaders"``)
and a JSON-able config dictionary. This module turns those descriptions into objects
(:func:`get_data`, :func:`get_model`, :func:`get_trainer`, :func:`get_all_parts`), checks them
before anything is stored (:func:`validate_config`) and gives every config one canonical text
form and hash (:func:`canonical_config`, :func:`config_hash`) so equal configs share a database row.

Dotted paths of the Sinz-lab stack (``sensorium.models.stacked_core_full_gauss_readout`` ...)
resolve to this project's equivalents, so stored configs and notebooks keep working.
No database code lives here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "ALLOWED_FN_PREFIXES_VARIABLE",
    "BUILTIN_FN_PREFIXES",
    "FRAMEWORK_ARGUMENTS",
    "MODULE_ALIASES",
    "FunctionNotAllowed",
    "accepts_argument",
    "allowed_fn_prefixes",
    "parse_fn_prefixes",
    "canonical_config",
    "config_hash",
    "get_all_parts",
    "get_data",
    "get_model",
    "get_trainer",
    "resolve_fn",
    "validate_config",
]

#: Sinz-lab module paths -> our modules that hold functions of the same name (tried in order).
MODULE_ALIASES: dict[str, tuple[str, ...]] = {
    "sensorium.datasets": ("pipeline.data",),
    "sensorium.datasets.dataset_loaders": ("pipeline.data",),
    "neuralpredictors.data.datasets": ("pipeline.data",),
    "sensorium.models": ("pipeline.models.builders", "pipeline.models"),
    "sensorium.models.models": ("pipeline.models.builders", "pipeline.models"),
    "sensorium.training": ("pipeline.training",),
    "sensorium.training.train": ("pipeline.training",),
    "pipeline.models": ("pipeline.models", "pipeline.models.builders"),
    "pipeline.data": ("pipeline.data", "pipeline.data.loaders"),
    "pipeline.training": ("pipeline.training", "pipeline.training.trainer"),
}

#: arguments the framework passes itself, per role; a config must not set them
FRAMEWORK_ARGUMENTS: dict[str, frozenset[str]] = {
    "dataset": frozenset({"seed"}),
    "model": frozenset({"dataloaders", "seed", "data_info"}),
    "trainer": frozenset({"model", "dataloaders", "seed", "uid", "cb", "resume_state"}),
}

_HASH_LENGTH = 32

#: modules whose functions may always be named by a dotted path (the Sinz-lab aliases of
#: :data:`MODULE_ALIASES` resolve into these)
BUILTIN_FN_PREFIXES: tuple[str, ...] = ("pipeline",)
#: the environment variable through which a lab allows more module prefixes (comma-separated)
ALLOWED_FN_PREFIXES_VARIABLE = "SYSID_ALLOWED_FN_PREFIXES"
_MODULE_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class FunctionNotAllowed(ValueError):
    """A dotted path names a function outside the allowed module prefixes (see :func:`resolve_fn`)."""


def parse_fn_prefixes(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    """Parse module prefixes (``"mylab.models, tests"``) into a tuple of module names.

    A prefix allows the module of that name and every module below it (``mylab`` allows
    ``mylab.models.x`` but not ``mylab2``); a trailing dot is ignored.

    Raises:
        ValueError: an entry that is not a dotted module name (wildcards are not supported).
    """
    if raw is None:
        return ()
    items = raw.replace(",", " ").split() if isinstance(raw, str) else list(raw)
    prefixes = []
    for item in items:
        name = str(item).strip().rstrip(".")
        if not _MODULE_PREFIX.match(name):
            raise ValueError(
                f"allowed function prefix {item!r} is not a dotted module name like 'mylab.models'"
            )
        if name not in prefixes:
            prefixes.append(name)
    return tuple(prefixes)


def allowed_fn_prefixes(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The module prefixes whose functions may be resolved: ``pipeline`` plus ``$SYSID_ALLOWED_FN_PREFIXES``.

    Read at every call (cheap), so a changed environment is seen at once. ``schemas.Settings``
    holds the same value (``allowed_fn_prefixes``).
    """
    env = os.environ if environ is None else environ
    try:
        extra = parse_fn_prefixes(env.get(ALLOWED_FN_PREFIXES_VARIABLE))
    except ValueError as error:
        raise ValueError(f"{ALLOWED_FN_PREFIXES_VARIABLE}: {error}") from None
    return BUILTIN_FN_PREFIXES + tuple(p for p in extra if p not in BUILTIN_FN_PREFIXES)


def _module_allowed(module_name: str, prefixes: Iterable[str]) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in prefixes)


def _not_allowed(dotted_path: str, prefixes: tuple[str, ...], why: str = "") -> FunctionNotAllowed:
    return FunctionNotAllowed(
        f"function {dotted_path!r} is not allowed{why}: only functions in the modules "
        f"{', '.join(p + '.*' for p in prefixes)} (and the sensorium / neuralpredictors paths that "
        f"map to them) may be registered and run. A lab allows its own modules with "
        f"{ALLOWED_FN_PREFIXES_VARIABLE}=mylab.models,mylab.data"
    )


def resolve_fn(dotted_path: str | Callable, allowed_prefixes: Iterable[str] | None = None) -> Callable:
    """Return the function named by ``dotted_path`` (``"package.module.function"``).

    Only modules under an allowed prefix are imported, and the function found must be defined
    under one too: a stored config names code that every worker runs, so ``os.system`` and its like
    must not resolve.

    Args:
        dotted_path: a dotted path; Sinz-lab paths (see :data:`MODULE_ALIASES`) map to ours.
            A callable is returned unchanged.
        allowed_prefixes: module prefixes (see :func:`parse_fn_prefixes`); default
            :func:`allowed_fn_prefixes` (``pipeline`` plus ``$SYSID_ALLOWED_FN_PREFIXES``).

    Raises:
        TypeError: ``dotted_path`` is neither a string nor a callable, or names a non-callable.
        FunctionNotAllowed: the path (or the function it finds) is outside the allowed prefixes.
        ValueError: the path has no module part, the module does not import or lacks the name.
    """
    if callable(dotted_path):
        return dotted_path
    if not isinstance(dotted_path, str):
        raise TypeError(f"a function path must be a dotted string, got {type(dotted_path).__name__}")
    prefixes = allowed_fn_prefixes() if allowed_prefixes is None else parse_fn_prefixes(allowed_prefixes)
    module_name, _, attr = dotted_path.strip().rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"function path {dotted_path!r} must look like 'package.module.function'")
    candidates = MODULE_ALIASES.get(module_name, ()) or (module_name,)
    if module_name not in candidates:
        candidates = (*candidates, module_name)
    candidates = tuple(c for c in candidates if _module_allowed(c, prefixes))
    if not candidates:
        raise _not_allowed(dotted_path, prefixes)
    import_errors: list[str] = []
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
        except ImportError as error:
            # a missing module named by the path is the user's error; a broken import inside an
            # existing module is reported with its cause below
            import_errors.append(f"{candidate}: {error}")
            continue
        if hasattr(module, attr):
            fn = getattr(module, attr)
            if not callable(fn):
                raise TypeError(f"{dotted_path!r} resolves to a {type(fn).__name__}, not a function")
            defined_in = getattr(fn, "__module__", None)
            if not isinstance(defined_in, str) or not _module_allowed(defined_in, prefixes):
                # e.g. a name an allowed module imported from elsewhere (``from os import system``)
                raise _not_allowed(dotted_path, prefixes, f" (it is defined in {defined_in!r})")
            return fn
    if len(import_errors) == len(candidates):
        raise ValueError(f"cannot import the module of {dotted_path!r}: " + "; ".join(import_errors))
    raise ValueError(f"{dotted_path!r}: no function {attr!r} in module(s) {', '.join(candidates)}")


# ----------------------------------------------------------------------------------------------
# canonical configs


#: deepest nesting of dicts and lists in a config
MAX_CONFIG_DEPTH = 64


def _canonical_value(value: Any, where: str, depth: int = 0) -> Any:
    """Return ``value`` as plain JSON types, or raise naming the offending entry ``where``."""
    # bool before int: bool is an int subclass, and True must not hash like 1
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(
                f"config entry {where or '<root>'} contains a NUL character (\\x00), which no database stores"
            )
        return value
    if value is None or isinstance(value, bool):
        return value
    if depth > MAX_CONFIG_DEPTH and isinstance(value, (Mapping, list, tuple)):
        raise ValueError(f"config entry {where} nests deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config entry {where} is {value!r}: NaN and infinity are not allowed")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"config keys must be strings; {where} has key {key!r} ({type(key).__name__})"
                )
            _canonical_value(key, f"key {key!r} of {where or '<root>'}")
            out[key] = _canonical_value(item, f"{where}.{key}" if where else key, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"config entry {where} is a set, which has no stable order: use a sorted list")
    numpy = _numpy_or_none()
    if numpy is not None:
        if isinstance(value, numpy.bool_):
            return bool(value)
        if isinstance(value, numpy.integer):
            return int(value)
        if isinstance(value, numpy.floating):
            return _canonical_value(float(value), where)
        if isinstance(value, numpy.str_):
            return str(value)
        if isinstance(value, numpy.ndarray):
            if value.dtype == object:
                raise TypeError(f"config entry {where} is a numpy object array: use plain numbers")
            return _canonical_value(value.tolist(), where)
    raise TypeError(
        f"config entry {where or '<root>'} has type {type(value).__name__}, which is not JSON-representable "
        "(use str, int, float, bool, None, lists and dicts with string keys)"
    )


def _numpy_or_none():
    try:
        import numpy
    except ImportError:  # numpy is a dependency, but configs need not require it
        return None
    return numpy


def canonical_config(config: Mapping[str, Any] | None) -> str:
    """Return the canonical JSON text of a config dictionary.

    Keys are sorted and types are kept (``8``, ``"8"`` and ``8.0`` differ); tuples become lists and
    numpy scalars/arrays become Python numbers/lists.

    Args:
        config: a mapping with string keys (``None`` means ``{}``).

    Raises:
        TypeError: not a mapping, non-string keys, sets, objects and other non-JSON values.
        ValueError: NaN or infinite floats.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise TypeError(f"a config must be a dict, got {type(config).__name__}")
    plain = _canonical_value(config, "")
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Mapping[str, Any] | None) -> str:
    """Return the 32-character lowercase hex hash (truncated SHA-256) of :func:`canonical_config`."""
    return hashlib.sha256(canonical_config(config).encode("utf-8")).hexdigest()[:_HASH_LENGTH]


def plain_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``config`` as plain JSON types (the parsed :func:`canonical_config`)."""
    return json.loads(canonical_config(config))


def validate_config(
    fn: str | Callable,
    config: Mapping[str, Any] | None,
    role: str,
    allowed_prefixes: Iterable[str] | None = None,
) -> Callable:
    """Check that ``fn`` resolves and accepts ``config`` before anything is stored or run.

    Every config key must be a parameter of ``fn`` (or ``fn`` takes ``**kwargs``), every required
    parameter must be in the config (except those the framework supplies for ``role``: see
    :data:`FRAMEWORK_ARGUMENTS`), the config must not set framework-supplied arguments, and every
    value must match its parameter's annotation and bounds (:func:`pipeline.config_types.type_problems`:
    ``{"layers": "4"}`` and ``{"hidden_channels": -1}`` are refused).

    Args:
        fn: a dotted function path or a callable.
        config: the keyword arguments it will receive.
        role: ``"dataset"``, ``"model"`` or ``"trainer"``.
        allowed_prefixes: module prefixes ``fn`` must lie under (see :func:`resolve_fn`).

    Returns:
        The resolved function.

    Raises:
        ValueError: unknown role/function, unexpected or missing keys, values of the wrong type or
            out of bounds (the message names the key, the value and the expected type).
        TypeError: the config is not JSON-representable.
    """
    if role not in FRAMEWORK_ARGUMENTS:
        raise ValueError(f"role must be one of {sorted(FRAMEWORK_ARGUMENTS)}, got {role!r}")
    config = plain_config(config)
    function = resolve_fn(fn, allowed_prefixes)
    name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
    supplied = FRAMEWORK_ARGUMENTS[role]
    clashes = sorted(set(config) & supplied)
    if clashes:
        raise ValueError(f"{role} config for {name} sets {clashes}, which the framework supplies itself")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without signatures: nothing to check
        return function
    params = signature.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unexpected = sorted(set(config) - accepted)
    if unexpected and not takes_kwargs:
        raise ValueError(
            f"{role} function {name} does not accept config key(s) {unexpected}; "
            f"it accepts {sorted(accepted - supplied)}"
        )
    missing = sorted(
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in supplied
        and p.name not in config
    )
    if missing:
        raise ValueError(f"{role} config for {name} lacks required argument(s) {missing}")
    from pipeline.config_types import type_problems  # imports pydantic: only when validating

    problems = type_problems(function, config)
    if problems:
        raise ValueError(f"{role} config for {name}: " + "; ".join(problems))
    return function


# ----------------------------------------------------------------------------------------------
# builders


def _plain_seed(seed: Any) -> int | None:
    """Return ``seed`` as a Python int (nnfabrik handed user code numpy.int64)."""
    if seed is None:
        return None
    if isinstance(seed, bool):
        raise TypeError("seed must be an integer, got a bool")
    try:
        return int(seed.__index__())
    except AttributeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}") from None


def get_data(dataset_fn: str | Callable, dataset_config: Mapping[str, Any] | None) -> Any:
    """Call the dataset function: ``dataset_fn(**dataset_config)``.

    Args:
        dataset_fn: dotted path or callable, e.g. ``"pipeline.data.static_loaders"``.
        dataset_config: its keyword arguments; a ``seed`` entry is passed as a plain ``int``.

    Returns:
        Whatever the function returns: for loaders ``{tier: {data_key: loader}}``.
    """
    function = resolve_fn(dataset_fn)
    config = dict(dataset_config or {})
    if "seed" in config:
        config["seed"] = _plain_seed(config["seed"])
    return function(**config)


def accepts_argument(function: Callable, name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (a ``**kwargs`` takes any; an unreadable signature too)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _as_torch_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a state dict of numpy arrays (as stored in the database) into torch tensors."""
    import numpy as np
    import torch

    out = {}
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value, copy=True))  # stored arrays may be read-only
        elif isinstance(value, (np.generic, int, float, bool)):
            value = torch.as_tensor(value)
        out[key] = value
    return out


def get_model(
    model_fn: str | Callable,
    model_config: Mapping[str, Any] | None,
    dataloaders: Mapping | None = None,
    seed: int | None = None,
    state_dict: Mapping[str, Any] | None = None,
    strict: bool = True,
    data_info: Mapping | None = None,
):
    """Build a model: ``model_fn(dataloaders, seed=..., [data_info=...], **model_config)``.

    nnfabrik's ``get_model``, with its argument order (``dataloaders`` is passed positionally, as
    nnfabrik does, so builders may name that argument as they like).

    Args:
        model_fn: dotted path or callable of a builder ``(dataloaders, seed, **config) -> nn.Module``.
        model_config: the builder's keyword arguments.
        dataloaders: ``{tier: {data_key: loader}}``; may be None when ``data_info`` is given.
        seed: the random seed (passed as a plain int).
        state_dict: parameters to load (torch tensors or numpy arrays).
        strict: passed to ``load_state_dict``.
        data_info: per-session shapes (``data_info_from_loaders``) to build without loaders.

    Raises:
        ValueError: neither loaders nor data_info, or the builder cannot take data_info.
    """
    function = resolve_fn(model_fn)
    kwargs = dict(model_config or {})
    if dataloaders is None and data_info is None:
        raise ValueError("get_model needs dataloaders or data_info to know the sessions and shapes")
    if data_info is not None:
        if not accepts_argument(function, "data_info"):
            raise ValueError(f"model function {model_fn!r} does not accept data_info; pass dataloaders")
        kwargs["data_info"] = data_info
    model = function(dataloaders, seed=_plain_seed(seed), **kwargs)
    if state_dict is not None:
        model.load_state_dict(_as_torch_state(state_dict), strict=strict)
    return model


def get_trainer(trainer_fn: str | Callable, trainer_config: Mapping[str, Any] | None = None) -> Callable:
    """Return ``trainer_fn`` with its config bound (``functools.partial``; nnfabrik's ``get_trainer``).

    The result is called as ``trainer(model, dataloaders, seed, uid=..., cb=...)`` and returns
    ``(score, output, state_dict)``.
    """
    function = resolve_fn(trainer_fn)
    return functools.partial(function, **dict(trainer_config or {}))


def get_all_parts(
    dataset_fn: str | Callable,
    dataset_config: Mapping[str, Any] | None,
    model_fn: str | Callable,
    model_config: Mapping[str, Any] | None,
    seed: int | None = None,
    state_dict: Mapping[str, Any] | None = None,
    strict: bool = True,
    trainer_fn: str | Callable | None = None,
    trainer_config: Mapping[str, Any] | None = None,
):
    """Build loaders and model (and the trainer when ``trainer_fn`` is given).

    Args:
        dataset_fn, dataset_config: see :func:`get_data`; ``seed`` is added to the dataset config
            when the dataset function accepts it and the config lacks it.
        model_fn, model_config, state_dict, strict: see :func:`get_model`.
        seed: one seed for data and model.
        trainer_fn, trainer_config: see :func:`get_trainer`.

    Returns:
        ``(dataloaders, model)`` or ``(dataloaders, model, trainer)`` when ``trainer_fn`` is given.
    """
    dataset_config = dict(dataset_config or {})
    if seed is not None and "seed" not in dataset_config and accepts_argument(resolve_fn(dataset_fn), "seed"):
        dataset_config["seed"] = _plain_seed(seed)
    dataloaders = get_data(dataset_fn, dataset_config)
    model = get_model(
        model_fn, model_config, dataloaders=dataloaders, seed=seed, state_dict=state_dict, strict=strict
    )
    if trainer_fn is None:
        return dataloaders, model
    return dataloaders, model, get_trainer(trainer_fn, trainer_config)
