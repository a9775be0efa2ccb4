"""One experiment in one call: train then evaluate in one process and one MLflow run.

`python -m pipeline.experiment` returns the test accuracy. With `-m` it sweeps the grid
of the sweep preset (`conf/sweep/`, default: the four optimizers x three batch sizes):
each job is one cell of the grid and trains `sweep.seeds` seeds (`train.seed`,
`train.seed + 1`, ...), each seed a child run of the sweep's parent run
(`pipeline.sweep`), and returns the cell's mean validation accuracy, the number a
sweeper optimises (never the test accuracy). A job's files go to its own Hydra output
folder; a failed seed is recorded as FAILED and the sweep goes on.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from pipeline.app import prepare_config, stage_main
from pipeline.atomic import check_writable
from pipeline.data import load_split
from pipeline.jobs import evaluate_run, train_run
from pipeline.model import build_optimizer
from pipeline.paths import StageOutputs, project_paths
from pipeline.records import run_name
from pipeline.search import OPTUNA_SWEEPER, Pruned, TrialReporter, job_trial
from pipeline.tracking import PARENT_RUN_ENV, SWEPT_KEYS_ENV, Terminated, tracked_run

log = logging.getLogger(__name__)

SHORT_NAMES = {
    "train.batch_size": "bs",
    "train.seed": "s",
    "optimizer.learning_rate": "lr",
    "train.lr_factor": "lrx",
    "train.epochs": "ep",
}


def run_experiment(
    cfg: DictConfig,
    outputs: StageOutputs | None = None,
    parent_run_id: str | None = None,
    name: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate under one MLflow run; return the test metrics, the run id and the curves.

    Alone, bad data or a bad optimizer fail before a run is created; as a sweep's child
    (`parent_run_id`), every failure is recorded in the job's own FAILED run.
    """
    outputs = outputs or project_paths(cfg).stage_outputs
    if parent_run_id is None:
        load_data_and_optimizer(cfg)
        check_writable([outputs.model.parent, outputs.history.parent, outputs.metrics.parent])
    with tracked_run(cfg, run_name=name or run_name(cfg), parent_run_id=parent_run_id) as run:
        train, val, test = load_data_and_optimizer(cfg)
        run_id = run.info.run_id if run else None
        result = train_run(cfg, train, val, outputs, run_id, on_epoch)
        metrics = evaluate_run(result.model, test, outputs, run_id, str(cfg.dataset.name))
    return {**metrics, "run_id": run_id, "val_accuracy": result.history[-1]["val_accuracy"], "history": result.history}


def load_data_and_optimizer(cfg: DictConfig) -> tuple:
    """The three splits (read once per process), after checking that the optimizer can be built."""
    build_optimizer(cfg)
    return tuple(load_split(cfg, split) for split in ("train", "val", "test"))


def job_name(cfg: DictConfig, overrides: list[str], swept: set[str], seeds: int) -> str:
    """A run name from the settings the sweep varies, unique within the sweep: `adam-bs32-lr0.01-s1`."""
    parts = [run_name(cfg)]
    for override in overrides:
        key, _, value = override.partition("=")
        if key in swept and key not in ("optimizer", "train.batch_size", "train.seed"):
            parts.append(f"{SHORT_NAMES.get(key, key.rsplit('.', 1)[-1])}{_short(value)}")
    if seeds > 1 or "train.seed" in swept:
        parts.append(f"s{cfg.train.seed}")
    return "-".join(parts)


def _short(value: str) -> str:
    """A sampled float in 4 significant digits (`0.000201`), anything else as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 8 else f"{number:.4g}"


def run_sweep_job(cfg: DictConfig) -> float:
    """One job of a multirun: one cell, `sweep.seeds` child runs; returns the mean validation accuracy."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    swept = set(filter(None, os.environ.get(SWEPT_KEYS_ENV, "").split(",")))
    parent = os.environ.get(PARENT_RUN_ENV)
    trial = job_trial(hydra_cfg, cfg)
    searching = str(hydra_cfg.sweeper.get("_target_", "")).endswith(OPTUNA_SWEEPER)
    # A search trial is one run (one seed); a grid cell is replicated over `sweep.seeds`.
    seeds = 1 if searching else int(cfg.sweep.seeds)
    prefix = f"t{hydra_cfg.job.num}-" if searching else ""
    reporter = TrialReporter(trial) if trial is not None else None
    accuracies = []
    for offset in range(seeds):
        seed_cfg = copy.deepcopy(cfg)
        with open_dict(seed_cfg):
            seed_cfg.train.seed = int(cfg.train.seed) + offset
        try:
            prepare_config(seed_cfg, hydra_cfg.runtime.choices)
            name = prefix + job_name(seed_cfg, overrides, swept, seeds)
            folder = job_dir / f"seed-{seed_cfg.train.seed}" if seeds > 1 else job_dir
            result = run_experiment(seed_cfg, StageOutputs.in_folder(folder), parent, name, reporter)
            accuracies.append(result["val_accuracy"])
        except (KeyboardInterrupt, SystemExit, Terminated):
            raise
        except Pruned as err:
            log.info("Trial %s: %s", hydra_cfg.job.num, err)
        except Exception as err:  # noqa: BLE001 - recorded as a FAILED run; the sweep goes on
            log.error("Sweep job %s failed (%s: %s); continuing", " ".join(overrides), type(err).__name__, err)
        finally:
            if seed_cfg.train.backend == "tensorflow" or str(seed_cfg.train.backend).endswith("tensorflow"):
                import keras

                keras.backend.clear_session()  # the next TensorFlow job starts from a clean graph
    return sum(accuracies) / len(accuracies) if accuracies else math.nan


def experiment(cfg: DictConfig) -> float:
    """`python -m pipeline.experiment`: the test accuracy; in a multirun, one sweep job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg)
    return run_experiment(cfg)["test_accuracy"]


main = stage_main(experiment)  # python -m pipeline.experiment [-m] [overrides]

if __name__ == "__main__":
    main()
