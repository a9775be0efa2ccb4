"""Compare stage: summarise the sweep recorded in `sweep.json`, noise-aware, into tables and plots.

`python -m pipeline.compare` reads the parent run named by `<reports_dir>/sweep/sweep.json`
(the sweep stage's output; or `compare.parent_run_id=<id>`), refuses a sweep that did not
finish, and writes to `<reports_dir>/sweep/`:

- `runs.csv` / `runs.md`: one row per run, keyed by run id (and the cells table);
- `cells.csv`, `pivot.csv`: per optimizer x batch size, over seeds: n, mean, std and the
  95 % interval of the test accuracy (pivot: the means);
- `summary.json` (a DVC metric): the cells, the `winner` (best mean) and `tied_with`, the
  cells Welch's t-test cannot tell from the winner at level `compare.alpha`;
- `curves.csv` (every run's validation curves) and `cell_curves.csv` (each cell's mean
  and range per epoch, for `dvc plots`), `curves.png`, `heatmap.png`.

Timings (which vary between identical runs) are not DVC outputs: `timing.csv` and
`accuracy_vs_time.png` go to the parent run only, with everything above, under `comparison/`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from pipeline.app import stage_main
from pipeline.atomic import write_json, write_text
from pipeline.errors import PipelineError
from pipeline.paths import project_paths
from pipeline.plots import pyplot, save_figure
from pipeline.stats import Cell, aggregate, batch_order, tied_with_winner
from pipeline.tracking import child_runs, setup_tracking, tracking_uri

log = logging.getLogger(__name__)

RUN_COLUMNS = [
    "run_id",
    "run_name",
    "optimizer",
    "batch_size",
    "seed",
    "learning_rate",
    "final_val_accuracy",
    "best_val_accuracy",
    "test_accuracy",
    "test_loss",
    "status",
    "failure_reason",
]
LINE_STYLES = ["-", "--", ":", "-."]
CURVE_METRICS = ("val_loss", "val_accuracy", "epoch_seconds")


def recorded_parent(cfg: DictConfig) -> str:
    """The parent run id: `compare.parent_run_id`, else the one the sweep stage recorded."""
    if cfg.compare.parent_run_id:
        return str(cfg.compare.parent_run_id)
    record = project_paths(cfg).sweep_record
    try:
        return json.loads(record.read_text())["parent_run_id"]
    except FileNotFoundError as err:
        raise PipelineError(
            f"No sweep record at {record}: run a sweep first (dvc repro sweep, or python -m pipeline.experiment -m), "
            "or name one with compare.parent_run_id=<id>."
        ) from err
    except (ValueError, KeyError) as err:
        raise PipelineError(f"{record} is not a sweep record ({err}): rerun the sweep (dvc repro sweep).") from err


def finished_parent(client: Any, parent_run_id: str, uri: str) -> Any:
    """The sweep's parent run, refused unless the sweep finished."""
    try:
        parent = client.get_run(parent_run_id)
    except Exception as err:  # noqa: BLE001 - MLflow raises its own exception types
        raise PipelineError(
            f"Sweep parent run {parent_run_id!r} is not in the MLflow store {uri}: compare the sweep in the store "
            "that ran it (tracking.uri / MLFLOW_TRACKING_URI), or name another with compare.parent_run_id=<id>."
        ) from err
    status = parent.info.status
    if status != "FINISHED":
        reason = parent.data.tags.get("failure_reason", "")
        raise PipelineError(
            f"Sweep {parent.info.run_name} ({parent_run_id}) is {status}{': ' + reason if reason else ''}: "
            "it did not finish, so its runs answer no question and compare names no winner. "
            "Rerun the sweep (dvc repro sweep, or python -m pipeline.experiment -m)."
        )
    return parent


