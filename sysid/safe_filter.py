"""Row filters for ``sysid results --filter``: comparisons of columns with literals, evaluated without ``eval``.

``DataFrame.query`` runs arbitrary Python (``@pd.io.common.os.system(...)``), so a filter is parsed
with :mod:`ast` and only this grammar is evaluated, as a boolean mask over the rows::

    expr    := expr and expr | expr or expr | not expr | expr & expr | expr | expr | ~expr | (expr)
             | operand op operand [op operand ...]          (chained: 0.2 < score < 0.5)
    op      := == | != | < | <= | > | >= | in | not in      (in / not in: column in [literal, ...])
    operand := column | literal
    column  := name | dotted.name | `any column name`      (must be a column of the table)
    literal := number | -number | 'string' | True | False | None

Names that are not columns, attribute access, calls, subscripts, arithmetic and ``@`` variables are
refused with an error that says what is allowed.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FilterError", "filter_mask", "filter_rows"]

_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_BACKTICKS = re.compile(r"`([^`]*)`")
_GRAMMAR = (
    "comparisons of columns with literals (score > 0.3, `model.layers` == 2, seed in [1, 2]) "
    "combined with and / or / not"
)
#: longest filter accepted (a filter is typed by a person)
MAX_FILTER_LENGTH = 2000


class FilterError(ValueError):
    """A ``--filter`` expression outside the accepted grammar (the message says what is wrong)."""


class _Column:
    """A column reference while evaluating (distinguishes columns from literal strings)."""

    def __init__(self, name: str):
        self.name = name


def _strings_outside_quotes(expr: str) -> str:
    """``expr`` with the contents of quoted strings blanked (to look for backticks and ``@``)."""
    return re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: " " * len(m.group(0)), expr)


def _replace_backticks(expr: str) -> tuple[str, dict[str, str]]:
    """Replace each `` `name` `` by a placeholder identifier; return the text and placeholder -> name."""
    names: dict[str, str] = {}
    blanked = _strings_outside_quotes(expr)
    out, last = [], 0
    for match in _BACKTICKS.finditer(blanked):
        placeholder = f"__column_{len(names)}__"
        names[placeholder] = expr[match.start(1) : match.end(1)]
        out.append(expr[last : match.start()])
        out.append(placeholder)
        last = match.end()
    out.append(expr[last:])
    return "".join(out), names


def filter_mask(df: pd.DataFrame, expr: str) -> pd.Series:
    """Evaluate a filter expression (see the module docstring) to a boolean mask over ``df``'s rows.

    Args:
        df: the table; column names are what names in ``expr`` may refer to.
        expr: the filter, e.g. ``"score > 0.3 and `model.layers` in [2, 3]"``.

    Returns:
        A boolean Series aligned with ``df`` (missing values compare as False).

    Raises:
        FilterError: a syntax error, an unknown column, or anything outside the grammar.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise FilterError("the filter is empty: give a condition such as 'score > 0.3'")
    if len(expr) > MAX_FILTER_LENGTH:
        raise FilterError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    if "@" in _strings_outside_quotes(expr):
        raise FilterError("'@' (local variables) is not allowed in a filter; allowed: " + _GRAMMAR)
    text, backticked = _replace_backticks(expr)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise FilterError(f"not a valid expression ({err.msg}); allowed: {_GRAMMAR}") from None
    evaluator = _Evaluator(df, backticked)
    mask = evaluator.boolean(tree.body)
    return mask


def filter_rows(df: pd.DataFrame, expr: str) -> pd.DataFrame:
    """The rows of ``df`` for which the filter ``expr`` holds (see :func:`filter_mask`)."""
    return df[filter_mask(df, expr).to_numpy(dtype=bool)]


