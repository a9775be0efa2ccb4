"""The sweep callback: a multirun's jobs checked first, then grouped under one MLflow parent run.

conf/config.yaml configures it for multiruns only (`if_multirun`), so no single-run
command loads this code. Before any job starts, `SweepCallback` composes and checks
every job's config (for the grid sweeper every cell, for a search the config its trials
start from), so a bad value fails the whole sweep at once, not job 7 of 12; it creates
the store and the parent run, and hands the jobs their values (`pipeline.core.env`)
through Hydra's `hydra.job.env_set`. It records the sweep, by parent run id, in
`<mlruns_dir>/sweeps/<id>.json` when it starts and when it ends (and, as the sweep stage
run by DVC, in the stage's record `<mlruns_dir>/stages/sweep.json`). Hydra turns a callback's exception into a warning,
so any failure here ends the sweep itself: the parent run FAILED with the reason, exit 1.
A sweep whose every run failed ends FAILED and exits 1 too.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from pipeline.core import env
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_json
from pipeline.core.paths import project_paths
from pipeline.sweeps import grid

log = logging.getLogger(__name__)

SWEEP_ROLE_TAG = "mnist_pipeline.role"  # "sweep" on a sweep's parent run


def compose_jobs(config: DictConfig, jobs: list[list[str]]) -> list[DictConfig]:
    """Compose each job's config as its launcher will (unknown options fail with Hydra's message)."""
    loader = GlobalHydra.instance().config_loader()
    return [loader.load_sweep_config(config, list(job)) for job in jobs]


def launcher_kind(config: DictConfig) -> str:
    """`basic`, `joblib`, `submitit_local` or `slurm`: how the launcher places jobs."""
    target = str(config.hydra.launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        return "slurm"
    if target.endswith("submitit_launcher.LocalLauncher"):
        return "submitit_local"
    return "joblib" if "joblib" in target else "basic"


def job_threads(config: DictConfig, n_jobs: int) -> int | None:
    """Compute threads per job so that concurrent jobs share the cores; None = the backend's default.

    joblib runs `n_jobs` at a time and submitit_local starts every job at once, all on
    this machine; a SLURM job owns `cpus_per_task` cores of its node.
    """
    launcher = config.hydra.launcher
    kind = launcher_kind(config)
    if kind == "slurm":
        return launcher.get("cpus_per_task")
    cores = os.cpu_count() or 1
    if kind == "submitit_local":
        parallel = n_jobs
    elif launcher.get("n_jobs") is not None:
        parallel = cores if launcher.n_jobs < 0 else max(1, int(launcher.n_jobs))
    else:
        return None
    parallel = min(parallel, n_jobs)
    return max(1, cores // parallel) if parallel > 1 else None


def check_store_reachable_from_jobs(config: DictConfig) -> None:
    """A cluster sweep's jobs run on other machines: a SQLite file here is out of their reach."""
    from pipeline.core.store import tracking_uri

    if launcher_kind(config) != "slurm" or not config.tracking.enabled:
        return
    uri = tracking_uri(config)
    if "://" not in uri or uri.startswith(("sqlite:", "file:")):
        raise PipelineError(
            f"hydra/launcher=slurm runs the jobs on other machines, which cannot log to the local store {uri}. "
            "Use a tracking server they can reach: tracking=server tracking.uri=http://<host>:5000 "
            "(README: 'Tracking server'), or set MLFLOW_TRACKING_URI."
        )


def check_search(config: DictConfig) -> None:
    """An Optuna search: its direction must improve its objective; a study with no name gets one (for its jobs)."""
    from pipeline.core.config import OBJECTIVES

    sweeper, metric = config.hydra.sweeper, str(config.optimized_metric)
    if sweeper.get("direction", "maximize") != OBJECTIVES[metric]:
        raise PipelineError(
            f"hydra.sweeper.direction={sweeper.get('direction')} would make optimized_metric={metric} worse: "
            f"{metric} wants direction={OBJECTIVES[metric]}. Fix one, e.g. hydra.sweeper.direction={OBJECTIVES[metric]}"
        )
    if not sweeper.get("study_name"):
        name = f"search-{datetime.now(UTC).strftime('%Y-%m-%d_%H-%M-%S')}"
        with read_write(config.hydra), open_dict(config.hydra):
            sweeper.study_name = name
            config.hydra.overrides.hydra.append(f"hydra.sweeper.study_name={name}")


