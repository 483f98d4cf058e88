"""The ``sysid results`` table: trained models with their config values as columns, filtered and sorted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.columns import CONFIG_ROLES

from .safe_filter import FilterError, filter_rows

__all__ = [
    "SCORE_COLUMNS",
    "results_table",
    "select_rows",
    "summary_columns",
    "varying_columns",
]

#: score columns shown by default, when present
SCORE_COLUMNS = ("score", "validation_correlation", "test_correlation", "fraction_oracle", "seconds")


def varying_columns(
    df: pd.DataFrame, prefixes: tuple[str, ...] = tuple(f"{r}." for r in CONFIG_ROLES)
) -> list[str]:
    """Names of config columns (``<role>.<key>``) whose value differs between rows.

    With a single row every config column counts as varying (nothing to compare against).
    """
    names = [c for c in df.columns if str(c).startswith(prefixes)]
    if len(df) <= 1:
        return names
    return [c for c in names if df[c].astype(str).nunique(dropna=False) > 1]


def select_rows(
    df: pd.DataFrame,
    filter_expr: str | None = None,
    sort: str | None = None,
    ascending: bool = False,
) -> pd.DataFrame:
    """Filter and sort a results table.

    Args:
        df: the results (e.g. from :func:`schemas.results`).
        filter_expr: comparisons of columns with literals joined by and/or/not (see
            :mod:`sysid.safe_filter`; never evaluated as Python), e.g. ``"score > 0.2 and seed == 1"``;
            column names with dots go in backticks: ``"`model.layers` == 2"``.
        sort: column to sort by (default: ``score`` when present).
        ascending: sort ascending (default descending: best scores first).

    Returns:
        The selected rows.

    Raises:
        ValueError: the filter is not a valid expression or names an unknown column, or ``sort`` is
            not a column.
    """
    if filter_expr:
        try:
            df = filter_rows(df, filter_expr)
        except FilterError as err:
            raise ValueError(f"bad --filter expression {filter_expr!r}: {err}") from None
    if sort is None and "score" in df.columns:
        sort = "score"
    if sort is not None:
        if sort not in df.columns:
            raise ValueError(
                f"cannot sort by {sort!r}: no such column. Columns: {', '.join(map(str, df.columns))}"
            )
        df = df.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return df


def summary_columns(df: pd.DataFrame) -> list[str]:
    """The default columns of ``sysid results``: keys, seed, scores and the config values that vary.

    Args:
        df: a results table after :func:`sysid.render.compact_keys` (``dataset``/``model``/``trainer``
            key columns) or before it (``<role>_fn``/``<role>_hash``).
    """
    keys = [
        c
        for c in df.columns
        if c in ("model", "dataset", "trainer", "seed") or str(c).endswith(("_fn", "_hash"))
    ]
    scores = [c for c in SCORE_COLUMNS if c in df.columns]
    return keys + scores + varying_columns(df)


#: shorter display names of the score columns, so a results table fits a terminal
_SHORT_HEADERS = {
    "validation_correlation": "val corr",
    "test_correlation": "test corr",
    "fraction_oracle": "frac oracle",
}


def results_table(
    df: pd.DataFrame,
    title: str = "trained models",
    max_rows: int | None = None,
    all_columns: bool = False,
    width: int | None = None,
):
    """The rich table that ``sysid results`` and ``sysid demo`` print for a results DataFrame.

    Keys become ``function:hash`` columns; a key column with one value in every row moves to the
    caption; ``validation_correlation`` is left out where it only repeats ``score``; the default
    columns are those of :func:`summary_columns` (``all_columns=True`` shows every column).

    Args:
        df: rows of :func:`schemas.results` (after :func:`select_rows`).
        title: table title; the row count is appended.
        max_rows: show at most this many rows.
        all_columns: show every column instead of the summary.
        width: terminal width (default: the console's); config columns that do not fit are left
            out of the summary, and the caption says how many.
    """
    from rich.console import Console

    from .render import compact_keys, dataframe_table, format_value

    shown = compact_keys(df)
    columns = list(shown.columns) if all_columns else summary_columns(shown)
    constant = []
    if len(shown) > 1 and not all_columns:
        for role in CONFIG_ROLES:
            if role in columns and shown[role].nunique() == 1:
                columns.remove(role)
                constant.append(f"{role} {shown[role].iloc[0]}")
    if "validation_correlation" in columns and "score" in shown.columns:
        if np.allclose(shown["score"], shown["validation_correlation"], equal_nan=True):
            columns.remove("validation_correlation")
    caption = ("same in every row: " + ", ".join(constant)) if constant else None
    # config columns without their role prefix where the name alone is unambiguous
    headers = dict(_SHORT_HEADERS)
    config = [c for c in columns if str(c).startswith(tuple(f"{r}." for r in CONFIG_ROLES))]
    short = [str(c).split(".", 1)[1] for c in config]
    headers.update({c: n for c, n in zip(config, short) if short.count(n) == 1})
    if not all_columns:
        # a too-wide table makes rich squeeze every column; drop config columns from the right instead
        width = width or Console().width

        def column_width(c) -> int:
            cells = [len(format_value(v)) for v in shown[c].head(max_rows or len(shown))]
            return max([len(headers.get(str(c), str(c)))] + cells) + 3

        hidden = 0
        while config and sum(column_width(c) for c in columns) + 1 > width:
            columns.remove(config.pop())
            hidden += 1
        if hidden:
            note = f"{hidden} config column(s) hidden: widen the terminal, or --all-columns / --csv"
            caption = f"{caption}; {note}" if caption else note
    return dataframe_table(
        shown,
        title=f"{title} ({len(df)})",
        max_rows=max_rows,
        columns=columns,
        caption=caption,
        headers=headers,
    )