class _Evaluator:
    def __init__(self, df: pd.DataFrame, backticked: dict[str, str]):
        self.df = df
        self.backticked = backticked
        self.columns = {str(c): c for c in df.columns}

    # -- boolean structure

    def boolean(self, node: ast.AST) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            masks = [self.boolean(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = masks[0]
            for mask in masks[1:]:
                result = combine(result, mask)
            return result
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            combine = operator.and_ if isinstance(node.op, ast.BitAnd) else operator.or_
            return combine(self.boolean(node.left), self.boolean(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
            return ~self.boolean(node.operand)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return pd.Series(node.value, index=self.df.index, dtype=bool)
        operand = self.operand(node)
        if isinstance(operand, _Column):
            values = self.df[operand.name]
            if values.dtype == bool:
                return values
            raise FilterError(
                f"column {operand.name!r} is not a true/false column: compare it, e.g. '{operand.name} > 0'"
            )
        raise FilterError(f"{ast.unparse(node)!r} is not a condition; allowed: {_GRAMMAR}")

    def compare(self, node: ast.Compare) -> pd.Series:
        left = self.operand(node.left)
        result = None
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                right = self.literal_list(right_node)
                if not isinstance(left, _Column):
                    raise FilterError(f"the left side of 'in' must be a column, got {ast.unparse(node.left)}")
                mask = self.df[left.name].isin(right)
                if isinstance(op, ast.NotIn):
                    mask = ~mask
            elif type(op) in _COMPARE:
                right = self.operand(right_node)
                mask = self.compare_pair(left, right, _COMPARE[type(op)], ast.unparse(node))
            else:
                raise FilterError(f"operator in {ast.unparse(node)!r} is not allowed; allowed: {_GRAMMAR}")
            result = mask if result is None else result & mask
            left = right if not isinstance(op, (ast.In, ast.NotIn)) else left
        return result

    def compare_pair(self, left: Any, right: Any, op, text: str) -> pd.Series:
        if not isinstance(left, _Column) and not isinstance(right, _Column):
            raise FilterError(f"{text!r} compares two literals: name a column")
        a = self.df[left.name] if isinstance(left, _Column) else left
        b = self.df[right.name] if isinstance(right, _Column) else right
        if a is None or b is None:  # col == None / col != None: missing values
            column = b if a is None else a
            if op is operator.eq:
                return column.isna()
            if op is operator.ne:
                return column.notna()
            raise FilterError(f"{text!r}: None can only be compared with == or !=")
        try:
            mask = op(a, b)
        except TypeError as err:
            raise FilterError(f"cannot evaluate {text!r}: {err}") from None
        if isinstance(mask, pd.Series):
            return mask.fillna(False).astype(bool)
        return pd.Series(np.asarray(mask, dtype=bool), index=self.df.index)

    # -- operands

    def operand(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self.column(self.backticked.get(node.id, node.id))
        if isinstance(node, ast.Attribute):
            dotted = self.dotted_name(node)
            if dotted is not None and dotted in self.columns:
                return _Column(self.columns[dotted])
            raise FilterError(
                f"attribute access {ast.unparse(node)!r} is not allowed (and is not a column); "
                "put column names with dots in backticks: `model.layers`"
            )
        if isinstance(node, ast.Call):
            raise FilterError(f"function calls are not allowed in a filter: {ast.unparse(node)!r}")
        return self.literal(node)

    def column(self, name: str) -> _Column:
        if name in self.columns:
            return _Column(self.columns[name])
        raise FilterError(f"unknown column {name!r}. Columns: {', '.join(self.columns)}")

    def dotted_name(self, node: ast.AST) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(node.id)
        return ".".join(reversed(parts))

    def literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and (
            node.value is None or isinstance(node.value, (bool, int, float, str))
        ):
            return node.value
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant)
            and isinstance(node.operand.value, (int, float))
            and not isinstance(node.operand.value, bool)
        ):
            value = node.operand.value
            return -value if isinstance(node.op, ast.USub) else value
        raise FilterError(
            f"{ast.unparse(node)!r} is not allowed in a filter (only columns and literals); "
            f"allowed: {_GRAMMAR}"
        )

    def literal_list(self, node: ast.AST) -> Sequence[Any]:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [self.literal(item) for item in node.elts]
        raise FilterError(f"'in' needs a literal list such as [1, 2], got {ast.unparse(node)!r}")
