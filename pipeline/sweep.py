"""Sweeps: a Hydra callback that groups a multirun's jobs under one MLflow parent run.

Before any job starts, `SweepCallback` expands the grid exactly as Hydra's basic
sweeper will, composes and validates every job's config (so a bad value fails the
whole sweep at once, not job 7 of 12), creates the MLflow store and a parent run, and
hands the parent's id to each job through `PARENT_RUN_ENV`, set in the job's own process
(in-process, joblib, submitit local or SLURM alike). For parallel launchers it divides
the CPU cores among the jobs; a SLURM sweep must log to a tracking server. When the
sweep ends it closes the parent run and records the sweep in
`<reports_dir>/sweep/sweep.json` for `pipeline.compare`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
from datetime import UTC, datetime
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.atomic import write_json
from pipeline.config import THREADS_ENV, project_path
from pipeline.errors import PipelineError, exit_on_pipeline_error
from pipeline.validation import check_config

log = logging.getLogger(__name__)

SWEEP_ROLE_TAG = "mnist_pipeline.role"  # "sweep" on parent runs, so compare can find them


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides as Hydra's basic sweeper combines them: preset params, then CLI."""
    params = config.hydra.sweeper.get("params") or {}
    return [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, in the order Hydra's basic sweeper launches them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def grid_params(overrides: list[str]) -> dict[str, str]:
    """The swept keys and their values (`optimizer` -> `sgd,adam`), for the parent run."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {f"grid.{o.get_key_element()}": ",".join(o.sweep_string_iterator()) for o in parsed if o.is_sweep_override()}


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
    if "joblib" in target:
        return "joblib"
    return "basic"


def job_threads(config: DictConfig, n_jobs: int) -> int | None:
    """TensorFlow threads per job so that concurrent jobs share the cores; None = TF's default.

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


class SweepCallback(Callback):
    """Parent MLflow run per multirun; validated grid; fair CPU share per parallel job."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.started: str | None = None
        self.jobs = 0
        self.threads: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and sweeps on; a bad value
        # must stop the sweep before its first job, so exit here (SystemExit passes).
        with exit_on_pipeline_error():
            self._prepare(config)

    def _prepare(self, config: DictConfig) -> None:
        from pipeline.tracking import raise_terminated

        overrides = sweep_overrides(config)
        jobs = expand_grid(overrides)
        self.jobs = len(jobs)
        for job_cfg in compose_jobs(config, jobs):
            check_config(job_cfg)
        check_store_reachable_from_jobs(config)
        self.threads = job_threads(config, len(jobs))
        if self.threads:
            log.info("%s launcher: %d TensorFlow thread(s) per job", launcher_kind(config), self.threads)
        if not config.tracking.enabled:
            return
        self.parent_run_id = self._start_parent(config, overrides, jobs)
        # Ctrl-C or SIGTERM between or inside jobs: the parent still gets a final status.
        atexit.register(self._end_parent_if_open, "KILLED")
        signal.signal(signal.SIGTERM, raise_terminated)

    def _start_parent(self, config: DictConfig, overrides: list[str], jobs: list[list[str]]) -> str:
        # Creating the store and experiment here, once, keeps parallel first use from racing.
        from mlflow.tracking import MlflowClient

        from pipeline.tracking import git_state, setup_tracking

        experiment_id = setup_tracking(config)
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        preset = (config.get("sweep") or {}).get("name") or "sweep"
        client = MlflowClient()
        tags = {
            SWEEP_ROLE_TAG: "sweep",
            "sweep.overrides": " ".join(overrides),
            "sweep.jobs": str(len(jobs)),
            "sweep.launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            **git_state(),
        }
        run = client.create_run(experiment_id, run_name=f"{preset}-{self.started}", tags=tags)
        client.log_batch(run.info.run_id, params=_params(grid_params(overrides) | {"sweep.jobs": len(jobs)}))
        client.log_text(run.info.run_id, "\n".join(" ".join(job) for job in jobs) + "\n", "grid.txt")
        log.info("Sweep of %d jobs; MLflow parent run %s", len(jobs), run.info.run_id)
        return run.info.run_id

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Runs in the job's own process, wherever the launcher put it (this object travels
        # pickled with submitit), so the parent id and thread share need no shared env.
        from pipeline.tracking import PARENT_RUN_ENV

        if self.parent_run_id:
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
        if self.threads:
            os.environ[THREADS_ENV] = str(self.threads)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        children = client.search_runs(
            [client.get_run(self.parent_run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
        )
        statuses = {run.info.run_name: run.info.status for run in children}
        record = {
            "parent_run_id": self.parent_run_id,
            "started": self.started,
            "overrides": sweep_overrides(config),
            "jobs": self.jobs,
            "runs": dict(sorted(statuses.items())),
        }
        write_json(record_path(config), record)
        failed = sorted(name for name, status in statuses.items() if status != "FINISHED")
        if failed:
            log.warning("Sweep finished with %d failed job(s): %s", len(failed), ", ".join(failed))
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


def record_path(cfg: DictConfig):
    """Where the latest sweep is recorded."""
    return project_path(cfg, "reports_dir") / "sweep" / "sweep.json"
