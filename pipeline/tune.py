"""A fair comparison: the learning rate tuned for each optimizer x batch size, then replicated.

    python -m pipeline.tune [overrides]     # e.g. train.epochs=1 for a quick look

Optimizer benchmarks (DeepOBS; Choi et al. 2019) tune the learning rate, a nuisance
hyperparameter, for every optimizer and batch size before comparing them:

1. search: `sweep=lr_search`, every cell at `train.lr_factor` 0.3, 1 and 3 (a log grid
   around each optimizer's default rate), one seed, compared into `reports/tuned/search/`
   (a search phase never moves the champion);
2. choose: per cell, the factor with the best final validation accuracy (never test);
3. final: every cell at its chosen factor, `sweep.seeds` seeds, one sweep compared as
   usual into `reports/tuned/final/` (its own parent run and champion candidate).
Each phase's compare names exactly the sweep that phase ran.

Writes `reports/tuned/choice.json` (the chosen factor and learning rate per cell) and
`reports/tuned/comparison.json` (default vs tuned mean test accuracy per cell), which
the README shows. Each phase is an ordinary multirun; `overrides` go to both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys

from omegaconf import DictConfig

from pipeline.core.errors import PipelineError, Terminated, install_stop_handlers, stopped
from pipeline.core.files import write_json
from pipeline.core.paths import PACKAGE_CHECKOUT, Paths, project_paths

log = logging.getLogger(__name__)

SEARCH, FINAL = "search", "final"


def run(args: list[str]) -> None:
    """One `python -m pipeline.<module> ...` as a user runs it; stop on failure.

    The phase runs in its own process group, so a Ctrl-C reaches it once: from this
    process, which passes the same signal on to the whole group and waits while the phase
    ends its runs KILLED. A second stop kills the group.
    """
    log.info("$ python -m %s", " ".join(args))
    phase = None
    try:
        phase = subprocess.Popen([sys.executable, "-m", *args], cwd=PACKAGE_CHECKOUT, start_new_session=True)
        code = phase.wait()
    except (KeyboardInterrupt, Terminated) as stop:
        if phase is not None:
            stop_group(phase, getattr(stop, "signum", signal.SIGINT))
        raise
    if code != 0:
        raise PipelineError(f"python -m {' '.join(args)} failed (see its output above)")


def stop_group(phase: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the phase's process group and wait for the phase; on a second stop, kill the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(phase.pid, sig)
    try:
        phase.wait()
    except (KeyboardInterrupt, Terminated):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(phase.pid, signal.SIGKILL)
        phase.wait()
        raise


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


def choose(cfg: DictConfig, parent_run_id: str) -> dict[str, dict]:
    """Per optimizer x batch size, the learning-rate factor whose run had the best final validation accuracy."""
    from mlflow.tracking import MlflowClient

    from pipeline.core.store import child_runs, setup_tracking

    setup_tracking(cfg)
    client = MlflowClient()
    best: dict[str, dict] = {}
    for run in child_runs(client, client.get_run(parent_run_id)):
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
                "run_name": run.info.run_name,
            }
    if not best:
        raise PipelineError("The learning-rate search finished no run: nothing to choose from.")
    return dict(sorted(best.items()))


def phase_paths(paths: Paths, phase: str) -> Paths:
    """The paths of one phase: its sweep's reports under `<reports_dir>/tuned/<phase>/`."""
    return dataclasses.replace(paths, reports_dir=paths.tuned(phase))


def settings_differ(default: dict | None, tuned: dict) -> str | None:
    """Why the default sweep's cells cannot be set beside the tuned ones (None: the same settings)."""
    if default is None:
        return "its summary records no settings: rerun python -m pipeline.compare on it"
    keys = sorted(k for k in default.keys() | tuned.keys() if default.get(k) != tuned.get(k))
    if not keys:
        return None
    shown = ", ".join(f"{k}={default.get(k, '-')} there, {tuned.get(k, '-')} here" for k in keys[:5])
    return f"it ran with other settings ({shown}{', ...' if len(keys) > 5 else ''})"


