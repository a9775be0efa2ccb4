"""A fair comparison: the learning rate tuned for each optimizer x batch size, then replicated.

    python -m pipeline.tune [overrides]     # e.g. train.epochs=1 for a quick look

Optimizer benchmarks (DeepOBS; Choi et al. 2019) tune the learning rate, a nuisance
hyperparameter, for every optimizer and batch size before comparing them:

1. search: `sweep=lr_search`, every cell at `train.lr_factor` 0.3, 1 and 3 (a log grid
   around each optimizer's default rate), one seed, into `reports/tuned/search/`;
2. choose: per cell, the factor with the best final validation accuracy (never test);
3. final: every cell at its chosen factor, `sweep.seeds` seeds, one sweep compared as
   usual into `reports/tuned/final/` (its own parent run and champion candidate).

Writes `reports/tuned/choice.json` (the chosen factor and learning rate per cell) and
`reports/tuned/comparison.json` (default vs tuned mean test accuracy per cell), which
the README shows. Each phase is an ordinary multirun; `overrides` go to both.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_json
from pipeline.core.paths import PACKAGE_CHECKOUT, project_paths

log = logging.getLogger(__name__)

SEARCH, FINAL = "tuned/search", "tuned/final"


def run(args: list[str]) -> None:
    """One `python -m pipeline.<module> ...` as a user runs it; stop on failure."""
    log.info("$ python -m %s", " ".join(args))
    if subprocess.run([sys.executable, "-m", *args], cwd=PACKAGE_CHECKOUT).returncode != 0:
        raise PipelineError(f"python -m {' '.join(args)} failed (see its output above)")


def single_valued(overrides: list[str]) -> list[str]:
    """The overrides that set one value (the sweeps' own, like `optimizer=sgd,adam`, dropped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def base_config(overrides: list[str]) -> DictConfig:
    """The config both phases start from (the command line's single-valued overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.core.paths import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=single_valued(overrides))


def choose(cfg: DictConfig, reports: Path) -> dict[str, dict]:
    """Per cell, the learning-rate factor whose run had the best final validation accuracy."""
    from mlflow.tracking import MlflowClient

    from pipeline.core.store import child_runs, setup_tracking

    setup_tracking(cfg)
    client = MlflowClient()
    record = json.loads((reports / SEARCH / "sweep" / "sweep.json").read_text())
    best: dict[str, dict] = {}
    for run in child_runs(client, client.get_run(record["parent_run_id"])):
        if run.info.status != "FINISHED":
            continue
        params = run.data.params
        cell = f"{params['optimizer.name']}-bs{params['train.batch_size']}"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        accuracy = max(history, key=lambda m: m.step).value
        if cell not in best or accuracy > best[cell]["val_accuracy"]:
            best[cell] = {
                "optimizer": params["optimizer.name"],
                "batch_size": params["train.batch_size"],
                "lr_factor": float(params["train.lr_factor"]),
                "learning_rate": float(params["optimizer.effective_learning_rate"]),
                "val_accuracy": accuracy,
                "run_id": run.info.run_id,
            }
    if not best:
        raise PipelineError("The learning-rate search finished no run: nothing to choose from.")
    return dict(sorted(best.items()))


def compare_views(reports: Path) -> dict:
    """Default vs tuned, per cell: mean test accuracy, interval, the chosen learning rate."""
    default_file = reports / "sweep" / "summary.json"  # the default sweep (dvc repro), if it ran
    default = json.loads(default_file.read_text()) if default_file.is_file() else None
    tuned = json.loads((reports / FINAL / "sweep" / "summary.json").read_text())
    choice = json.loads((reports / "tuned" / "choice.json").read_text())
    cells = {}
    for view, summary in (("default", default), ("tuned", tuned)):
        if summary is None:
            continue
        for cell in summary["cells"]:
            entry = cells.setdefault(cell["cell"], {"optimizer": cell["optimizer"], "batch_size": cell["batch_size"]})
            entry[view] = {"mean": cell["mean"], "ci95": cell["ci95"], "n": cell["n"]}
    for name, chosen in choice.items():
        cells.setdefault(name, {})["chosen"] = {k: chosen[k] for k in ("lr_factor", "learning_rate")}

    def verdict(summary: dict | None) -> dict | None:
        if summary is None or not summary["winner"]:
            return None
        return {"winner": summary["winner"]["cell"], "tied_with": [t["cell"] for t in summary["tied_with"]]}

    return {"default": verdict(default), "tuned": verdict(tuned), "cells": cells}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = sys.argv[1:]
    try:
        cfg = base_config(overrides)
        reports = project_paths(cfg).reports_dir
        # relative to the project, as configured: no machine's path in the records
        configured = Path(cfg.paths.reports_dir)
        search, final = f"paths.reports_dir={configured / SEARCH}", f"paths.reports_dir={configured / FINAL}"
        run(["pipeline.experiment", "-m", "sweep=lr_search", search, *overrides])
        run(["pipeline.compare", search, *single_valued(overrides)])
        choice = choose(cfg, reports)
        write_json(reports / "tuned" / "choice.json", choice)
        jobs = [
            [f"optimizer={c['optimizer']}", f"train.batch_size={c['batch_size']}", f"train.lr_factor={c['lr_factor']}"]
            for c in choice.values()
        ]
        write_json(reports / "tuned" / "jobs.json", jobs)
        jobs_file = f"sweep.jobs_file={configured / 'tuned' / 'jobs.json'}"
        run(["pipeline.experiment", "-m", "sweep=tuned", jobs_file, final, *overrides])
        run(["pipeline.compare", final, *single_valued(overrides)])
        write_json(reports / "tuned" / "comparison.json", compare_views(reports))
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
    log.info("Wrote %s", reports / "tuned" / "comparison.json")


if __name__ == "__main__":
    main()
