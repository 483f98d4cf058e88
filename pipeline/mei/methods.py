"""MEI methods as stored configs: a function path plus its settings, checked before anything is stored.

An MEI method is a function called as ``fn(model, data_key, neurons, input_shape, config, *, seed,
data_range, batch_size, device) -> MEIResult`` together with the settings class that validates its
config. :data:`METHODS` lists them by function object (a dotted path is resolved to the function
first, as for every stored config), so a config is validated by the settings class of exactly the
function that will run it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from pipeline.builder import resolve_fn
from pipeline.mei.config import MEIConfig, MEIConfigError, mei_config
from pipeline.mei.optimize import optimize_meis

__all__ = ["METHODS", "validate_method"]

#: every MEI method function and the function that validates its config
METHODS: dict[Callable, Callable[[Any], BaseModel]] = {optimize_meis: mei_config}


def validate_method(fn: str | Callable, config: Mapping[str, Any] | None) -> tuple[Callable, MEIConfig]:
    """Resolve an MEI method's function and validate its config.

    Args:
        fn: dotted path (e.g. ``"pipeline.mei.optimize_meis"``) or the function.
        config: its settings (a mapping, e.g. from YAML or a stored JSON column).

    Returns:
        ``(function, validated settings)``.

    Raises:
        ValueError: the path does not resolve, or names a function that is not an MEI method.
        MEIConfigError: unknown keys or bad values in ``config``.
    """
    function = resolve_fn(fn)
    validator = METHODS.get(function)
    if validator is None:
        known = sorted(f"{f.__module__}.{f.__qualname__}" for f in METHODS)
        raise ValueError(f"{fn!r} is not an MEI method; the MEI methods are {known}")
    if config is not None and not isinstance(config, Mapping):
        raise MEIConfigError(f"an MEI method config must be a mapping, got {type(config).__name__}")
    return function, validator(config)
