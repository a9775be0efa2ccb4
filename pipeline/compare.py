"""Compare stage: summarise a sweep's child runs into tables and plots, and log them.

`python -m pipeline.compare` (the latest sweep) or `... compare.parent_run_id=<id>`.
Reads the children with `mlflow.search_runs` and their metric histories, writes to
`<reports_dir>/sweep/`: `runs.csv` / `runs.md` (one row per run, plus the pivot of test
accuracy by optimizer x batch size), `pivot.csv`, `summary.json` (the winner), `curves.csv`
(every run's validation curves, long format, for `dvc plots`), and `curves.png`, `heatmap.png`,
`accuracy_vs_time.png`. The same files are logged to the parent run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import project_path
from pipeline.errors import PipelineError, exit_on_pipeline_error
from pipeline.evaluate import pyplot
from pipeline.sweep import SWEEP_ROLE_TAG

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "run_name",
    "optimizer",
    "batch_size",
    "learning_rate",
    "final_val_accuracy",
    "best_val_accuracy",
    "test_accuracy",
    "test_loss",
    "epoch_seconds",
    "train_seconds",
    "status",
    "failure_reason",
]
LINE_STYLES = ["-", "--", ":", "-."]


def batch_order(value: str) -> float:
    """Sort key for batch sizes: numbers ascending, `full` last."""
    return float(value) if str(value).isdigit() else math.inf


def find_sweep(client, experiment_id: str, parent_run_id: str | None):
    """The requested parent run, or the latest sweep of the experiment."""
    if parent_run_id:
        try:
            return client.get_run(parent_run_id)
        except Exception as err:
            raise PipelineError(f"compare.parent_run_id={parent_run_id!r}: no such run in the store ({err})") from err
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_ROLE_TAG}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise PipelineError(
            "No sweep found in this MLflow store: run one first, e.g. "
            "python -m pipeline.experiment -m +sweep=optimizers_x_batch_sizes"
        )
    return runs[0]


def collect_runs(client, parent) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep's child runs as a table, and their per-epoch validation curves (long format)."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="pandas",
    )
    if runs.empty:
        raise PipelineError(f"Sweep {parent.info.run_id} ({parent.info.run_name}) has no child runs to compare.")

    def column(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series([np.nan] * len(runs), index=runs.index)

    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "run_name": column("tags.mlflow.runName"),
            "optimizer": column("params.optimizer.name"),
            "batch_size": column("params.train.batch_size"),
            "learning_rate": pd.to_numeric(column("params.optimizer.learning_rate"), errors="coerce"),
            "final_val_accuracy": column("metrics.val_accuracy"),
            "test_accuracy": column("metrics.test_accuracy"),
            "test_loss": column("metrics.test_loss"),
            "train_seconds": column("metrics.train_seconds"),
            "status": runs["status"],
            "failure_reason": column("tags.failure_reason").astype(object).fillna(""),
        }
    )
    curves = []
    for row in table.itertuples():
        history = {
            name: {m.step: m.value for m in client.get_metric_history(row.run_id, name)}
            for name in ("val_loss", "val_accuracy", "epoch_seconds")
        }
        for epoch in sorted(history["val_loss"]):
            curves.append(
                {
                    "run_name": row.run_name,
                    "optimizer": row.optimizer,
                    "batch_size": row.batch_size,
                    "epoch": epoch,
                    **{name: values.get(epoch, np.nan) for name, values in history.items()},
                }
            )
    curves = pd.DataFrame(
        curves, columns=["run_name", "optimizer", "batch_size", "epoch", "val_loss", "val_accuracy", "epoch_seconds"]
    )
    by_run = curves.groupby("run_name")
    table["best_val_accuracy"] = table["run_name"].map(by_run["val_accuracy"].max())
    # The median epoch: the first one also pays for compiling the step.
    table["epoch_seconds"] = table["run_name"].map(by_run["epoch_seconds"].median())
    table = table.sort_values(["test_accuracy", "run_name"], ascending=[False, True], na_position="last")
    return table[["run_id", *TABLE_COLUMNS]].reset_index(drop=True), curves


def pivot_accuracy(table: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy by optimizer (rows) x batch size (columns)."""
    pivot = table.pivot_table(index="optimizer", columns="batch_size", values="test_accuracy", aggfunc="max")
    return pivot.reindex(columns=sorted(pivot.columns, key=batch_order))


def winner_line(table: pd.DataFrame) -> str:
    """One sentence naming the best finished run and its settings."""
    finished = table[(table["status"] == "FINISHED") & table["test_accuracy"].notna()]
    if finished.empty:
        return "No run finished: there is no winner."
    best = finished.iloc[0]
    return (
        f"Winner: {best.run_name} (optimizer {best.optimizer}, batch size {best.batch_size}, "
        f"learning rate {best.learning_rate:g}) with test accuracy {best.test_accuracy:.4f}, "
        f"test loss {best.test_loss:.4f}, {best.epoch_seconds:.2f} s per epoch."
    )


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def style_maps(table: pd.DataFrame) -> tuple[dict, dict]:
    """Colour per optimizer and line style per batch size, shared by every plot."""
    plt = pyplot()
    colors = plt.get_cmap("tab10").colors
    optimizers = sorted(table["optimizer"].dropna().unique())
    batches = sorted(table["batch_size"].dropna().unique(), key=batch_order)
    return (
        {o: colors[i % len(colors)] for i, o in enumerate(optimizers)},
        {b: LINE_STYLES[i % len(LINE_STYLES)] for i, b in enumerate(batches)},
    )