def check_seeds_apart(first_seeds: list[int], seeds: int) -> None:
    """Refuse swept `train.seed` values closer than `sweep.seeds`: each job runs seeds `train.seed` to
    `train.seed + seeds - 1`, so a cell would run a seed twice and compare would count it twice."""
    for low, high in zip(first_seeds, first_seeds[1:], strict=False):
        if high - low < seeds:
            raise PipelineError(
                f"train.seed={low},{high} with sweep.seeds={seeds}: the jobs run seeds {low}-{low + seeds - 1} and "
                f"{high}-{high + seeds - 1}, so a cell would run seed {high} twice and count it twice. Fix: add "
                f"sweep.seeds=1 to run exactly the seeds you list, or list seeds at least {seeds} apart."
            )


def hand_to_jobs(config: DictConfig, values: dict[str, str]) -> None:
    """Make `values` environment variables of every job of this sweep (`hydra.job.env_set`).

    Set on the sweep's config (which the sweeper reads) and as overrides, since each
    job's config is composed anew from the sweep's overrides.
    """
    from pipeline.core.dvcparams import override_value

    with read_write(config.hydra), open_dict(config.hydra):
        for name, value in values.items():
            config.hydra.job.env_set[name] = value
            config.hydra.overrides.hydra.append(f"+hydra.job.env_set.{name}={override_value(value)}")


