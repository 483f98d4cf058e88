"""Report plots for one trained model, drawn from plain DataFrames (no database needed).

Every function takes a :class:`pandas.DataFrame`, draws with matplotlib's Agg backend (no display
needed) and writes a PNG when given a path. :func:`write_report` draws them all into a folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "plot_correlation_histogram",
    "plot_learning_curves",
    "plot_mei_grid",
    "plot_oracle_scatter",
    "plot_rf_positions",
    "write_report",
]


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily: importing this module stays cheap)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; available: {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{what}: the DataFrame is empty")


def _finish(fig: Any, path: str | Path | None) -> Any:
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        _pyplot().close(fig)
    return fig


def plot_rf_positions(
    neurons: pd.DataFrame,
    path: str | Path | None = None,
    color: str = "correlation",
    cortex: tuple[str, str] = ("cortex_x", "cortex_y"),
    title: str = "",
) -> Any:
    """Learned receptive-field positions, coloured by a score, and mapped over the cortex.

    Args:
        neurons: one row per neuron with columns ``mu_x``, ``mu_y`` (grid units in [-1, 1]; x along
            the image width, y along its height) and ``color``; with the two ``cortex`` columns
            (cortical x/y positions, µm) two more panels show ``mu_x`` and ``mu_y`` over the cortex
            (retinotopy).
        path: where to write the PNG (the figure is closed); None returns the open figure.
        color: column that colours the RF-position scatter (e.g. per-neuron correlation).
        cortex: names of the cortical x and y columns; ignored when absent or all NaN.
        title: a title above the panels.

    Returns:
        The matplotlib figure.
    """
    _require(neurons, ["mu_x", "mu_y", color], "plot_rf_positions")
    plt = _pyplot()
    has_cortex = all(c in neurons.columns for c in cortex) and neurons[list(cortex)].notna().all(axis=1).any()
    n_panels = 3 if has_cortex else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 4.2), squeeze=False)
    ax = axes[0, 0]
    points = ax.scatter(neurons["mu_x"], neurons["mu_y"], c=neurons[color], cmap="viridis", s=12)
    fig.colorbar(points, ax=ax, label=color)
    ax.set(xlim=(-1.05, 1.05), ylim=(1.05, -1.05), xlabel="mu_x (image width)", ylabel="mu_y (image height)")
    ax.set_title("receptive-field positions")
    ax.set_aspect("equal")
    if has_cortex:
        cx, cy = cortex
        for ax, column in zip(axes[0, 1:], ("mu_x", "mu_y")):
            points = ax.scatter(
                neurons[cx], neurons[cy], c=neurons[column], cmap="coolwarm", s=12, vmin=-1, vmax=1
            )
            fig.colorbar(points, ax=ax, label=column)
            ax.set(xlabel=f"{cx} (µm)", ylabel=f"{cy} (µm)")
            ax.set_title(f"{column} over cortex")
            ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title, fontsize="medium")
    return _finish(fig, path)


def plot_learning_curves(
    progress: pd.DataFrame,
    path: str | Path | None = None,
    group: str | None = None,
    title: str = "",
) -> Any:
    """Training loss and validation correlation per epoch.

    Args:
        progress: one row per epoch with columns ``epoch``, ``train_loss`` and
            ``val_correlation`` (NaN in epochs without validation).
        path: where to write the PNG; None returns the open figure.
        group: optional column naming the run of each row (several models on one plot).
        title: a title above the panels.

    Returns:
        The matplotlib figure.
    """
    _require(progress, ["epoch", "train_loss", "val_correlation"], "plot_learning_curves")
    plt = _pyplot()
    fig, (ax_loss, ax_corr) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    groups = progress.groupby(group, sort=False) if group else [("", progress)]
    for name, rows in groups:
        rows = rows.sort_values("epoch")
        ax_loss.plot(rows["epoch"], rows["train_loss"], marker=".", label=str(name) or None)
        validated = rows.dropna(subset=["val_correlation"])
        ax_corr.plot(validated["epoch"], validated["val_correlation"], marker="o", label=str(name) or None)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_corr.set(xlabel="epoch", ylabel="correlation", title="validation correlation")
    if group:
        ax_corr.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return _finish(fig, path)


def plot_correlation_histogram(
    scores: pd.DataFrame,
    path: str | Path | None = None,
    column: str = "correlation",
    bins: int = 30,
    title: str = "",
) -> Any:
    """Histogram of per-neuron correlations, with the mean marked.

    Args:
        scores: one row per neuron with ``column``.
        path: where to write the PNG; None returns the open figure.
        column: the per-neuron score to histogram.
        bins: number of histogram bins.
        title: a title above the plot.

    Returns:
        The matplotlib figure.
    """
    _require(scores, [column], "plot_correlation_histogram")
    values = scores[column].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"plot_correlation_histogram: column {column!r} has no finite values")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(values.mean(), color="k", linestyle="--", label=f"mean {values.mean():.3f}")
    ax.set(xlabel=column, ylabel="neurons", title=title or f"per-neuron {column} (n={values.size})")
    ax.legend()
    return _finish(fig, path)


def plot_oracle_scatter(
    scores: pd.DataFrame,
    path: str | Path | None = None,
    x: str = "oracle",
    y: str = "correlation",
    title: str = "",
) -> Any:
    """Model correlation against oracle correlation per neuron, with the fraction-oracle line.

    The fraction oracle is the least-squares slope through the origin of ``y`` against ``x``.

    Args:
        scores: one row per neuron with columns ``x`` (oracle correlation) and ``y`` (model
            correlation on the same tier).
        path: where to write the PNG; None returns the open figure.
        x: oracle column.
        y: model-correlation column.
        title: a title above the plot.

    Returns:
        The matplotlib figure.
    """
    _require(scores, [x, y], "plot_oracle_scatter")
    both = scores[[x, y]].astype(float).dropna()
    if both.empty:
        raise ValueError(f"plot_oracle_scatter: no neuron has both {x!r} and {y!r}")
    ox, my = both[x].to_numpy(), both[y].to_numpy()
    denominator = float(ox @ ox)
    slope = float(ox @ my) / denominator if denominator > 0 else float("nan")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.scatter(ox, my, s=10, alpha=0.7)
    low = min(0.0, ox.min(), my.min())
    high = max(1.0, ox.max(), my.max())
    ax.plot([low, high], [low, high], color="grey", linestyle=":", label="identity")
    if np.isfinite(slope):
        ax.plot(
            [low, high], [slope * low, slope * high], color="tab:red", label=f"fraction oracle {slope:.2f}"
        )
    ax.set(xlabel=f"{x} correlation", ylabel=f"model {y}", title=title or "model vs oracle")
    ax.set_aspect("equal")
    ax.legend(fontsize="small")
    return _finish(fig, path)


def plot_mei_grid(
    meis: pd.DataFrame,
    path: str | Path | None = None,
    n: int = 16,
    columns: int = 4,
    title: str = "",
) -> Any:
    """The MEIs of the best-predicted neurons in a grid, each titled with its activation and correlation.

    Args:
        meis: one row per neuron: ``image`` ((C, H, W) or (H, W) array), ``correlation`` (the
            model's test correlation of the neuron), ``activation``, ``unit_id``; optionally
            ``relative_activation`` and ``data_key``.
        path: PNG to write (None: only return the figure).
        n: at most this many neurons, the highest ``correlation`` first.
        columns: panels per row.
        title: a title above the grid.

    Every panel uses a grey scale symmetric about 0 (the data's mean grey), the same for all panels,
    so contrast is comparable across neurons (all MEIs of one method have the same norm).
    """
    _require(meis, ["image", "correlation", "activation", "unit_id"], "MEI grid")
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be positive, got n={n}, columns={columns}")
    plt = _pyplot()
    rows = meis.sort_values("correlation", ascending=False, na_position="last").head(n)
    images = [np.asarray(image, dtype=np.float64) for image in rows["image"]]
    images = [image[0] if image.ndim == 3 else image for image in images]  # the first (luminance) channel
    limit = max(float(np.abs(image).max()) for image in images) or 1.0
    ncols = min(columns, len(images))
    nrows = int(np.ceil(len(images) / ncols))
    height, width = images[0].shape
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows * height / width + 0.6 * nrows), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, (_, row) in zip(axes.ravel(), images, rows.iterrows()):
        ax.imshow(image, cmap="gray", vmin=-limit, vmax=limit, interpolation="nearest")
        relative = row.get("relative_activation")
        activation = f"act {row['activation']:.2f}" + (
            f" ({relative:.1f}x mean)" if relative is not None and np.isfinite(relative) else ""
        )
        ax.set_title(f"unit {int(row['unit_id'])}  r={row['correlation']:.2f}\n{activation}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _finish(fig, path)


def write_report(
    out_dir: str | Path,
    neurons: pd.DataFrame | None = None,
    progress: pd.DataFrame | None = None,
    title: str = "",
    correlation: str = "correlation",
    oracle: str = "oracle",
    meis: pd.DataFrame | None = None,
    meis_title: str = "",
) -> list[Path]:
    """Write every plot the data allow into ``out_dir``.

    Args:
        out_dir: folder for the PNGs (created when missing).
        neurons: one row per neuron: ``mu_x``, ``mu_y``, ``correlation`` and optionally
            ``cortex_x``/``cortex_y`` and ``oracle`` (columns named by ``correlation``/``oracle``).
        progress: one row per epoch: ``epoch``, ``train_loss``, ``val_correlation``.
        title: a title for every plot (e.g. the model's key).
        correlation: per-neuron correlation column of ``neurons``.
        oracle: per-neuron oracle-correlation column of ``neurons``.
        meis: one row per neuron of an ensemble's MEIs (see :func:`plot_mei_grid`), or None.
        meis_title: the MEI grid's title (which ensemble, method and seed).

    Returns:
        Paths of the PNGs written: ``rf_positions.png`` (needs mu_x/mu_y), ``learning_curves.png``,
        ``correlation_hist.png``, ``correlation_vs_oracle.png`` (needs finite oracle values),
        ``meis.png`` (with ``meis``).
    """
    out = Path(out_dir)
    written: list[Path] = []
    if progress is not None and len(progress):
        written.append(out / "learning_curves.png")
        plot_learning_curves(progress, written[-1], title=title)
    if neurons is not None and len(neurons) and correlation in neurons.columns:
        if neurons[correlation].notna().any():
            written.append(out / "correlation_hist.png")
            plot_correlation_histogram(neurons, written[-1], column=correlation, title=title)
        if {"mu_x", "mu_y"} <= set(neurons.columns) and neurons[["mu_x", "mu_y"]].notna().any(axis=None):
            written.append(out / "rf_positions.png")
            plot_rf_positions(neurons, written[-1], color=correlation, title=title)
        if oracle in neurons.columns and neurons[[oracle, correlation]].notna().all(axis=1).any():
            written.append(out / "correlation_vs_oracle.png")
            plot_oracle_scatter(neurons, written[-1], x=oracle, y=correlation, title=title)
    if meis is not None and len(meis):
        written.append(out / "meis.png")
        plot_mei_grid(meis, written[-1], title=meis_title)
    return written
