"""Compare stage: summarise one finished sweep, noise-aware, into tables, plots and the champion.

Which sweep: `compare.parent_run_id=<id>` names one; run by DVC (the compare stage) it is
the sweep stage's (`<mlruns_dir>/stages/sweep.json`); by hand, the sweep started last in
this project. A sweep that did not finish is refused: no winner from a partial sweep.
It writes `<reports_dir>/sweep/` as one unit (all files new, or all as they were):

- `runs.csv` / `runs.md`: one row per run, by name (and the cells table);
- `cells.csv`, `pivot.csv`: per cell over seeds: n, mean, std and 95 % interval of the
  test accuracy, the mean validation accuracy, the verdict (pivot: the means);
- `summary.json` (a DVC metric): the cells, the `winner` (chosen on validation), each
  cell's comparison with it (`pipeline.analysis.stats`), each cell's time to the
  `compare.target` validation accuracy, the fastest cell in seconds and the cells its
  seeds cannot tell from it, the cell with the fewest steps, how the steps scale with
  the batch size (`pipeline.analysis.scaling`), the `answer`, the machine, and the
  `settings` of its finished runs (data, network, training; a value that differs among
  them as the values it takes): what makes another sweep comparable with it;
- `curves.csv`, `cell_curves.csv` (for `dvc plots`), `curves.png`, `heatmap.png`;
- `report.html`: all of it as one self-contained page (`pipeline.analysis.report`).

The parent run gets all of these under `comparison/`, plus what is not a DVC output
(run ids, timings, `accuracy_vs_time.png`), the aggregates as metrics, and the
champion (`pipeline.analysis.registry`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.analysis import plots, report, scaling, summary
from pipeline.analysis.stats import NOT_SHOWN, Cell, aggregate, compare_with_winner
from pipeline.core.app import stage_main
from pipeline.core.env import DVC_STAGE
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_json, write_text, write_together
from pipeline.core.paths import SWEEP_REPORTS, project_paths
from pipeline.core.store import latest_sweep, setup_tracking, tracking_uri

log = logging.getLogger(__name__)


def sweep_to_compare(cfg: DictConfig) -> str:
    """The parent run id: named, else the sweep stage's record under DVC, else the sweep started last."""
    if cfg.compare.parent_run_id:
        return str(cfg.compare.parent_run_id)
    paths = project_paths(cfg)
    how = (
        "run a sweep first (dvc repro sweep, or python -m pipeline.sweep), or name one with compare.parent_run_id=<id>"
    )
    if os.environ.get(DVC_STAGE) == "compare":
        record = paths.sweep_record
        if not record.is_file():
            raise PipelineError(f"No sweep record at {record}: {how}.")
    else:
        latest = latest_sweep(paths)
        if latest is None:
            raise PipelineError(f"No sweep record at {paths.sweep_records}/<parent run id>.json: {how}.")
        return str(latest["parent_run_id"])
    try:
        return str(json.loads(record.read_text())["parent_run_id"])
    except (OSError, ValueError, KeyError) as err:
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
            "Rerun the sweep (dvc repro sweep, or python -m pipeline.sweep)."
        )
    return parent


