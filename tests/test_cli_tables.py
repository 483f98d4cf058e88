"""Results and status tables without a database: key compaction, filtering, sorting, columns."""

import math

import pandas as pd
import pytest
from rich.console import Console

from sysid.render import compact_keys, dataframe_table, format_value
from sysid.results import select_rows, summary_columns, varying_columns
from tests.fixtures_db import quiet_datajoint

quiet_datajoint()  # schemas.result_table imports DataJoint
from schemas.result_table import flatten_config  # noqa: E402


@pytest.fixture
def results():
    """Rows shaped as ``schemas.results()`` returns them: configs already spread over ``<role>.<key>`` columns."""
    rows = [
        {"model.layers": 2, "model.grid.x": 1},
        {"model.layers": 3, "model.grid.x": 1},
        {"model.layers": 3},
    ]
    frame = pd.DataFrame(
        {
            "model_fn": ["pipeline.models.a", "pipeline.models.a", "pipeline.models.b"],
            "model_hash": ["1111111111aa", "2222222222bb", "3333333333cc"],
            "seed": [1, 2, 1],
            "score": [0.2, float("nan"), 0.4],
        }
    )
    return pd.concat([frame, pd.DataFrame(rows)], axis=1).assign(**{"trainer.lr": [0.1, 0.1, 0.1]})


def test_flatten_config_spreads_nested_keys_and_keeps_lists_whole():
    config = {"layers": 2, "grid": {"x": 1, "y": {"z": "a"}}, "paths": ["/d/a", "/d/b"], "empty": {}}
    assert flatten_config(config, "model") == {
        "model.layers": 2,
        "model.grid.x": 1,
        "model.grid.y.z": "a",
        "model.paths": '["/d/a", "/d/b"]',
        "model.empty": "{}",
    }
    assert flatten_config('{"layers": 3}', "model") == {"model.layers": 3}  # JSON text from some drivers
    assert flatten_config(None, "model") == {}


def test_select_rows_sorts_best_first_and_filters(results):
    ordered = select_rows(results)
    assert list(ordered["score"].iloc[:2]) == [0.4, 0.2] and math.isnan(ordered["score"].iloc[2])
    assert list(select_rows(results, sort="seed", ascending=True)["seed"]) == [1, 1, 2]
    assert list(select_rows(results, filter_expr="`model.layers` == 3 and seed == 1")["model_hash"]) == [
        "3333333333cc"
    ]
    with pytest.raises(ValueError, match="bad --filter expression.*Columns: model_fn"):
        select_rows(results, filter_expr="nope > 1")
    with pytest.raises(ValueError, match="cannot sort by 'nope'"):
        select_rows(results, sort="nope")


def test_compact_keys_and_default_columns(results):
    compact = compact_keys(results)
    assert list(compact["model"]) == ["a:11111111", "a:22222222", "b:33333333"]
    assert "model_fn" not in compact.columns and "model_hash" not in compact.columns
    # trainer.lr is the same everywhere: not a default column; model.layers varies
    assert varying_columns(compact) == ["model.layers", "model.grid.x"]
    assert summary_columns(compact) == ["model", "seed", "score", "model.layers", "model.grid.x"]


def test_dataframe_table_renders_values():
    df = pd.DataFrame({"a": [0.123456, float("nan")], "b": ["x" * 100, None]})
    console = Console(width=200, record=True)
    console.print(dataframe_table(df, title="t", max_rows=1))
    text = console.export_text()
    assert "0.1235" in text and "… 1 more" in text and "x" * 59 + "…" in text
    assert format_value(None) == "" and format_value(float("nan")) == "" and format_value(3) == "3"
    with pytest.raises(TypeError, match="DataFrame"):
        dataframe_table([1, 2])


def _render(table, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=False)
    console.print(table)
    return console.export_text()


def test_results_table_hides_config_columns_that_do_not_fit(results):
    from sysid.results import results_table

    wide = results.copy()
    for i in range(6):  # many differing config values: more than 80 columns of text
        wide[f"model.some_long_parameter_{i}"] = [0.001 * i, 0.002 * i, 0.003 * i]
    narrow_text = _render(results_table(wide, width=80), 80)
    assert "seed" in narrow_text and "score" in narrow_text  # keys and scores always stay
    assert "some_long_parameter_5" not in narrow_text
    assert "config column(s) hidden" in narrow_text
    full_text = _render(results_table(wide, width=400), 400)
    assert "some_long_parameter_5" in full_text and "hidden" not in full_text
    assert "a:11111111" in full_text  # model keys as function:first 8 hash digits