def compare_views(paths: Paths) -> dict:
    """Default vs tuned, per cell: mean test accuracy, interval, the chosen learning rate.

    The default sweep is `<reports_dir>/sweep/summary.json` (dvc repro's, if it ran), set beside the
    tuned one only when its runs had the same settings (data, network, training) and it named a
    winner; else it is left out, and `default_left_out` says why.
    """
    default_file = paths.sweep_report("summary.json")
    default = json.loads(default_file.read_text()) if default_file.is_file() else None
    tuned = json.loads(phase_paths(paths, FINAL).sweep_report("summary.json").read_text())
    left_out = None if default is None else settings_differ(default.get("settings"), tuned["settings"])
    if default is not None and not left_out and not default["winner"]:
        left_out = "it named no winner (no run of it finished)"
    if left_out:
        log.warning("The default sweep (%s) is left out of the comparison: %s", default_file, left_out)
        default = None
    choice = json.loads(paths.tuned("choice.json").read_text())
    cells = {}
    for view, summary in (("default", default), ("tuned", tuned)):
        if summary is None:
            continue
        for cell in summary["cells"]:  # keyed by optimizer and batch size (reports of older
            # versions named tuned cells with their factor, `-lrx3.0`)
            name = f"{cell['optimizer']}-bs{cell['batch_size']}"
            entry = cells.setdefault(name, {"optimizer": cell["optimizer"], "batch_size": cell["batch_size"]})
            entry[view] = {"mean": cell["mean"], "ci95": cell["ci95"], "n": cell["n"]}
    for name, chosen in choice.items():
        cells.setdefault(name, {})["chosen"] = {k: chosen[k] for k in ("lr_factor", "learning_rate")}

    def verdict(summary: dict | None) -> dict | None:
        if summary is None or not summary["winner"]:
            return None
        return {"winner": summary["winner"]["cell"], "tied_with": [t["cell"] for t in summary["tied_with"]]}

    return {"default": verdict(default), "default_left_out": left_out, "tuned": verdict(tuned), "cells": cells}


def sweep_and_compare(paths: Paths, phase: str, preset: str, overrides: list[str], register: bool) -> str:
    """One phase: its sweep, then compare on exactly that sweep, into `<reports_dir>/tuned/<phase>/`; its parent id."""
    from pipeline.core.store import latest_sweep

    relative = os.path.relpath(paths.tuned(phase), paths.root)  # no machine path in the records
    reports = f"paths.reports_dir={relative}"
    run(["pipeline.experiment", "-m", f"sweep={preset}", reports, *overrides])
    record = latest_sweep(paths, preset)
    if record is None:
        raise PipelineError(f"The {phase} sweep left no record in {paths.sweep_records}")
    parent = f"compare.parent_run_id={record['parent_run_id']}"
    run(["pipeline.compare", reports, parent, f"compare.register={str(register).lower()}", *single_valued(overrides)])
    return str(record["parent_run_id"])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    install_stop_handlers()  # a closed terminal too: the phase, in its own session, is told by this process
    overrides = sys.argv[1:]
    try:
        cfg = base_config(overrides)
        paths = project_paths(cfg)
        search = sweep_and_compare(paths, SEARCH, "lr_search", overrides, register=False)  # no champion from it
        choice = choose(cfg, search)
        write_json(paths.tuned("choice.json"), choice)
        jobs = [
            [f"optimizer={c['optimizer']}", f"train.batch_size={c['batch_size']}", f"train.lr_factor={c['lr_factor']}"]
            for c in choice.values()
        ]
        write_json(paths.tuned("jobs.json"), jobs)
        jobs_file = f"sweep.jobs_file={os.path.relpath(paths.tuned('jobs.json'), paths.root)}"
        sweep_and_compare(paths, FINAL, "tuned", [jobs_file, *overrides], register=True)
        write_json(paths.tuned("comparison.json"), compare_views(paths))
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
    except (KeyboardInterrupt, Terminated) as stop:
        status, what = stopped(stop)
        print(
            f"{what}; the MLflow runs under way ended KILLED (earlier phases' runs keep their status).", file=sys.stderr
        )
        sys.exit(status)
    log.info("Wrote %s", paths.tuned("comparison.json"))


if __name__ == "__main__":
    main()