def compare_sweep(cfg: DictConfig) -> dict[str, Any]:
    """Summarise the sweep into `<reports_dir>/sweep/` and its parent run; return the summary."""
    from mlflow.tracking import MlflowClient

    parent_run_id = sweep_to_compare(cfg)
    setup_tracking(cfg)
    client = MlflowClient()
    parent = finished_parent(client, parent_run_id, tracking_uri(cfg))
    table, curves, settings = summary.collect_runs(client, parent)
    alpha = float(cfg.compare.alpha)
    cells = aggregate(table)
    with tempfile.TemporaryDirectory() as tmp:
        correct = summary.load_correctness(client, table, Path(tmp))
    comparisons = compare_with_winner(table, cells, alpha, correct or None)
    target = float(cfg.compare.target)
    times = summary.time_to_target(table, target)
    text = summary.answer(cells, comparisons, alpha, paired=bool(correct)) + " " + summary.target_answer(times, target)
    noise = summary.noise_scales(table)
    noise_at_target = summary.noise_scales(table, "noise_scale_at_target")
    frame = summary.cells_frame(cells, comparisons, times, noise, noise_at_target)
    mean_curves = summary.cell_curves(curves, table)
    finished = int((table["status"] == "FINISHED").sum())
    tags = parent.data.tags
    result = {
        "sweep": parent.info.run_name,
        "runs": len(table),
        "finished": finished,
        "failed": len(table) - finished,
        "metric": "test_accuracy",
        "selected_on": "final_val_accuracy",
        "test": (
            f"Welch's two-sided t-test over seeds{' and a paired t-test over test images' if correct else ''} "
            f"against the winner, Holm-corrected, alpha {alpha:g}; interval: Student t 95 %"
        ),
        "machine": {k: tags.get(k, "unknown") for k in ("cpu.model", "cpu.vector_extensions", "cpu.count")},
        "settings": settings,  # of its finished runs: another sweep is comparable only with the same
        "cells": [c.as_dict() for c in cells],
        "winner": cells[0].as_dict() if cells else None,
        "comparisons": comparisons,
        "tied_with": [c for c in comparisons if c["verdict"] == NOT_SHOWN],
        # Time to result: when each cell's seeds first reached `target` validation accuracy (median, share).
        "target": target,
        "time_to_target": times,
        "fastest_to_target": summary.quickest(times),
        "as_fast_as_fastest": summary.as_fast_as_fastest(times),  # their seeds' seconds overlap the fastest's
        "fewest_steps_to_target": summary.quickest(times, "median_steps"),
        # The gradient noise scale B_simple per cell: the median over seeds of each run's last estimate.
        "noise_scale": noise,
        # ... and of the estimate at the end of the epoch in which each run reached the target.
        "noise_scale_at_target": noise_at_target,
        # Steps to the target against batch size, per setting: perfect scaling, the critical batch size.
        "scaling": scaling.scaling(frame),
        "answer": text,
        # The same per cell as a mapping: `dvc metrics show` shows mappings, not lists.
        "by_cell": {
            row.cell: {
                "n": row.n,
                "mean": row.mean,
                "ci95_low": row.ci95_low,
                "ci95_high": row.ci95_high,
                "val_mean": row.val_mean,
                "tied_with_winner": row.verdict == NOT_SHOWN,
            }
            for row in frame.itertuples()
        },
    }
    if "optuna.study" in tags:
        from pipeline.sweeps.search import importances

        result["importance"] = importances(tags["optuna.study"], tags["optuna.storage"], parent.info.run_id)
        result["answer"] = text = (
            text
            + " Parameter importance (fANOVA): "
            + (", ".join(f"{k} {v:.2f}" for k, v in result["importance"].items()) or "too few finished trials")
        )
    paths = project_paths(cfg)
    published = table[summary.RUN_COLUMNS]
    figures = Path(tempfile.mkdtemp(prefix=".compare-"))  # drawn once: written as files and inlined in the page
    plots.plot_curves(mean_curves, figures / "curves.png")
    plots.plot_heatmap(frame, figures / "heatmap.png")
    settings = {"sweep.overrides": tags.get("sweep.overrides", ""), "sweep.launcher": tags.get("sweep.launcher", "")}
    page = report.render(result, frame, figures / "heatmap.png", figures / "curves.png", settings)
    writers = {
        "runs.csv": lambda p: write_text(p, published.to_csv(index=False)),
        "cells.csv": lambda p: write_text(p, frame.to_csv(index=False)),
        "pivot.csv": lambda p: write_text(p, summary.pivot(frame).to_csv() if len(frame) else ""),
        "curves.csv": lambda p: write_text(p, curves.drop(columns=["run_id", "epoch_seconds"]).to_csv(index=False)),
        "cell_curves.csv": lambda p: write_text(p, mean_curves.to_csv(index=False)),
        "runs.md": lambda p: write_text(p, summary.markdown(table, frame, text)),
        "curves.png": lambda p: shutil.copyfile(figures / "curves.png", p),
        "heatmap.png": lambda p: shutil.copyfile(figures / "heatmap.png", p),
        "report.html": lambda p: write_text(p, page),
        "summary.json": lambda p: write_json(p, result),
    }
    assert set(writers) == set(SWEEP_REPORTS)
    try:
        write_together({paths.sweep_report(name): write for name, write in writers.items()})
    finally:
        shutil.rmtree(figures, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        extra = {
            "run_ids.csv": lambda p: write_text(p, table[["run_name", "run_id", "cell", "status"]].to_csv(index=False)),
            "timing.csv": lambda p: write_text(
                p, table[["run_name", "cell", "seed", "train_seconds", "epoch_seconds"]].to_csv(index=False)
            ),
            "accuracy_vs_time.png": lambda p: plots.plot_accuracy_vs_time(table, p),
        }
        for name, write in extra.items():
            write(Path(tmp) / name)
        for path in [*(paths.sweep_report(name) for name in writers), *(Path(tmp) / name for name in extra)]:
            client.log_artifact(parent.info.run_id, str(path), artifact_path="comparison")
    log_aggregates(client, parent.info.run_id, cells, comparisons, result.get("importance", {}))
    champion = None
    if cfg.compare.register:
        from pipeline.analysis.registry import register_champion

        champion = register_champion(cfg, client, parent, table, cells)
    log.info("Sweep %s: %d runs (%d finished)\n%s", parent.info.run_name, len(table), finished,
             summary.markdown(table, frame, text))  # fmt: skip
    return {
        **result,
        "parent_run_id": parent.info.run_id,
        "table": table,
        "cells_table": frame,
        "curves": curves,
        "champion": champion,
    }


def log_aggregates(
    client: Any, run_id: str, cells: list[Cell], comparisons: list[dict], importance: dict[str, float]
) -> None:
    """Each cell's n, mean and interval (and a search's parameter importances) as parent-run metrics."""
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(f"importance.{name}", float(value), 0, 0) for name, value in importance.items()]
    for cell in cells:
        values = {"n": cell.n, "mean": cell.mean, "ci95_low": cell.ci95[0], "ci95_high": cell.ci95[1]}
        metrics += [Metric(f"cell.{cell.cell}.test_accuracy_{k}", float(v), 0, 0) for k, v in values.items()]
        metrics.append(Metric(f"cell.{cell.cell}.val_accuracy_mean", float(cell.val_mean), 0, 0))
    tags = [RunTag("winner", cells[0].cell)] if cells else []
    tags.append(RunTag("tied_with", ",".join(c["cell"] for c in comparisons if c["verdict"] == NOT_SHOWN)))
    client.log_batch(run_id, metrics=metrics, tags=tags)


main = stage_main(compare_sweep)  # python -m pipeline.compare [compare.parent_run_id=<id>]

if __name__ == "__main__":
    main()
