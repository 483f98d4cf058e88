"""Typed checks of config values against a function's annotations, before a config is stored.

A config is registered now and run on a worker hours later; ``{"layers": "4"}`` or
``{"hidden_channels": -1}`` must fail at registration. :func:`type_problems` validates each config
value against the annotation of the parameter it sets, with pydantic in strict JSON mode (configs
are JSON: ``"4"`` is not an int, ``1`` is not a bool, an int is a float, a list is a tuple), and the
bounds the builders state with the aliases below (``layers: PositiveInt = 3``).

Values are checked, never converted: the stored config (and its hash) stays as written, so ``8``
and ``"8"`` remain different configs where a parameter accepts both.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

__all__ = [
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "LearningRate",
    "UnitInterval",
    "type_problems",
]

#: an integer >= 1 (channels, layers, kernel sizes, batch sizes, epochs)
PositiveInt = Annotated[int, Field(ge=1)]
#: an integer >= 0
NonNegativeInt = Annotated[int, Field(ge=0)]
#: a float > 0 (learning rates, scales)
PositiveFloat = Annotated[float, Field(gt=0)]
#: a float >= 0 (regularizer strengths)
NonNegativeFloat = Annotated[float, Field(ge=0)]
#: a float in the open interval (0, 1) (decay factors)
UnitInterval = Annotated[float, Field(gt=0, lt=1)]
#: a learning rate: > 0 and representable in float32, the parameters' precision (1e300 overflows there)
LearningRate = Annotated[float, Field(gt=0, lt=3.4028234663852886e38)]


def _annotations(function: Callable) -> dict[str, Any]:
    """Evaluated parameter annotations of ``function`` (those that cannot be evaluated are left out)."""
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - names only imported for type checkers, odd objects: per parameter
        pass
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return {}
    namespace = vars(sys.modules.get(getattr(function, "__module__", ""), typing))
    hints = {}
    for name, param in params.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # noqa: S307 - annotation text of allowed code
            except Exception:  # noqa: BLE001
                continue
        hints[name] = annotation
    return hints


@functools.lru_cache(maxsize=4096)
def _adapter(function: Callable, name: str) -> tuple[TypeAdapter, str] | None:
    """A strict validator of parameter ``name`` of ``function`` and its type as text; None: nothing to check."""
    annotation = _annotations(function).get(name)
    if annotation is None or annotation is Any:
        return None
    try:
        adapter = TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 - torch.device, nn.Module ...: pydantic cannot check these
        return None
    return adapter, _type_text(annotation)


def _type_text(annotation: Any) -> str:
    """``Annotated[int, Field(ge=1)]`` -> ``int >= 1``; other annotations as Python writes them."""
    if typing.get_origin(annotation) is Annotated:
        base, *metadata = typing.get_args(annotation)
        bounds = []
        for item in metadata:
            for constraint in getattr(item, "metadata", [item]):
                for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    value = getattr(constraint, attr, None)
                    if value is not None:
                        bounds.append(f"{symbol} {value}")
        return " ".join([_type_text(base), *bounds])
    return inspect.formatannotation(annotation).replace("collections.abc.", "").replace("typing.", "")


def _location(key: str, loc: tuple) -> str:
    return key + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def type_problems(function: Callable, config: Mapping[str, Any], name: str | None = None) -> list[str]:
    """Every config value that its parameter's annotation (and bounds) does not accept.

    Args:
        function: the dataset, model or trainer function.
        config: keyword arguments for it (plain JSON values).
        name: the function's name in messages (default its ``__qualname__``).

    Returns:
        One message per bad value, naming the key, the value, its type and the expected type, e.g.
        ``layers = '4' (str): Input should be a valid integer (expected int >= 1)``. Keys without an
        annotation pydantic can check, and keys the function takes through ``**kwargs``, are not checked.
    """
    problems = []
    for key, value in config.items():
        checker = _adapter(function, key)
        if checker is None:
            continue
        adapter, expected = checker
        try:
            adapter.validate_json(json.dumps(value), strict=True)
        except ValidationError as error:
            details = error.errors()
            if len(details) == 1:
                where, message = _location(key, tuple(details[0].get("loc", ()))), details[0]["msg"]
            else:  # a union: each member's complaint would only confuse
                where, message = key, "Input matches none of the accepted types"
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:59] + "…"
            problems.append(f"{where} = {shown} ({type(value).__name__}): {message} (expected {expected})")
        except (TypeError, ValueError) as error:  # not JSON-representable: canonical_config says why
            problems.append(f"{key}: {error}")
    return problems
