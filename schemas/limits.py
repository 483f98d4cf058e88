"""Column limits read from the tables' own definitions, to check rows before they reach the database.

A value that does not fit its column (a 2**40 seed in an ``int32``, a 65-character experiment name in
a ``varchar(64)``, a NUL character in any text) makes the database raise a raw driver error, or on a
lax MySQL server be cut silently. :func:`row_problems` finds these from the ``definition`` text of the
table class alone, so a dry run needs no connection and the limits are written once: in the
definitions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ColumnLimit", "check_row", "column_limits", "row_problems"]

_INTEGER_BITS = {
    "int8": (8, True),
    "int16": (16, True),
    "int32": (32, True),
    "int64": (64, True),
    "uint8": (8, False),
    "uint16": (16, False),
    "uint32": (32, False),
    "uint64": (64, False),
    "tinyint": (8, True),
    "smallint": (16, True),
    "mediumint": (24, True),
    "int": (32, True),
    "integer": (32, True),
    "bigint": (64, True),
}
_LINE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:=[^:]*)?:\s*([^#]+?)\s*(?:#.*)?$")
_TEXT = re.compile(r"^(varchar|char)\s*\(\s*(\d+)\s*\)$", re.IGNORECASE)
_INTEGER = re.compile(r"^([a-z]+[0-9]*)(\s+unsigned)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ColumnLimit:
    """What one column holds: text up to ``max_length`` characters, or integers in [low, high]."""

    table: str
    column: str
    type: str
    max_length: int | None = None
    low: int | None = None
    high: int | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit this column, or None when it does (None values are not checked)."""
        if value is None:
            return None
        where = f"{self.table}.{self.column} ({self.type})"
        if self.max_length is not None:
            if not isinstance(value, str):
                return None  # the type is checked elsewhere; only lengths are limits
            if "\x00" in value:
                return f"{value[:40]!r} contains a NUL character, which {where} cannot store"
            if len(value) > self.max_length:
                return (
                    f"{value[:40]!r}{'…' if len(value) > 40 else ''} is {len(value)} characters long; "
                    f"{where} holds at most {self.max_length}"
                )
            return None
        if self.low is not None and isinstance(value, int) and not isinstance(value, bool):
            if not self.low <= value <= self.high:
                return f"{value} is outside the range of {where}: {self.low} … {self.high}"
        return None


def _limit(table: str, column: str, type_text: str) -> ColumnLimit | None:
    text = _TEXT.match(type_text)
    if text:
        return ColumnLimit(table, column, type_text, max_length=int(text.group(2)))
    integer = _INTEGER.match(type_text)
    if integer and integer.group(1).lower() in _INTEGER_BITS:
        bits, signed = _INTEGER_BITS[integer.group(1).lower()]
        signed = signed and not integer.group(2)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return ColumnLimit(table, column, type_text, low=low, high=high)
    if type_text.lower() in ("varchar", "text", "longtext", "json") or type_text.startswith("<"):
        return ColumnLimit(table, column, type_text, max_length=2**62)  # NUL characters only
    return None


def column_limits(table: Any) -> dict[str, ColumnLimit]:
    """The limits of the columns a table's ``definition`` declares itself (not those of foreign keys).

    Args:
        table: a DataJoint table class or instance (only its ``definition`` text is read).

    Returns:
        ``{column: ColumnLimit}`` for text (``varchar(n)``, ``char(n)``, ``json``...) and integer columns.
    """
    name = table.__name__ if isinstance(table, type) else type(table).__name__
    limits = {}
    for line in str(getattr(table, "definition", "")).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "---", "->")):
            continue
        match = _LINE.match(line)
        if match:
            limit = _limit(name, match.group(1), match.group(2).strip())
            if limit is not None:
                limits[match.group(1)] = limit
    return limits


def row_problems(table: Any, row: Mapping[str, Any], where: str = "") -> list[str]:
    """Every value of ``row`` that does not fit its column of ``table``, as messages naming the key.

    Args:
        table: a table class (see :func:`column_limits`).
        row: column -> value; columns the definition does not declare are not checked.
        where: prefix of each message (e.g. ``"experiment"``, ``"model[2]"``).
    """
    limits = column_limits(table)
    problems = []
    for column, value in row.items():
        limit = limits.get(column)
        problem = limit.problem(value) if limit is not None else None
        if problem:
            problems.append(f"{where + ': ' if where else ''}{column} {problem}")
    return problems


def check_row(table: Any, row: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` listing the values of ``row`` that do not fit ``table`` (see :func:`row_problems`)."""
    problems = row_problems(table, row, where)
    if problems:
        raise ValueError("; ".join(problems))
