"""Report plots from synthetic DataFrames: each writes a non-empty PNG; bad input is rejected."""

import numpy as np
import pandas as pd
import pytest

from sysid import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def neurons():
    rng = np.random.default_rng(0)
    n = 40
    cortex = rng.uniform(0, 500, size=(n, 2))
    return pd.DataFrame(
        {
            "mu_x": cortex[:, 0] / 250 - 1,  # retinotopy: RF position follows the cortical position
            "mu_y": cortex[:, 1] / 250 - 1,
            "cortex_x": cortex[:, 0],
            "cortex_y": cortex[:, 1],
            "correlation": rng.uniform(0, 0.6, n),
            "oracle": rng.uniform(0.3, 0.9, n),
        }
    )


@pytest.fixture
def progress():
    epochs = np.arange(1, 7)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": 100.0 / epochs,
            "val_correlation": [np.nan, 0.1, np.nan, 0.2, np.nan, 0.25],
        }
    )


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_each_plot_writes_a_png(tmp_path, neurons, progress):
    report.plot_rf_positions(neurons, tmp_path / "rf.png")
    report.plot_learning_curves(progress, tmp_path / "lc.png")
    report.plot_correlation_histogram(neurons, tmp_path / "hist.png")
    report.plot_oracle_scatter(neurons, tmp_path / "oracle.png")
    for name in ("rf.png", "lc.png", "hist.png", "oracle.png"):
        assert _is_png(tmp_path / name), name


def test_rf_positions_has_cortex_panels_only_with_cortex_columns(neurons):
    with_cortex = report.plot_rf_positions(neurons)
    without = report.plot_rf_positions(neurons.drop(columns=["cortex_x", "cortex_y"]))
    # each panel has a colourbar axis beside it
    assert len(with_cortex.axes) == 6
    assert len(without.axes) == 2


def test_oracle_line_slope_is_the_fraction_oracle():
    scores = pd.DataFrame({"oracle": [0.2, 0.4, 0.8], "correlation": [0.1, 0.2, 0.4]})
    fig = report.plot_oracle_scatter(scores)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "fraction oracle 0.50" in labels


def test_learning_curves_skip_epochs_without_validation(progress):
    fig = report.plot_learning_curves(progress)
    corr_line = fig.axes[1].get_lines()[0]
    assert list(corr_line.get_xdata()) == [2, 4, 6]


def test_write_report_writes_every_plot(tmp_path, neurons, progress):
    paths = report.write_report(tmp_path / "out", neurons=neurons, progress=progress, title="demo")
    assert sorted(p.name for p in paths) == [
        "correlation_hist.png",
        "correlation_vs_oracle.png",
        "learning_curves.png",
        "rf_positions.png",
    ]
    assert all(_is_png(p) for p in paths)


def test_write_report_skips_oracle_plot_without_oracle(tmp_path, neurons):
    paths = report.write_report(tmp_path, neurons=neurons.assign(oracle=np.nan))
    assert "correlation_vs_oracle.png" not in {p.name for p in paths}
    assert "rf_positions.png" in {p.name for p in paths}


def test_missing_column_is_a_clear_error(neurons):
    with pytest.raises(ValueError, match="missing column.*mu_y"):
        report.plot_rf_positions(neurons.drop(columns=["mu_y"]))
    with pytest.raises(TypeError, match="DataFrame"):
        report.plot_correlation_histogram({"correlation": [0.1]})
    with pytest.raises(ValueError, match="empty"):
        report.plot_learning_curves(pd.DataFrame(columns=["epoch", "train_loss", "val_correlation"]))
