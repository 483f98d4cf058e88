"""Trained models that finished but are no use: flagged degenerate (constant predictions) by the workers."""

from __future__ import annotations

import pandas as pd

from .binding import computed_tables
from .run_info import DEGENERATE_COMMENT
from .training import TrainingTable

__all__ = ["degenerate_models"]


def degenerate_models() -> pd.DataFrame:
    """Trained models whose predictions were constant on the validation tier (``lr_init: 1e6`` ...).

    A worker flags them in the table's ``comment`` column (and ``output["degenerate"]``) when it
    stores them; their score is ≈ 0.

    Returns:
        One row per flagged model of every training table: ``table``, the key columns, ``score`` and
        ``comment`` (empty DataFrame with columns ``table``, ``score``, ``comment`` when none).
    """
    frames = []
    for name, table in computed_tables().items():
        if not isinstance(table, TrainingTable):
            continue
        flagged = table & {"comment": DEGENERATE_COMMENT}
        columns = [*table.primary_key, "score", "comment"]
        rows = flagged.proj("score", "comment").to_dicts()
        if rows:
            frame = pd.DataFrame(rows, columns=columns)
            frame.insert(0, "table", name)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["table", "score", "comment"])
    return pd.concat(frames, ignore_index=True)