def collect_runs(client: Any, parent: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep's child runs as a table keyed by run id, and their per-epoch curves (long format)."""
    runs = child_runs(client, parent)
    if not runs:
        raise PipelineError(f"Sweep {parent.info.run_name} ({parent.info.run_id}) has no child runs to compare.")
    rows, curves = [], []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "optimizer": params.get("optimizer.name"),
            "batch_size": params.get("train.batch_size"),
            "seed": params.get("train.seed"),
            "learning_rate": pd.to_numeric(
                params.get("optimizer.effective_learning_rate", params.get("optimizer.learning_rate")), errors="coerce"
            ),
            "test_accuracy": metrics.get("test_accuracy", np.nan),
            "test_loss": metrics.get("test_loss", np.nan),
            "train_seconds": metrics.get("train_seconds", np.nan),
            "status": run.info.status,
            "failure_reason": run.data.tags.get("failure_reason", ""),
        }
        history = {
            name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)} for name in CURVE_METRICS
        }
        for epoch in sorted(history["val_accuracy"]):
            point = {name: values.get(epoch, np.nan) for name, values in history.items()}
            curves.append({k: row[k] for k in ("run_id", "run_name", "optimizer", "batch_size", "seed")} | point)
            curves[-1]["epoch"] = epoch
        accuracies = list(history["val_accuracy"].values())
        row["final_val_accuracy"] = history["val_accuracy"][max(history["val_accuracy"])] if accuracies else np.nan
        row["best_val_accuracy"] = max(accuracies) if accuracies else np.nan
        row["epoch_seconds"] = float(np.median(list(history["epoch_seconds"].values()) or [np.nan]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values(["test_accuracy", "run_name"], ascending=[False, True], na_position="last")
    columns = ["run_id", "run_name", "optimizer", "batch_size", "seed", "epoch", "val_loss", "val_accuracy"]
    curves = pd.DataFrame(curves, columns=[*columns, "epoch_seconds"])
    return table.reset_index(drop=True), curves


def cells_frame(cells: list[Cell]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "optimizer": c.optimizer,
                "batch_size": c.batch_size,
                "n": c.n,
                "mean": c.mean,
                "std": c.std,
                "ci95_low": c.ci95[0],
                "ci95_high": c.ci95[1],
            }
            for c in cells
        ],
        columns=["optimizer", "batch_size", "n", "mean", "std", "ci95_low", "ci95_high"],
    )


def pivot(cells: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """`value` by optimizer (rows) x batch size (columns)."""
    table = cells.pivot_table(index="optimizer", columns="batch_size", values=value, aggfunc="first")
    return table.reindex(columns=sorted(table.columns, key=batch_order))


def answer(cells: list[Cell], tied: list[dict], alpha: float) -> str:
    """The sweep's answer in one or two sentences, phrased by what the test can tell apart."""
    if not cells:
        return "No run finished: there is no winner."
    best = cells[0]
    text = (
        f"Best mean test accuracy: {best.label} {best.mean:.4f} "
        f"(95 % interval {best.ci95[0]:.4f}-{best.ci95[1]:.4f}, {best.n} seed(s))."
    )
    if tied:
        text += (
            f" Tied with it within noise (Welch's t-test, p >= {alpha:g}): " + ", ".join(t["cell"] for t in tied) + "."
        )
    else:
        text += f" Every other cell is worse at level {alpha:g} (Welch's t-test)."
    clearly = [c.label for c in cells[1:] if c.label not in {t["cell"] for t in tied}]
    if tied and clearly:
        text += f" Clearly worse: {', '.join(clearly)}."
    return text


def plot_curves(cell_curves: pd.DataFrame, path: Path) -> None:
    """Each cell's mean validation loss and accuracy per epoch, with the range over seeds as a band."""
    plt = pyplot()
    colors = plt.get_cmap("tab10").colors
    optimizers = sorted(cell_curves["optimizer"].unique())
    batches = sorted(cell_curves["batch_size"].unique(), key=batch_order)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for (optimizer, batch), cell in cell_curves.groupby(["optimizer", "batch_size"], sort=True):
        color = colors[optimizers.index(optimizer) % len(colors)]
        style = LINE_STYLES[batches.index(batch) % len(LINE_STYLES)]
        for ax, metric in zip(axes, ("val_loss", "val_accuracy"), strict=True):
            ax.plot(cell["epoch"], cell[f"{metric}_mean"], color=color, linestyle=style, marker="o", ms=3)
            ax.fill_between(cell["epoch"], cell[f"{metric}_min"], cell[f"{metric}_max"], color=color, alpha=0.12)
        axes[1].lines[-1].set_label(f"{optimizer}-bs{batch}")
    axes[0].set(xlabel="epoch", ylabel="validation loss", title="Validation loss (mean over seeds, band = range)")
    axes[0].set_yscale("log")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy (mean, band = range)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=7, ncol=2, title="colour = optimizer, line = batch size", title_fontsize=7)
    save_figure(fig, path)


