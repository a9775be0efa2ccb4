"""Sweeps: a Hydra callback that groups a multirun's jobs under one MLflow parent run.

Before any job starts, `SweepCallback` composes and validates every job's config (for
the grid sweeper, every cell; for any other sweeper, the config its jobs start from),
so a bad value fails the whole sweep at once, not job 7 of 12; it creates the MLflow
store and a parent run, and hands the parent's id to each job through `PARENT_RUN_ENV`,
set in the job's own process (in-process, joblib, submitit local or SLURM alike). For
parallel launchers it divides the CPU cores among the jobs; a SLURM sweep must log to a
tracking server. When the sweep ends it closes the parent run (FAILED if every run
failed, and the command then exits non-zero) and records the sweep, keyed by run id, in
`<reports_dir>/sweep/sweep.json`, which `pipeline.compare` reads.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.atomic import write_json
from pipeline.errors import PipelineError, exit_on_pipeline_error
from pipeline.paths import project_paths

log = logging.getLogger(__name__)

GRID_SWEEPERS = ("GridSweeper", "BasicSweeper")


def sweeper_kind(config: DictConfig) -> str:
    """The sweeper's class name (`GridSweeper`, `BasicSweeper`, `OptunaSweeper`, ...)."""
    return str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides in the order the grid sweeper combines them: preset grid, params, CLI."""
    from hydra_plugins.mnist_pipeline.grid_sweeper import preset_grid

    params = dict(config.hydra.sweeper.get("params") or {}) if sweeper_kind(config) in GRID_SWEEPERS else {}
    grid = preset_grid(config) if sweeper_kind(config) == "GridSweeper" else {}
    merged = {**grid, **{str(k): str(v) for k, v in params.items()}}
    return [f"{key}={value}" for key, value in merged.items()] + list(config.hydra.overrides.task)


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, in the order Hydra's basic sweeper launches them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (`optimizer`, `train.batch_size`)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def grid_params(overrides: list[str]) -> dict[str, str]:
    """The swept keys and their values (`optimizer` -> `sgd,adam`), for the parent run."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {
        f"grid.{o.get_key_element()}": ",".join(o.sweep_string_iterator())
        for o in parsed
        if o.is_sweep_override() and o.is_discrete_sweep()
    }


def compose_jobs(config: DictConfig, jobs: list[list[str]]) -> list[DictConfig]:
    """Compose each job's config as its launcher will (unknown options fail with Hydra's message)."""
    from hydra_plugins.mnist_pipeline.grid_sweeper import COMPOSED_JOBS

    loader = GlobalHydra.instance().config_loader()
    composed = [loader.load_sweep_config(config, list(job)) for job in jobs]
    COMPOSED_JOBS.update(tuple(job) for job in jobs)  # the grid sweeper need not compose them again
    return composed


