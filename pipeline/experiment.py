"""One experiment in one call: train then evaluate in one process and one MLflow run.

`python -m pipeline.experiment` returns the test accuracy (what a sweeper optimises);
with `-m` it sweeps, each job a child run of the sweep's parent run (see
`pipeline.sweep`). In a sweep, a job's files go to its own Hydra output folder, and a
failed job is recorded as FAILED without stopping the sweep.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline.data import OutputPaths, load_split
from pipeline.errors import exit_on_pipeline_error
from pipeline.tracking import PARENT_RUN_ENV, tracked_run
from pipeline.validation import check_config

log = logging.getLogger(__name__)


def run_experiment(cfg: DictConfig, paths: OutputPaths | None = None, parent_run_id: str | None = None) -> dict:
    """Train and evaluate under one MLflow run; return the test metrics (with `run_id`)."""
    from pipeline.evaluate import evaluate_model
    from pipeline.train import fit, log_run_context, run_name, save_training

    check_config(cfg)
    paths = paths or OutputPaths.for_stages(cfg)
    train, val, test = (load_split(cfg, name) for name in ("train", "val", "test"))
    with tracked_run(cfg, run_name=run_name(cfg), parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id if run else None
        if run_id:
            log_run_context(cfg, run_id)
        result = fit(cfg, train, val, run_id)
        save_training(cfg, result, paths, run_id)
        metrics = evaluate_model(result.model, test, paths, run_id, {"train_seconds": result.train_seconds})
    return {**metrics, "run_id": run_id}


def run_sweep_job(cfg: DictConfig, job_dir: Path) -> float:
    """One job of a multirun: a child run of the sweep's parent; failures do not propagate."""
    parent = os.environ.get(PARENT_RUN_ENV)
    try:
        return run_experiment(cfg, OutputPaths.in_folder(job_dir), parent_run_id=parent)["test_accuracy"]
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - recorded as a FAILED run; the sweep goes on
        log.error("Sweep job failed (%s: %s); continuing with the next job", type(err).__name__, err)
        return math.nan
    finally:
        import keras

        keras.backend.clear_session()  # the next job in this process starts from a clean graph


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Entry point: `python -m pipeline.experiment [-m] [overrides]`; returns test accuracy."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return run_sweep_job(cfg, Path(hydra_cfg.runtime.output_dir))
    with exit_on_pipeline_error():
        accuracy = run_experiment(cfg)["test_accuracy"]
    return accuracy


if __name__ == "__main__":
    main()
