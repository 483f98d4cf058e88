"""Rich tables for the CLI: any DataFrame, registration plans and pipeline status."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

__all__ = ["compact_keys", "dataframe_table", "format_value", "plan_table", "status_group"]

_ROLES = ("dataset", "model", "trainer")


def compact_keys(df: pd.DataFrame, digits: int = 8) -> pd.DataFrame:
    """Replace each ``<role>_fn``/``<role>_hash`` column pair by one short ``<role>`` column.

    ``pipeline.models.stacked_core_full_gauss_readout`` + ``3f9a…`` becomes
    ``stacked_core_full_gauss_readout:3f9a2c1b`` (the function name and the first ``digits`` hex
    digits of the hash), so key columns fit a terminal. Rows that lack the key (NaN or None) get None.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if any(name is not None for name in df.index.names):
        df = df.reset_index()
    out = df.copy()
    for role in _ROLES:
        fn, digest = f"{role}_fn", f"{role}_hash"
        if fn in out.columns and digest in out.columns:
            position = list(out.columns).index(fn)
            # a row without this key (a DataInfo error among TrainedModel errors) gets an empty cell
            combined = [
                f"{str(f).rsplit('.', 1)[-1]}:{str(h)[:digits]}" if _present(f) and _present(h) else None
                for f, h in zip(out[fn], out[digest])
            ]
            out = out.drop(columns=[fn, digest])
            out.insert(min(position, len(out.columns)), role, combined)
    return out


def _present(value: Any) -> bool:
    """False for None and NaN (a key column a row does not have)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, digits: int = 4, max_chars: int = 60) -> str:
    """Format one cell: floats to ``digits`` significant digits, NaN/None as an empty cell.

    Args:
        value: any cell value.
        digits: significant digits for floats.
        max_chars: longer text is cut with an ellipsis.
    """
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # arrays and containers: not a scalar missing value
        pass
    text = str(value)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def dataframe_table(
    df: pd.DataFrame,
    title: str = "",
    max_rows: int | None = None,
    columns: Iterable[str] | None = None,
    empty: str = "(none)",
    max_chars: int = 60,
    wrap: bool = False,
    caption: str | None = None,
    headers: Mapping[str, str] | None = None,
):
    """Build a :class:`rich.table.Table` from a DataFrame (its index is shown when it is named).

    Args:
        df: the rows to show.
        title: table title.
        max_rows: show at most this many rows (a last row says how many were left out).
        columns: the columns to show, in order (default all).
        empty: caption when there are no rows.
        max_chars: longer cell text is cut with an ellipsis.
        wrap: fold long cells over several lines (for messages); by default a cell stays on one line
            and is shortened with an ellipsis when the terminal is narrow.
        caption: text under the table (default: ``empty`` when there are no rows).
        headers: display names for some columns (e.g. shorter ones).

    Returns:
        The table, ready for ``rich.console.Console.print``.
    """
    from rich.table import Table

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if any(name is not None for name in df.index.names):
        df = df.reset_index()
    if columns is not None:
        df = df[list(columns)]
    table = Table(title=title or None, caption=empty if df.empty else caption, header_style="bold")
    headers = headers or {}
    shown = df if max_rows is None else df.head(max_rows)
    cells = [[format_value(v, max_chars=max_chars) for v in row] for row in shown.itertuples(index=False)]
    for i, column in enumerate(df.columns):
        numeric = pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column])
        # numbers are never shortened (a cut number misleads); text columns give way instead
        header = headers.get(str(column), str(column))
        widest = max([len(row[i]) for row in cells] + [min(len(header), 8)])
        table.add_column(
            header,
            justify="right" if numeric else "left",
            overflow="fold" if wrap or numeric else "ellipsis",
            no_wrap=not wrap,
            min_width=widest if numeric else min(widest, 6),
        )
    for row in cells:
        table.add_row(*row)
    if max_rows is not None and len(df) > max_rows:
        table.add_row(*([f"… {len(df) - max_rows} more"] + [""] * (len(df.columns) - 1)))
    return table


def plan_table(entries: Iterable[Any], title: str, keys: Iterable[Mapping[str, Any]] | None = None):
    """Table of registration entries: section, fn, hash and a config summary.

    Args:
        entries: :class:`sysid.register.Entry` objects.
        title: table title.
        keys: the database keys returned for the entries (same order), when registered.
    """
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for name in ("table", "fn", "hash", "config"):
        table.add_column(name, overflow="fold")
    keys = list(keys) if keys is not None else None
    for i, entry in enumerate(entries):
        digest = entry.hash
        if keys is not None:
            digest = next((v for k, v in keys[i].items() if k.endswith("_hash")), digest)
        # 12 hex digits identify a config in practice; `sysid report` accepts hash prefixes
        table.add_row(entry.section, entry.fn, digest[:12], entry.summary())
    return table


def status_group(
    job_status: pd.DataFrame,
    running: pd.DataFrame,
    title: str = "pipeline status",
    degenerate: pd.DataFrame | None = None,
):
    """The ``sysid status`` view: per-table job counts above the running jobs.

    Args:
        job_status: one row per computed table with done/pending/reserved/error counts.
        running: one row per running job (host, key, epoch, validation score ...).
        title: title of the counts table.
        degenerate: trained models flagged degenerate (``schemas.degenerate_models()``): a warning
            line when there are any.
    """
    from rich.console import Group
    from rich.text import Text

    parts = [dataframe_table(job_status, title=title)]
    # a job whose worker stopped renewing its lease is not running (schemas.leases)
    dead = running["lease"] == "expired" if "lease" in running else pd.Series(False, index=running.index)
    alive = running[~dead]
    if alive.empty:
        parts.append(Text("running jobs: none"))
    else:
        parts.append(dataframe_table(compact_keys(alive), title="running jobs"))
        if "lease" in alive and (alive["lease"] != "alive").any():
            parts.append(
                Text(
                    "lease 'late'/'unknown': no recent heartbeat; cannot tell yet whether the worker is alive"
                )
            )
    if dead.any():
        parts.append(
            dataframe_table(
                compact_keys(running[dead]),
                title="reserved by workers presumed dead (lease expired; the next worker's sweep re-pends them)",
            )
        )
    if degenerate is not None and not degenerate.empty:
        parts.append(
            Text(
                f"{len(degenerate)} trained model(s) degenerate (constant predictions, score ≈ 0): "
                "`sysid errors` lists them",
                style="yellow",
            )
        )
    return Group(*parts)