class SweepCallback(Callback):
    """Checked jobs, one parent MLflow run and a record per multirun, a fair CPU share per parallel job."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.record: dict[str, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except PipelineError as err:
            self._fail(config, str(err))
        except Exception as err:  # noqa: BLE001 - Hydra would swallow it and sweep on unparented
            self._fail(config, f"The sweep could not start: {type(err).__name__}: {err}")

    def _start(self, config: DictConfig) -> None:
        from pipeline.core.app import prepare_config
        from pipeline.model.networks import check_buildable
        from pipeline.training.loop import check_batch_fits

        overrides = grid.sweep_overrides(config)
        swept = grid.swept_keys(overrides)
        kind = grid.sweeper_kind(config)
        listed = grid.preset_jobs(config, list(config.hydra.overrides.task)) if kind == "GridSweeper" else None
        if listed is not None:  # sweep.jobs_file: exactly the listed jobs; swept = the keys that vary
            jobs, swept = listed, grid.listed_swept_keys(listed)
        elif kind in grid.GRID_SWEEPERS:
            jobs = grid.expand_grid(overrides)
        else:  # a search: its jobs are decided as it goes; check the config they start from
            jobs = [[o for o in config.hydra.overrides.task if "," not in o and "(" not in o]]
            swept = [str(k) for k in (config.hydra.sweeper.get("params") or {})]
        n_jobs = len(jobs) if kind in grid.GRID_SWEEPERS else config.hydra.sweeper.get("n_trials")
        seeds = 1 if kind == "OptunaSweeper" else int(config.sweep.seeds)
        first_seeds = set()
        for job, job_cfg in zip(jobs, compose_jobs(config, jobs), strict=True):
            task = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"])
            try:
                if int(task.train.seed) + seeds > 2**32:
                    last = int(task.train.seed) + seeds - 1
                    raise PipelineError(
                        f"train.seed={task.train.seed} with sweep.seeds={seeds} reaches seed {last}, beyond 2**32 - 1: "
                        f"every seed must be an integer in [0, 2**32). Fix it, e.g. train.seed=0"
                    )
                check_buildable(prepare_config(task, job_cfg.hydra.runtime.choices))
                check_batch_fits(task)
            except PipelineError as err:
                raise PipelineError(f"Sweep job [{' '.join(job)}]: {err}") from err
            first_seeds.add(int(task.train.seed))
        check_seeds_apart(sorted(first_seeds), seeds)
        check_store_reachable_from_jobs(config)
        if kind == "OptunaSweeper":
            check_search(config)
        handed = {env.SWEPT_KEYS: ",".join(swept)}
        threads = job_threads(config, n_jobs or 1)
        if threads:
            handed[env.THREADS] = str(threads)
            log.info("%s launcher: %d compute thread(s) per job", launcher_kind(config), threads)
        if config.tracking.enabled:
            self.parent_run_id = self._start_parent(config, overrides, n_jobs)
            handed[env.PARENT_RUN] = self.parent_run_id
            # Ctrl-C, SIGTERM or SIGHUP between or inside jobs: the parent still gets a final status.
            atexit.register(self._end_parent_if_open, "KILLED")
            self.record = {
                "parent_run_id": self.parent_run_id,
                "preset": config.sweep.name,
                "overrides": overrides,
                "jobs": n_jobs,
                "seeds": int(config.sweep.seeds),
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "status": "RUNNING",
            }
            write_json(project_paths(config).sweep_record_of(self.parent_run_id), self.record)
        hand_to_jobs(config, handed)

    def _start_parent(self, config: DictConfig, overrides: list[str], n_jobs: int | None) -> str:
        # Creating the store and experiment here, once, keeps parallel first use from racing.
        from mlflow.tracking import MlflowClient

        from pipeline.core.store import cpu_tags, dvc_tags, git_state, process_tags, setup_tracking

        experiment_id = setup_tracking(config)
        tags = {
            SWEEP_ROLE_TAG: "sweep",
            "sweep.overrides": " ".join(overrides),
            "sweep.jobs": str(n_jobs),
            "sweep.sweeper": grid.sweeper_kind(config),
            "sweep.launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            **git_state(),
            **cpu_tags(),
            **dvc_tags(),
            **process_tags(),
        }
        if grid.sweeper_kind(config) == "OptunaSweeper":
            from pipeline.sweeps.search import study_storage

            sweeper = config.hydra.sweeper
            tags.update(
                {"optuna.study": sweeper.study_name, "optuna.storage": sweeper.storage or study_storage(config)}
            )
            tags["optuna.direction"] = str(sweeper.get("direction", "maximize"))
            for node in ("sampler", "pruner"):  # the classes, e.g. TPESampler, MedianPruner
                tags[f"optuna.{node}"] = str((sweeper.get(node) or {}).get("_target_", "")).rsplit(".", 1)[-1]
        started = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
        client = MlflowClient()
        run = client.create_run(experiment_id, run_name=f"{config.sweep.name}-{started}", tags=tags)
        params = grid.grid_params(overrides) | {"sweep.jobs": n_jobs, "sweep.seeds": config.sweep.seeds}
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        log.info("Sweep of %s jobs x %d seed(s); MLflow parent run %s", n_jobs, config.sweep.seeds, run.info.run_id)
        return run.info.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        try:
            self._end(config)
        except Exception as err:  # noqa: BLE001 - Hydra would swallow it and exit 0
            self._fail(config, f"The sweep's record could not be written: {type(err).__name__}: {err}")

    def _end(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from pipeline.core.store import child_runs, record_stage

        client = MlflowClient()
        runs = {
            run.info.run_id: {
                "name": run.info.run_name,
                "status": run.info.status,
                "cell": run.data.tags.get("sweep.cell"),
                "settings": {k: run.data.params.get(k) for k in ("optimizer.name", "train.batch_size", "train.seed")},
            }
            for run in child_runs(client, client.get_run(self.parent_run_id))
        }
        failed = sorted(v["name"] for v in runs.values() if v["status"] != "FINISHED")
        everything_failed = not runs or len(failed) == len(runs)
        self.record.update(
            runs=runs,
            finished=len(runs) - len(failed),
            failed=len(failed),
            status="FAILED" if everything_failed else "FINISHED",
        )
        write_json(project_paths(config).sweep_record_of(self.parent_run_id), self.record)
        if not everything_failed:
            record_stage(config, "sweep", self.record)
        if failed:
            log.warning("Sweep finished with %d failed run(s) of %d: %s", len(failed), len(runs), ", ".join(failed))
        if everything_failed:
            self._fail(config, f"Every run of the sweep failed ({len(runs)} of {len(runs)}); see their failure_reason")
        self._end_parent_if_open("FINISHED")
        log.info("Compare it: python -m pipeline.compare compare.parent_run_id=%s", self.record["parent_run_id"])

    def _fail(self, config: DictConfig, reason: str) -> None:
        """End the sweep: its parent run FAILED with `reason` (and its record), one line, exit status 1."""
        if self.parent_run_id:
            from pipeline.core.store import tag_failure

            tag_failure(self.parent_run_id, reason)
            self.record.update(status="FAILED", failure_reason=reason)
            try:
                write_json(project_paths(config).sweep_record_of(self.parent_run_id), self.record)
            except OSError as err:
                log.error("Could not write the sweep's record either: %s", err)
            self._end_parent_if_open("FAILED")
        log.error("%s", reason)
        sys.exit(1)

    def _end_parent_if_open(self, status: str) -> None:
        if not self.parent_run_id:
            return
        from mlflow.tracking import MlflowClient

        try:
            MlflowClient().set_terminated(self.parent_run_id, status=status)
            log.info("MLflow parent run %s ended %s", self.parent_run_id, status)
        except Exception as err:  # noqa: BLE001 - at exit there is no one left to raise to
            log.error("Could not close MLflow parent run %s: %s", self.parent_run_id, err)
        self.parent_run_id = None
