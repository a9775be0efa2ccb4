"""MLflow tracking: where the store is, one run per job, and a final status for every run.

The store defaults to SQLite at `<mlruns_dir>/mlflow.db` with artifacts under
`<mlruns_dir>/artifacts` (MLflow 3.13+ refuses the old file store); `tracking=server`
or the standard `MLFLOW_TRACKING_URI` environment variable sends runs to a tracking
server instead, which must answer its health check before anything is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from pipeline.config import find_project_root, project_path
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# A sweep's parent run id reaches its jobs through this variable (not MLFLOW_RUN_ID,
# which would make every job resume the parent instead of starting a child).
PARENT_RUN_ENV = "MNIST_PIPELINE_PARENT_RUN_ID"
# Tag that makes the MLflow 3 UI open the experiment on its training-runs table.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Config groups whose values are the run's hyperparameters.
PARAM_GROUPS = ("model", "optimizer", "train", "split")


class Terminated(BaseException):  # noqa: N818 - mirrors KeyboardInterrupt, not an error
    """Raised in the main thread when the process receives SIGTERM."""


def tracking_uri(cfg: DictConfig) -> str:
    """The store: MLFLOW_TRACKING_URI, else `tracking.uri`, else SQLite under `mlruns_dir`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if uri:
        return str(uri)
    return f"sqlite:///{project_path(cfg, 'mlruns_dir') / 'mlflow.db'}"


def use_store(uri: str) -> None:
    """Make `uri` MLflow's store in this process without touching MLFLOW_TRACKING_URI.

    `mlflow.set_tracking_uri` also exports the variable, which would then look like a
    user's override to the next `tracking_uri()` call with another config.
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def check_server(uri: str, timeout_s: float) -> None:
    """Fail fast, naming `uri`, when an http(s) tracking server does not answer `/health`.

    MLflow's own client retries a dead server for minutes, and would do so only after
    the data is loaded; this check runs before a run, or a sweep's parent, is created.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered: an auth proxy or an old server; MLflow reports what follows
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise PipelineError(
            f"MLflow tracking server {uri} is not reachable ({reason}; waited at most {timeout_s:g} s). "
            "Start it (README: 'Tracking server'), or point tracking.uri or MLFLOW_TRACKING_URI at a running "
            "server, or use the local store: tracking=mlflow with MLFLOW_TRACKING_URI unset."
        ) from err


def setup_tracking(cfg: DictConfig) -> str:
    """Point MLflow at the configured store, create it and the experiment; return its id."""
    uri = tracking_uri(cfg)
    check_server(uri, float(cfg.tracking.server_timeout_s))
    artifact_location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            probe = db.parent / f".write-probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise PipelineError(
                f"Cannot create the MLflow store at {db.parent} ({err.strerror or err}). "
                "Set paths.mlruns_dir to a writable folder, or MLFLOW_TRACKING_URI to another store."
            ) from err
        artifact_location = (db.parent / "artifacts").as_uri()
    use_store(uri)
    name = cfg.tracking.experiment
    client = MlflowClient()
    for attempt in range(5):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            break
        try:
            client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND_TAGS)
        except MlflowException:  # another process created it (or the store is busy): look again
            time.sleep(0.2 * (attempt + 1))
    else:
        raise PipelineError(f"Could not create or find MLflow experiment '{name}' in {uri}")
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """Resolved hyperparameters as flat `group.key` names (private `_keys` dropped)."""
    params: dict[str, Any] = {"dataset.name": cfg.dataset.name}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not str(key).startswith("_"):
                    walk(f"{prefix}.{key}", value)
        else:
            params[prefix] = node

    container = OmegaConf.to_container(cfg, resolve=True)
    for group in PARAM_GROUPS:
        walk(group, container.get(group, {}))
    return params


def git_state(root: Path | None = None) -> dict[str, str]:
    """The commit and whether the tree is dirty; empty when not a git checkout."""
    root = root or find_project_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git_commit": commit, "git_dirty": str(bool(dirty)).lower()}


def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    import importlib.metadata as md

    versions = {}
    for package in ("tensorflow-cpu", "keras", "mlflow", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[f"version.{package}"] = md.version(package)
    return versions


def raise_terminated(signum, frame) -> None:
    """Signal handler: turn SIGTERM into `Terminated`, so `finally` blocks and atexit run."""
    raise Terminated(f"received signal {signum}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` so runs and files are closed properly."""
    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def tracked_run(
    cfg: DictConfig,
    *,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """Start (or resume, with `run_id`) an MLflow run that always ends with a final status.

    FINISHED when the block completes; KILLED on Ctrl-C or SIGTERM; FAILED on any
    other exception, whose message is stored in the `failure_reason` tag. The
    exception is re-raised. Yields None when tracking is disabled.
    """
    if not cfg.tracking.enabled:
        with sigterm_raises():
            yield None
        return
    setup_tracking(cfg)
    run = mlflow.start_run(run_id=run_id, run_name=run_name, parent_run_id=parent_run_id)
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        with sigterm_raises():
            yield run
    except (KeyboardInterrupt, Terminated) as err:
        status = RunStatus.to_string(RunStatus.KILLED)
        _tag_failure(run, f"interrupted: {type(err).__name__} {err}".strip())
        raise
    except BaseException as err:
        status = RunStatus.to_string(RunStatus.FAILED)
        _tag_failure(run, str(err) or type(err).__name__)
        raise
    finally:
        mlflow.end_run(status=status)
        log.info("MLflow run %s ended %s", run.info.run_id, status)


def _tag_failure(run: mlflow.ActiveRun, reason: str) -> None:
    with contextlib.suppress(Exception):
        MlflowClient().set_tag(run.info.run_id, "failure_reason", reason[:5000])
