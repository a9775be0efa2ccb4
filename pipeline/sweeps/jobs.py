"""One job of a sweep: one cell of the grid (or one trial of a search), replicated over seeds.

A cell is every setting the sweep varies except the seed: its name is built from them
(`adam-bs32`, `sgd-bs128-lr0.1`), every run of the cell carries it as the tag
`sweep.cell`, and compare groups runs by it. Each seed (`train.seed`, `train.seed + 1`,
...) is a child run of the sweep's parent run named `<cell>-s<seed>` (`<cell>` alone when
the cell has one seed and the seed is not swept); a search trial is
one run named `t<trial>-<cell>`. The job returns the cell's mean final `optimized_metric`
(validation accuracy or loss), the number a sweeper optimises (never a test metric). Its files go to its own
Hydra job folder; a failed seed is recorded as FAILED and the sweep goes on. A grid's
settings were all checked by the callback before the sweep started; a search trial's
sampled settings are checked here, and a refused trial is a FAILED run saying why.

A seed's run becomes a child of the sweep's parent run: the callback creates the parent
(`SweepCallback._start_parent`) and hands its id to every job (`hand_to_jobs`, as
`env.PARENT_RUN` through `hydra.job.env_set`); `run_sweep_job` reads it and calls
`run_experiment(parent_run_id=...)`, which starts the seed's run with `core.store.tracked_run`:
`mlflow.start_run(parent_run_id=...)` tags the run `mlflow.parentRunId`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from pipeline.core import env
from pipeline.core.app import prepare_config
from pipeline.core.errors import RunStopped, Terminated
from pipeline.core.paths import Paths
from pipeline.core.store import tracked_run
from pipeline.training.records import run_name
from pipeline.training.runner import run_experiment

log = logging.getLogger(__name__)

CELL_TAG = "sweep.cell"
# How a swept key shows in a cell's name (group choices show as their value alone).
SHORT_NAMES = {
    "train.batch_size": "bs",
    "train.seed": "s",
    "optimizer.learning_rate": "lr",
    "train.lr_factor": "lrx",
    "train.epochs": "ep",
    "model": "",
    "dataset": "",
}
NAMED_IN_RUN_NAME = ("optimizer", "train.batch_size", "train.seed")


def cell_name(cfg: DictConfig, overrides: list[str], swept: set[str]) -> str:
    """The cell's name from the settings the sweep varies (the seed aside): `adam-bs32-lr0.01`."""
    parts = [run_name(cfg)]
    for override in overrides:
        key, _, value = override.partition("=")
        if key in swept and key not in NAMED_IN_RUN_NAME:
            parts.append(f"{SHORT_NAMES.get(key, key.rsplit('.', 1)[-1])}{_short(value)}")
    return "-".join(parts)


def _short(value: str) -> str:
    """A sampled float in 4 significant digits (`0.000201`), anything else as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 8 else f"{number:.4g}"


def run_sweep_job(cfg: DictConfig) -> float:
    """One job of a multirun: one cell, `sweep.seeds` child runs; returns the mean final `optimized_metric`."""
    from hydra.core.hydra_config import HydraConfig

    from pipeline.sweeps.search import TrialReporter, job_trial

    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    swept = set(filter(None, os.environ.get(env.SWEPT_KEYS, "").split(",")))
    parent = os.environ.get(env.PARENT_RUN)
    trial = job_trial(hydra_cfg, cfg)
    # A search trial is one run (one seed); a grid cell is replicated over `sweep.seeds`.
    seeds = 1 if trial is not None else int(cfg.sweep.seeds)
    replicated = seeds > 1 or "train.seed" in swept
    metric = str(cfg.optimized_metric)
    reporter = TrialReporter(trial, metric) if trial is not None else None
    values = []
    for offset in range(seeds):
        seed_cfg = copy.deepcopy(cfg)
        with open_dict(seed_cfg):
            seed_cfg.train.seed = int(cfg.train.seed) + offset
        started = False
        try:
            prepare_config(seed_cfg, hydra_cfg.runtime.choices)
            cell = cell_name(seed_cfg, overrides, swept)
            name = f"t{hydra_cfg.job.num}-{cell}" if trial is not None else cell
            name += f"-s{seed_cfg.train.seed}" if replicated else ""
            outputs = Paths.job_outputs(job_dir, int(seed_cfg.train.seed) if seeds > 1 else None)
            started = True  # from here on, run_experiment records any failure in the seed's own run
            result = run_experiment(
                seed_cfg, outputs, parent_run_id=parent, name=name, on_epoch=reporter, tags={CELL_TAG: cell}
            )
            values.append(result[metric])
        except (KeyboardInterrupt, SystemExit, Terminated):
            raise
        except RunStopped as err:
            log.info("Trial %s: %s", hydra_cfg.job.num, err)
        except Exception as err:  # noqa: BLE001 - recorded as a FAILED run; the sweep goes on
            log.error("Sweep job %s failed (%s: %s); continuing", " ".join(overrides), type(err).__name__, err)
            if parent and not started:  # refused before its run existed: a search trial's sampled settings
                record_refused(seed_cfg, parent, f"t{hydra_cfg.job.num}-refused", err, overrides)
        finally:
            if str(seed_cfg.train.backend).endswith("tensorflow"):
                import keras

                keras.backend.clear_session()  # the next TensorFlow job starts from a clean graph
    return sum(values) / len(values) if values else math.nan


def record_refused(cfg: DictConfig, parent: str, name: str, err: Exception, overrides: list[str]) -> None:
    """A FAILED child run of `parent` for a job refused before its run started: named `name` (also its
    `sweep.cell`), the job's overrides as params, `err` as its `failure_reason`. A store that cannot
    record it is logged; the sweep goes on either way."""
    import mlflow

    try:
        with tracked_run(cfg, run_name=name, parent_run_id=parent):
            mlflow.set_tag(CELL_TAG, name)
            mlflow.log_params(dict(override.partition("=")[::2] for override in overrides))
            raise err
    except Exception as raised:  # noqa: BLE001 - the refusal itself (recorded), or the store's own failure
        if raised is not err:
            log.error("The refused job's run could not be recorded: %s: %s", type(raised).__name__, raised)