def plot_curves(table: pd.DataFrame, curves: pd.DataFrame, path: Path) -> None:
    """Validation loss and accuracy of every run on shared axes."""
    plt = pyplot()
    color, style = style_maps(table)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for name, run in curves.groupby("run_name", sort=True):
        first = run.iloc[0]
        kwargs = {"color": color[first.optimizer], "linestyle": style[first.batch_size], "marker": "o", "ms": 3}
        axes[0].plot(run["epoch"], run["val_loss"], label=name, **kwargs)
        axes[1].plot(run["epoch"], run["val_accuracy"], label=name, **kwargs)
    axes[0].set(xlabel="epoch", ylabel="validation loss", title="Validation loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2, title="colour = optimizer, line = batch size", title_fontsize=7)
    _save(fig, path)


def plot_heatmap(pivot: pd.DataFrame, path: Path) -> None:
    """Test accuracy over optimizer x batch size."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(pivot.columns), 1.2 + 0.7 * len(pivot.index)))
    image = ax.imshow(pivot.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    for i in range(len(pivot.index)):
        for j in range(len(pivot.columns)):
            value = pivot.iat[i, j]
            ax.text(j, i, "failed" if pd.isna(value) else f"{value:.4f}", ha="center", va="center", color="w")
    ax.set(xticks=range(len(pivot.columns)), yticks=range(len(pivot.index)), xlabel="batch size", ylabel="optimizer")
    ax.set_xticklabels(pivot.columns)
    ax.set_yticklabels(pivot.index)
    ax.set_title("Test accuracy")
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def plot_accuracy_vs_time(table: pd.DataFrame, path: Path) -> None:
    """Test accuracy against training time, one point per finished run."""
    plt = pyplot()
    color, _ = style_maps(table)
    done = table.dropna(subset=["test_accuracy", "train_seconds"])
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for row in done.itertuples():
        ax.scatter(row.train_seconds, row.test_accuracy, color=color[row.optimizer], s=40)
        ax.annotate(
            row.run_name, (row.train_seconds, row.test_accuracy), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    ax.set(xlabel="training time (s)", ylabel="test accuracy", title="Test accuracy vs training time", xscale="log")
    ax.grid(alpha=0.3)
    _save(fig, path)


def markdown_table(table: pd.DataFrame, pivot: pd.DataFrame, winner: str) -> str:
    """The run table and the pivot as Markdown."""
    shown = table[TABLE_COLUMNS].copy()
    return (
        f"{winner}\n\n"
        + shown.to_markdown(index=False, floatfmt=".4f")
        + "\n\nTest accuracy by optimizer x batch size:\n\n"
        + pivot.to_markdown(floatfmt=".4f")
        + "\n"
    )


def compare_sweep(cfg: DictConfig) -> dict:
    """Summarise a sweep into `<reports_dir>/sweep/` and its parent run; return the summary."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import setup_tracking

    experiment_id = setup_tracking(cfg)
    client = MlflowClient()
    parent = find_sweep(client, experiment_id, cfg.compare.parent_run_id)
    table, curves = collect_runs(client, parent)
    pivot = pivot_accuracy(table)
    winner = winner_line(table)

    out = project_path(cfg, "reports_dir") / "sweep"
    files = {
        "runs.csv": lambda p: write_text(p, table.to_csv(index=False)),
        "pivot.csv": lambda p: write_text(p, pivot.to_csv()),
        "curves.csv": lambda p: write_text(p, curves.to_csv(index=False)),
        "runs.md": lambda p: write_text(p, markdown_table(table, pivot, winner)),
        "curves.png": lambda p: plot_curves(table, curves, p),
        "heatmap.png": lambda p: plot_heatmap(pivot, p),
        "accuracy_vs_time.png": lambda p: plot_accuracy_vs_time(table, p),
    }
    for name, write in files.items():
        write(out / name)
    finished = table[table["status"] == "FINISHED"]
    summary = {
        "parent_run_id": parent.info.run_id,
        "sweep": parent.info.run_name,
        "runs": len(table),
        "finished": len(finished),
        "failed": int((table["status"] != "FINISHED").sum()),
        "winner": winner,
        "best_test_accuracy": float(finished["test_accuracy"].max()) if len(finished) else None,
        "best_run": finished.iloc[0]["run_name"] if len(finished) else None,
    }
    write_json(out / "summary.json", summary)
    for name in [*files, "summary.json"]:
        client.log_artifact(parent.info.run_id, str(out / name), artifact_path="comparison")
    log.info(
        "Sweep %s: %d runs (%d finished)\n%s",
        parent.info.run_name,
        len(table),
        len(finished),
        markdown_table(table, pivot, winner),
    )
    log.info("%s", winner)
    return {**summary, "table": table, "pivot": pivot, "curves": curves}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Entry point: `python -m pipeline.compare [compare.parent_run_id=<id>]`."""
    with exit_on_pipeline_error():
        compare_sweep(cfg)


if __name__ == "__main__":
    main()