def launcher_kind(config: DictConfig) -> str:
    """`basic`, `joblib`, `submitit_local` or `slurm`: how the launcher places jobs."""
    target = str(config.hydra.launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        return "slurm"
    if target.endswith("submitit_launcher.LocalLauncher"):
        return "submitit_local"
    if "joblib" in target:
        return "joblib"
    return "basic"


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
    from pipeline.tracking import tracking_uri

    if launcher_kind(config) != "slurm" or not config.tracking.enabled:
        return
    uri = tracking_uri(config)
    if "://" not in uri or uri.startswith(("sqlite:", "file:")):
        raise PipelineError(
            f"hydra/launcher=slurm runs the jobs on other machines, which cannot log to the local store {uri}. "
            "Use a tracking server they can reach: tracking=server tracking.uri=http://<host>:5000 "
            "(README: 'Tracking server'), or set MLFLOW_TRACKING_URI."
        )


def _task_config(job_cfg: DictConfig) -> DictConfig:
    """A job's composed config without the `hydra` node, as its task sees it."""
    keys = [k for k in job_cfg if k != "hydra"]
    return OmegaConf.masked_copy(job_cfg, keys)


class SweepCallback(Callback):
    """Parent MLflow run per multirun; validated jobs; fair CPU share per parallel job."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.jobs: int | None = None
        self.threads: int | None = None
        self.swept: list[str] = []
        self.multirun = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and sweeps on; a bad value
        # must stop the sweep before its first job, so exit here (SystemExit passes).
        with exit_on_pipeline_error():
            self._prepare(config)

    def _prepare(self, config: DictConfig) -> None:
        from pipeline.app import prepare_config
        from pipeline.tracking import raise_terminated

        self.multirun = True
        overrides = sweep_overrides(config)
        self.swept = swept_keys(overrides)
        from hydra_plugins.mnist_pipeline.grid_sweeper import preset_jobs

        grid = sweeper_kind(config) == "GridSweeper"
        listed = preset_jobs(config, list(config.hydra.overrides.task)) if grid else None
        if listed is not None:  # sweep.jobs_file: exactly the listed jobs; swept = the keys that vary
            jobs = listed
            self.jobs = len(jobs)
            values: dict[str, set[str]] = {}
            for job in jobs:
                for override in job:
                    key, _, value = override.partition("=")
                    values.setdefault(key, set()).add(value)
            self.swept = [key for key, seen in values.items() if len(seen) > 1]
        elif sweeper_kind(config) in GRID_SWEEPERS:
            jobs = expand_grid(overrides)
            self.jobs = len(jobs)
        else:  # a search: its jobs are decided as it goes; check the config they start from
            jobs = [[o for o in config.hydra.overrides.task if "," not in o and "(" not in o]]
            self.jobs = config.hydra.sweeper.get("n_trials")
            self.swept = [str(k) for k in (config.hydra.sweeper.get("params") or {})]
        from pipeline.model import build_optimizer

        for job, job_cfg in zip(jobs, compose_jobs(config, jobs), strict=True):
            choices = job_cfg.hydra.runtime.choices
            try:
                build_optimizer(prepare_config(_task_config(job_cfg), choices))
            except PipelineError as err:
                raise PipelineError(f"Sweep job [{' '.join(job)}]: {err}") from err
        check_store_reachable_from_jobs(config)
        self.threads = job_threads(config, self.jobs or 1)
        if self.threads:
            log.info("%s launcher: %d compute thread(s) per job", launcher_kind(config), self.threads)
        if not config.tracking.enabled:
            return
        self.parent_run_id = self._start_parent(config, overrides)
        from pipeline.tracking import PARENT_RUN_ENV

        os.environ[PARENT_RUN_ENV] = self.parent_run_id  # in-process jobs, and the sweeper itself
        # Ctrl-C or SIGTERM between or inside jobs: the parent still gets a final status.
        atexit.register(self._end_parent_if_open, "KILLED")
        signal.signal(signal.SIGTERM, raise_terminated)

    def _start_parent(self, config: DictConfig, overrides: list[str]) -> str:
        # Creating the store and experiment here, once, keeps parallel first use from racing.
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import SWEEP_ROLE_TAG, cpu_tags, dvc_tags, git_state, process_tags, setup_tracking

        experiment_id = setup_tracking(config)
        preset = config.sweep.name
        client = MlflowClient()
        tags = {
            SWEEP_ROLE_TAG: "sweep",
            "sweep.overrides": " ".join(overrides),
            "sweep.jobs": str(self.jobs),
            "sweep.sweeper": sweeper_kind(config),
            "sweep.launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            **git_state(),
            **cpu_tags(),
            **dvc_tags(),
            **process_tags(),
        }
        if sweeper_kind(config) == "OptunaSweeper":
            from pipeline.search import study_storage

            sweeper = config.hydra.sweeper
            tags.update(
                {"optuna.study": sweeper.study_name, "optuna.storage": sweeper.storage or study_storage(config)}
            )
        from datetime import UTC, datetime

        started = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
        run = client.create_run(experiment_id, run_name=f"{preset}-{started}", tags=tags)
        params = grid_params(overrides) | {"sweep.jobs": self.jobs, "sweep.seeds": config.sweep.seeds}
        client.log_batch(run.info.run_id, params=_params(params))
        log.info("Sweep of %s jobs x %d seed(s); MLflow parent run %s", self.jobs, config.sweep.seeds, run.info.run_id)
        return run.info.run_id

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Runs in the job's own process, wherever the launcher put it (this object travels
        # pickled with submitit), so the parent id and thread share need no shared env.
        if not self.multirun:
            return  # not a multirun: Hydra calls callbacks for single runs too
        from pipeline.tracking import PARENT_RUN_ENV, SWEPT_KEYS_ENV
        from pipeline.trainer import THREADS_ENV

        if self.parent_run_id:
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
        if self.threads:
            os.environ[THREADS_ENV] = str(self.threads)
        os.environ[SWEPT_KEYS_ENV] = ",".join(self.swept)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import child_runs

        client = MlflowClient()
        parent = client.get_run(self.parent_run_id)
        runs = {
            run.info.run_id: {
                "name": run.info.run_name,
                "status": run.info.status,
                "settings": {k: run.data.params.get(k) for k in ("optimizer.name", "train.batch_size", "train.seed")},
            }
            for run in child_runs(client, parent)
        }
        failed = sorted(v["name"] for v in runs.values() if v["status"] != "FINISHED")
        record = {
            "parent_run_id": self.parent_run_id,
            "preset": config.sweep.name,
            "overrides": sweep_overrides(config),
            "jobs": self.jobs,
            "seeds": int(config.sweep.seeds),
            "runs": runs,
            "finished": len(runs) - len(failed),
            "failed": len(failed),
        }
        write_json(project_paths(config).sweep_record, record)
        if failed:
            log.warning("Sweep finished with %d failed run(s) of %d: %s", len(failed), len(runs), ", ".join(failed))
        if not runs or len(failed) == len(runs):
            from pipeline.tracking import tag_failure

            tag_failure(self.parent_run_id, f"every run of the sweep failed ({len(runs)})")
            self._end_parent_if_open("FAILED")
            log.error("Every run of the sweep failed (%d of %d); see their failure_reason tags", len(runs), len(runs))
            sys.exit(1)
        self._end_parent_if_open("FINISHED")

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


def _params(values: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in values.items()]