def plot_heatmap(cells: pd.DataFrame, path: Path) -> None:
    """Mean test accuracy over optimizer x batch size, each cell annotated with its 95 % interval."""
    plt = pyplot()
    means, lows, highs = pivot(cells, "mean"), pivot(cells, "ci95_low"), pivot(cells, "ci95_high")
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(means.columns), 1.2 + 0.8 * len(means.index)))
    image = ax.imshow(means.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    for i in range(len(means.index)):
        for j in range(len(means.columns)):
            mean = means.iat[i, j]
            label = "no run" if pd.isna(mean) else f"{mean:.4f}\n[{lows.iat[i, j]:.4f}, {highs.iat[i, j]:.4f}]"
            ax.text(j, i, label, ha="center", va="center", color="w", fontsize=8)
    ax.set(xticks=range(len(means.columns)), yticks=range(len(means.index)), xlabel="batch size", ylabel="optimizer")
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


def cell_curves(curves: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max of each finished cell's validation curves per epoch."""
    finished = set(table.loc[table["status"] == "FINISHED", "run_id"])
    done = curves[curves["run_id"].isin(finished)]
    grouped = done.groupby(["optimizer", "batch_size", "epoch"])[["val_loss", "val_accuracy"]]
    stats = grouped.agg(["mean", "min", "max"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    stats = stats.reset_index()
    stats.insert(0, "cell", stats["optimizer"] + "-bs" + stats["batch_size"].astype(str))
    return stats


def markdown(table: pd.DataFrame, cells: pd.DataFrame, text: str) -> str:
    """The answer, the cells table and the run table as Markdown."""
    shown = cells.assign(
        interval=[f"{lo:.4f}-{hi:.4f}" for lo, hi in zip(cells.ci95_low, cells.ci95_high, strict=True)]
    )
    return (
        f"{text}\n\nTest accuracy per optimizer x batch size over seeds:\n\n"
        + shown[["optimizer", "batch_size", "n", "mean", "std", "interval"]].to_markdown(index=False, floatfmt=".4f")
        + "\n\nEvery run:\n\n"
        + table[RUN_COLUMNS].to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )


def compare_sweep(cfg: DictConfig) -> dict[str, Any]:
    """Summarise the recorded sweep into `<reports_dir>/sweep/` and its parent run; return the summary."""
    from mlflow.tracking import MlflowClient

    parent_run_id = recorded_parent(cfg)
    setup_tracking(cfg)
    client = MlflowClient()
    parent = finished_parent(client, parent_run_id, tracking_uri(cfg))
    table, curves = collect_runs(client, parent)
    alpha = float(cfg.compare.alpha)
    cells = aggregate(table)
    tied = tied_with_winner(table, cells, alpha)
    text = answer(cells, tied, alpha)
    frame = cells_frame(cells)
    mean_curves = cell_curves(curves, table)
    finished = int((table["status"] == "FINISHED").sum())
    summary = {
        "parent_run_id": parent.info.run_id,
        "sweep": parent.info.run_name,
        "runs": len(table),
        "finished": finished,
        "failed": len(table) - finished,
        "metric": "test_accuracy",
        "test": f"Welch's two-sided t-test against the winner, alpha {alpha:g}; interval: Student t 95 %",
        "cells": [c.as_dict() for c in cells],
        "winner": cells[0].as_dict() if cells else None,
        "tied_with": tied,
        "answer": text,
        # The same per cell as a mapping: `dvc metrics show` shows mappings, not lists.
        "by_cell": {
            c.label: {
                "n": c.n,
                "mean": c.mean,
                "ci95_low": c.ci95[0],
                "ci95_high": c.ci95[1],
                "tied_with_winner": c.label in {t["cell"] for t in tied},
            }
            for c in cells
        },
    }
    tags = parent.data.tags
    if "optuna.study" in tags:
        from pipeline.search import importances

        summary["importance"] = importances(tags["optuna.study"], tags["optuna.storage"], parent.info.run_id)
        summary["answer"] = text = (
            text
            + " Parameter importance (fANOVA): "
            + (", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()) or "too few finished trials")
        )
    out = project_paths(cfg).sweep_dir
    files = {
        "runs.csv": lambda p: write_text(p, table[RUN_COLUMNS].to_csv(index=False)),
        "cells.csv": lambda p: write_text(p, frame.to_csv(index=False)),
        "pivot.csv": lambda p: write_text(p, pivot(frame).to_csv() if len(frame) else ""),
        "curves.csv": lambda p: write_text(p, curves.drop(columns="epoch_seconds").to_csv(index=False)),
        "cell_curves.csv": lambda p: write_text(p, mean_curves.to_csv(index=False)),
        "runs.md": lambda p: write_text(p, markdown(table, frame, text)),
        "curves.png": lambda p: plot_curves(mean_curves, p),
        "heatmap.png": lambda p: plot_heatmap(frame, p),
        "summary.json": lambda p: write_json(p, summary),
    }
    for name, write in files.items():
        write(out / name)
    with tempfile.TemporaryDirectory() as tmp:
        timing = table[["run_id", "run_name", "optimizer", "batch_size", "seed", "train_seconds", "epoch_seconds"]]
        write_text(Path(tmp) / "timing.csv", timing.to_csv(index=False))
        plot_accuracy_vs_time(table, Path(tmp) / "accuracy_vs_time.png")
        for path in [*(out / name for name in files), Path(tmp) / "timing.csv", Path(tmp) / "accuracy_vs_time.png"]:
            client.log_artifact(parent.info.run_id, str(path), artifact_path="comparison")
    log_aggregates(client, parent.info.run_id, cells, tied, summary.get("importance", {}))
    from pipeline.registry import register_champion

    champion = register_champion(cfg, client, parent, table, cells)
    log.info(
        "Sweep %s: %d runs (%d finished)\n%s", parent.info.run_name, len(table), finished, markdown(table, frame, text)
    )
    return {**summary, "table": table, "cells_table": frame, "curves": curves, "champion": champion}


def log_aggregates(client: Any, run_id: str, cells: list[Cell], tied: list[dict], importance: dict[str, float]) -> None:
    """Each cell's n, mean and interval (and a search's parameter importances) as parent-run metrics."""
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(f"importance.{name}", float(value), 0, 0) for name, value in importance.items()]
    for cell in cells:
        for name, value in (
            ("n", cell.n),
            ("mean", cell.mean),
            ("ci95_low", cell.ci95[0]),
            ("ci95_high", cell.ci95[1]),
        ):
            metrics.append(Metric(f"cell.{cell.label}.test_accuracy_{name}", float(value), 0, 0))
    tags = [RunTag("winner", cells[0].label)] if cells else []
    tags.append(RunTag("tied_with", ",".join(t["cell"] for t in tied)))
    client.log_batch(run_id, metrics=metrics, tags=tags)


main = stage_main(compare_sweep)  # python -m pipeline.compare [compare.parent_run_id=<id>]

if __name__ == "__main__":
    main()
