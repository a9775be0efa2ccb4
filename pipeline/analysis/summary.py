"""A sweep's runs as tables: what compare reads from MLflow, aggregates per cell and writes down.

Committed reports name runs by name (unique within a sweep), never by MLflow id: ids
exist only in the store that ran them, so they go to the parent run's artifacts instead.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.analysis.stats import NOT_SHOWN, NOT_TESTABLE, Cell, batch_order
from pipeline.core.errors import PipelineError

RUN_COLUMNS = [
    "run_name",
    "cell",
    "optimizer",
    "batch_size",
    "seed",
    "learning_rate",
    "final_val_accuracy",
    "best_val_accuracy",
    "test_accuracy",
    "test_loss",
    "noise_scale",
    "noise_scale_at_target",
    "status",
    "failure_reason",
]
CURVE_METRICS = ("val_loss", "val_accuracy", "epoch_seconds")
TARGET_KEYS = ("steps", "samples", "epochs", "train_seconds")
CORRECT_ARTIFACT = "evaluation/test_correct.npz"  # which test images a run got right (packed bits)


# What a sweep's cells must share to be compared with another sweep's (`shared_settings`): every
# setting of the data, the network and training, except what a sweep of optimizers and batch sizes
# varies and what changes only how a run is executed or shown.
SETTING_PREFIXES = ("dataset.", "split.", "model.", "train.")
NOT_SETTINGS = ("train.seed", "train.batch_size", "train.lr_factor", "train.compilation_cache", "train.threads",
                "train.verbose")  # fmt: skip


def shared_settings(runs: list[Any]) -> dict[str, str]:
    """The settings (`SETTING_PREFIXES`, but `NOT_SETTINGS`) of the finished runs: each key's value, or
    the values it takes among them, comma-separated (`-` for a run without it), where they differ."""
    finished = [run.data.params for run in runs if run.info.status == "FINISHED"]
    keys = {k for p in finished for k in p if k.startswith(SETTING_PREFIXES) and k not in NOT_SETTINGS}
    return {k: ",".join(sorted({p.get(k, "-") for p in finished})) for k in sorted(keys)}


def collect_runs(client: Any, parent: Any) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """The sweep's child runs as a table (one row per run), their per-epoch curves (long format),
    and the settings its finished runs share."""
    from pipeline.core.store import child_runs

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
        row["noise_scale"] = metrics.get("noise_scale", np.nan)  # the run's last estimate (the latest epoch with one)
        row["cell"] = run.data.tags.get("sweep.cell") or f"{row['optimizer']}-bs{row['batch_size']}"
        row["target"] = pd.to_numeric(run.data.tags.get("target.value"), errors="coerce")
        row["target_reached"] = run.data.tags.get("target.reached") == "true"
        for key in TARGET_KEYS:  # when the run first reached the target; NaN if never
            row[f"target_{key}"] = metrics.get(f"target.{key}", np.nan)
        row["noise_scale_at_target"] = noise_at(client, run.info.run_id, row["target_epochs"])
        history = {
            name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)} for name in CURVE_METRICS
        }
        for epoch in sorted(history["val_accuracy"]):
            point = {name: values.get(epoch, np.nan) for name, values in history.items()}
            keys = ("run_id", "run_name", "cell", "optimizer", "batch_size", "seed")
            curves.append({k: row[k] for k in keys} | point | {"epoch": epoch})
        accuracies = history["val_accuracy"]
        row["final_val_accuracy"] = accuracies[max(accuracies)] if accuracies else np.nan
        row["best_val_accuracy"] = max(accuracies.values()) if accuracies else np.nan
        row["epoch_seconds"] = float(np.median(list(history["epoch_seconds"].values()) or [np.nan]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values(["test_accuracy", "run_name"], ascending=[False, True], na_position="last")
    columns = ["run_id", "run_name", "cell", "optimizer", "batch_size", "seed", "epoch", "val_loss", "val_accuracy"]
    curves_frame = pd.DataFrame(curves, columns=[*columns, "epoch_seconds"])
    return table.reset_index(drop=True), curves_frame, shared_settings(runs)


def noise_at(client: Any, run_id: str, epochs: float) -> float:
    """The run's noise scale estimate at the end of the epoch in which it reached the target (`epochs`
    into training); NaN if it never did, or has no estimate for that epoch. Estimates are once an
    epoch, after its training, so this is at most one epoch after the target and the nearest to it."""
    if not np.isfinite(epochs):
        return np.nan
    history = {m.step: m.value for m in client.get_metric_history(run_id, "noise_scale")}
    return history.get(math.ceil(epochs - 1e-9), np.nan)


def load_correctness(client: Any, table: pd.DataFrame, folder: Path) -> dict[str, np.ndarray]:
    """Per finished run, which test images it classified correctly (runs without the record are left out)."""
    correct = {}
    for row in table[table["status"] == "FINISHED"].itertuples():
        try:
            path = client.download_artifacts(row.run_id, CORRECT_ARTIFACT, str(folder))
            packed = np.load(path, allow_pickle=False)
        except Exception:  # noqa: BLE001 - an older run, or tracking without artifacts: no paired test for it
            continue
        correct[row.run_id] = np.unpackbits(packed["bits"], count=int(packed["count"])).astype(bool)
    return correct


def time_to_target(table: pd.DataFrame, target: float) -> dict[str, dict]:
    """Per cell, over its finished runs: the share that reached `target` and the medians of when they did.

    A run that never reached it counts as infinitely late (AlgoPerf's rule), so a median is
    finite only when more than half the seeds reached the target. Runs trained for another
    target are refused (their record answers another question).
    """
    done = table[table["status"] == "FINISHED"]
    other = done[done["target"].notna() & (done["target"] != target)]
    if len(other):
        raise PipelineError(
            f"compare.target={target:g}, but runs {', '.join(other['run_name'][:3])} recorded their time to "
            f"{other['target'].iloc[0]:g}: compare with compare.target={other['target'].iloc[0]:g}, or rerun the sweep"
        )
    out = {}
    for cell, group in done.groupby("cell", sort=False):
        reached = group["target_reached"].to_numpy(dtype=bool)
        entry = {"runs": len(group), "reached": int(reached.sum()), "share": float(reached.mean())}
        for key in TARGET_KEYS:
            values = np.where(reached, group[f"target_{key}"].to_numpy(dtype=float), np.inf)
            median = float(np.median(values))
            entry[f"median_{key}"] = median if np.isfinite(median) else None
        seconds = group["target_train_seconds"].to_numpy(dtype=float)[reached]
        entry["range_train_seconds"] = [float(seconds.min()), float(seconds.max())] if reached.any() else None
        out[str(cell)] = entry
    return out


def noise_scales(table: pd.DataFrame, column: str = "noise_scale") -> dict[str, float | None]:
    """Per cell, the median over its finished runs of their last gradient noise scale, or of `column`
    (`noise_scale_at_target`: the estimate when they reached the target); None if none has one."""
    done = table[table["status"] == "FINISHED"]
    out = {}
    for cell, group in done.groupby("cell", sort=False):
        values = group[column].dropna() if column in group else pd.Series(dtype=float)
        out[str(cell)] = float(values.median()) if len(values) else None
    return out


def quickest(times: dict[str, dict], key: str = "median_train_seconds") -> str | None:
    """The cell with the smallest median `key` to the target (training seconds, or `median_steps`); None if
    no cell's median is finite; a tie goes to the first name."""
    finite = {c: t[key] for c, t in times.items() if t[key] is not None}
    return min(finite, key=lambda c: (finite[c], c)) if finite else None


def as_fast_as_fastest(times: dict[str, dict]) -> list[str]:
    """The cells the seeds cannot tell from the fastest: a finite median, and a seed that reached the
    target no later than the slowest of the fastest cell's seeds that reached it (their ranges of
    seconds overlap).

    Seconds of training vary from run to run with the machine's load, steps do not: with a few
    seeds, two cells a few tenths of a second apart trade places between sweeps.
    """
    fastest = quickest(times)
    if fastest is None:
        return []
    slowest = times[fastest]["range_train_seconds"][1]
    return [
        c for c, t in times.items()
        if c != fastest and t["median_train_seconds"] is not None and t["range_train_seconds"][0] <= slowest
    ]  # fmt: skip


def row_label(cell: str, batch_size: str) -> str:
    """A cell's row in the optimizer x batch-size grid: its name without the batch size (`sgd-lr0.1`)."""
    return re.sub(rf"-bs{re.escape(str(batch_size))}(?=-|$)", "", cell, count=1)


def cells_frame(
    cells: list[Cell],
    comparisons: list[dict],
    times: dict[str, dict] | None = None,
    noise: dict[str, float | None] | None = None,
    noise_at_target: dict[str, float | None] | None = None,
) -> pd.DataFrame:
    """One row per cell: n, test mean, std, interval, validation mean, the verdict and the corrected p-values,
    the time to the target and the median gradient noise scale (last, and when the target was reached)."""
    by_cell = {c["cell"]: c for c in comparisons}
    rows = []
    for i, c in enumerate(cells):
        compared = by_cell.get(c.cell, {})
        rows.append(
            {
                "cell": c.cell,
                "optimizer": c.optimizer,
                "batch_size": c.batch_size,
                "n": c.n,
                "mean": c.mean,
                "std": c.std,
                "ci95_low": c.ci95[0],
                "ci95_high": c.ci95[1],
                "val_mean": c.val_mean,
                "verdict": "winner (chosen on validation)" if i == 0 else compared.get("verdict", NOT_TESTABLE),
                "p_welch_holm": compared.get("p_welch_holm"),
                "p_paired_holm": compared.get("p_paired_holm"),
                "target_share": (times or {}).get(c.cell, {}).get("share"),
                "target_median_seconds": (times or {}).get(c.cell, {}).get("median_train_seconds"),
                "target_median_steps": (times or {}).get(c.cell, {}).get("median_steps"),
                "noise_scale_median": (noise or {}).get(c.cell),
                "noise_scale_at_target_median": (noise_at_target or {}).get(c.cell),
            }
        )
    return pd.DataFrame(rows, columns=["cell", "optimizer", "batch_size", "n", "mean", "std", "ci95_low", "ci95_high",
                                       "val_mean", "verdict", "p_welch_holm", "p_paired_holm", "target_share",
                                       "target_median_seconds", "target_median_steps",
                                       "noise_scale_median", "noise_scale_at_target_median"])  # fmt: skip


def pivot(cells: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """`value` by optimizer (rows; plus any other swept setting) x batch size (columns)."""
    rows = [row_label(c, b) for c, b in zip(cells["cell"], cells["batch_size"], strict=True)]
    index = "optimizer" if rows == list(cells["optimizer"]) else "setting"
    table = cells.assign(**{index: rows}).pivot_table(
        index=index, columns="batch_size", values=value, aggfunc="first", dropna=False
    )
    return table.reindex(columns=sorted(table.columns, key=batch_order))


def answer(cells: list[Cell], comparisons: list[dict], alpha: float, paired: bool) -> str:
    """The sweep's answer in a few sentences, worded by what the tests can tell apart."""
    if not cells:
        return "No run finished: there is no winner."
    best = cells[0]
    low, high = best.ci95
    interval = f"95 % interval {low:.4f}-{high:.4f}" if best.n > 1 else "one run: no interval"
    text = (
        f"Chosen on validation: {best.cell} (mean validation accuracy {best.val_mean:.4f}, {best.n} seed(s)); "
        f"its mean test accuracy is {best.mean:.4f} ({interval})."
    )
    tests = "Welch's t-test over seeds" + (" and a paired t-test over the test images" if paired else "")
    groups: dict[str, list[str]] = {}
    for c in comparisons:
        groups.setdefault(c["verdict"], []).append(c["cell"])
    wording = {NOT_SHOWN: "Not shown to differ from it on test", "worse": "Worse on test", "better": "Better on test"}
    for verdict, words in wording.items():
        if groups.get(verdict):
            text += f" {words}: {', '.join(groups[verdict])}."
    if groups.get(NOT_TESTABLE):
        text += f" Not testable (fewer than 2 runs): {', '.join(groups[NOT_TESTABLE])}."
    return text + f" ({tests}, Holm-corrected over {len(comparisons)} comparisons, alpha {alpha:g}.)"


def target_answer(times: dict[str, dict], target: float) -> str:
    """The second answer: which cell reaches the target validation accuracy first, in training time."""
    fastest = quickest(times)
    if fastest is None:
        return f"No cell reached {target:g} validation accuracy in most of its seeds within the budget."
    t = times[fastest]
    text = (
        f"Fastest to {target:g} validation accuracy: {fastest} (median {t['median_train_seconds']:.2f} s of "
        f"training, {t['median_steps']:.0f} steps, {t['median_epochs']:.2f} epochs; {t['reached']} of {t['runs']} "
        "seeds reached it)."
    )
    close = as_fast_as_fastest(times)
    if close:
        text += f" Not told apart from it in seconds (their seeds' times overlap): {', '.join(close)}."
    fewest = quickest(times, "median_steps")
    text += (
        f" Fewest steps to it: {fewest} (median {times[fewest]['median_steps']:.0f}), a count that does not "
        "depend on the machine."
    )
    return text


def cell_curves(curves: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max of each finished cell's validation curves per epoch."""
    finished = set(table.loc[table["status"] == "FINISHED", "run_id"])
    done = curves[curves["run_id"].isin(finished)]
    grouped = done.groupby(["cell", "optimizer", "batch_size", "epoch"])[["val_loss", "val_accuracy"]]
    stats = grouped.agg(["mean", "min", "max"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    return stats.reset_index()


def markdown(table: pd.DataFrame, cells: pd.DataFrame, text: str) -> str:
    """The answer, the cells table and the run table as Markdown."""
    shown = cells.assign(interval=[_interval(lo, hi) for lo, hi in zip(cells.ci95_low, cells.ci95_high, strict=True)])
    columns = ["cell", "n", "mean", "std", "interval", "val_mean", "verdict"]
    return (
        f"{text}\n\nTest accuracy per cell over seeds (the winner chosen on validation accuracy, `val_mean`):\n\n"
        + shown[columns].to_markdown(index=False, floatfmt=".4f")
        + "\n\nEvery run:\n\n"
        + table[RUN_COLUMNS].to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )


def _interval(low: float, high: float) -> str:
    return "-" if pd.isna(low) else f"{low:.4f}-{high:.4f}"
