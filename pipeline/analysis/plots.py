"""Figures: how one is made and saved (headless pyplot, written atomically), and compare's plots of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.analysis.stats import batch_order
from pipeline.analysis.summary import pivot
from pipeline.core.files import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write `fig` to `path` atomically (PNG without a timestamp, so identical data give identical bytes)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    pyplot().close(fig)


LINE_STYLES = ["-", "--", ":", "-."]


def plot_curves(cell_curves: pd.DataFrame, path: Path) -> None:
    """Each cell's mean validation loss and accuracy per epoch, with the range over seeds as a band."""
    plt = pyplot()
    colors = plt.get_cmap("tab10").colors
    optimizers = sorted(cell_curves["optimizer"].unique())
    batches = sorted(cell_curves["batch_size"].unique(), key=batch_order)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for (cell, optimizer, batch), curve in cell_curves.groupby(["cell", "optimizer", "batch_size"], sort=True):
        color = colors[optimizers.index(optimizer) % len(colors)]
        style = LINE_STYLES[batches.index(batch) % len(LINE_STYLES)]
        for ax, metric in zip(axes, ("val_loss", "val_accuracy"), strict=True):
            ax.plot(curve["epoch"], curve[f"{metric}_mean"], color=color, linestyle=style, marker="o", ms=3)
            ax.fill_between(curve["epoch"], curve[f"{metric}_min"], curve[f"{metric}_max"], color=color, alpha=0.12)
        axes[1].lines[-1].set_label(cell)
    axes[0].set(xlabel="epoch", ylabel="validation loss", title="Validation loss (mean over seeds, band = range)")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy (mean, band = range)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2, title="colour = optimizer, line = batch size", title_fontsize=7)
    save_figure(fig, path)


def plot_heatmap(cells: pd.DataFrame, path: Path) -> None:
    """Mean test accuracy per cell (rows: optimizer and other settings, columns: batch size) with its interval."""
    plt = pyplot()
    means, lows, highs = pivot(cells, "mean"), pivot(cells, "ci95_low"), pivot(cells, "ci95_high")
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(means.columns), 1.2 + 0.8 * len(means.index)))
    image = ax.imshow(means.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    for i in range(len(means.index)):
        for j in range(len(means.columns)):
            mean, low = means.iat[i, j], lows.iat[i, j]
            label = "no run" if pd.isna(mean) else f"{mean:.4f}"
            label += "" if pd.isna(low) else f"\n[{low:.4f}, {highs.iat[i, j]:.4f}]"
            ax.text(j, i, label, ha="center", va="center", color="w", fontsize=8)
    ax.set(xticks=range(len(means.columns)), yticks=range(len(means.index)), xlabel="batch size")
    ax.set(ylabel=means.index.name)
    ax.set_xticklabels(means.columns)
    ax.set_yticklabels(means.index)
    ax.set_title("Mean test accuracy [95 % interval] over seeds")
    fig.colorbar(image, ax=ax)
    save_figure(fig, path)


def plot_accuracy_vs_time(table: pd.DataFrame, path: Path) -> None:
    """Test accuracy against training time, one point per finished run (an MLflow artifact only)."""
    plt = pyplot()
    colors = plt.get_cmap("tab10").colors
    optimizers = sorted(table["optimizer"].dropna().unique())
    done = table.dropna(subset=["test_accuracy", "train_seconds"])
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for optimizer, group in done.groupby("optimizer"):
        color = colors[optimizers.index(optimizer) % len(colors)]
        ax.scatter(group["train_seconds"], group["test_accuracy"], color=color, s=30, label=optimizer)
    ax.set(xlabel="training time (s)", ylabel="test accuracy", title="Test accuracy vs training time", xscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
