"""MLflow tracking: where the store is, one run per job, and a final status for every run.

The store defaults to SQLite at `<mlruns_dir>/mlflow.db` with artifacts under
`<mlruns_dir>/artifacts` (MLflow 3.13+ refuses the old file store); `tracking=server`
or the standard `MLFLOW_TRACKING_URI` environment variable sends runs to a tracking
server instead, which must answer its health check before anything is recorded.

Every run records the host and process that run it. Whoever opens the store next
closes the runs of this host whose process is gone (`kill -9`, a crash of the
machine's power aside), as KILLED with the reason, so no run stays RUNNING.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core import env
from pipeline.core.errors import PipelineError, RunStopped, Terminated, raise_terminated
from pipeline.core.files import probe_write
from pipeline.core.paths import Paths, find_project_root, project_paths

log = logging.getLogger(__name__)

# Tag that makes the MLflow 3 UI open the experiment on its training-runs table.
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
HOST_TAG, PID_TAG, PROCESS_START_TAG = "host", "process.pid", "process.start"
# Config groups whose values are the run's hyperparameters.
PARAM_GROUPS = ("model", "optimizer", "train", "split")


def tracking_uri(cfg: DictConfig) -> str:
    """The store: MLFLOW_TRACKING_URI, else `tracking.uri`, else SQLite under `mlruns_dir`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    if uri:
        return str(uri)
    return f"sqlite:///{project_paths(cfg).store_db}"


def use_store(uri: str) -> None:
    """Make `uri` MLflow's store in this process without touching MLFLOW_TRACKING_URI.

    `mlflow.set_tracking_uri` also exports the variable, which would then look like a
    user's override to the next `tracking_uri()` call with another config.
    """
    import mlflow

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


@contextlib.contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """An exclusive lock on the local store's folder: its first use creates the tables once."""
    with open(Paths.lock_beside(db), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_READY: dict[tuple[str, str], str] = {}  # (store, experiment) -> experiment id, set up in this process


def setup_tracking(cfg: DictConfig) -> str:
    """Point MLflow at the configured store, create it and the experiment; return its id.

    Closes this host's runs whose process is gone (see the module docstring). The
    checks run once per process and store; later calls (the runs of a sweep) only
    point MLflow at it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    ready = _READY.get((uri, str(cfg.tracking.experiment)))
    if ready is not None:
        use_store(uri)
        mlflow.set_experiment(experiment_id=ready)
        return ready
    configure_http_limits(cfg)
    check_server(uri, float(cfg.tracking.server_timeout_s))
    artifact_location, lock = None, contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            probe_write(db.parent)
        except OSError as err:
            raise PipelineError(
                f"Cannot create the MLflow store at {db.parent} ({err.strerror or err}). "
                "Set paths.mlruns_dir to a writable folder, or MLFLOW_TRACKING_URI to another store."
            ) from err
        artifact_location = Paths.artifacts_beside(db).as_uri()
        lock = store_lock(db)
    use_store(uri)
    name = cfg.tracking.experiment
    try:
        with lock:
            client = MlflowClient()
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                with contextlib.suppress(MlflowException):  # another process created it meanwhile
                    client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND_TAGS)
                experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise PipelineError(f"Could not create or find MLflow experiment '{name}' in {uri}")
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        close_orphaned_runs(client, experiment.experiment_id)
    except (PipelineError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's multi-line errors for a damaged or full store
        if not uri.startswith("sqlite:"):
            raise
        first = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]
        raise PipelineError(
            f"The MLflow store {uri} cannot be used ({type(err).__name__}: {first}): the file is damaged or its disk "
            f"is full. Free space, or move the store aside to start a new one (mv {db.parent} {db.parent}.broken), "
            "or point tracking.uri / MLFLOW_TRACKING_URI at another store."
        ) from err
    _READY[(uri, str(name))] = experiment.experiment_id
    return experiment.experiment_id


def configure_http_limits(cfg: DictConfig) -> None:
    """Bound MLflow's HTTP retries, so a tracking server that vanishes mid-run fails the run in time."""
    timeout = float(cfg.tracking.server_timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    """Which host and process run this run (for closing it if the process dies)."""
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PROCESS_START_TAG: process_start(pid) or ""}


def process_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process a run's tags name still runs (True when unknown or on another host)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return True
    start = process_start(int(tags[PID_TAG]))
    return start is not None and start == tags.get(PROCESS_START_TAG, start)


def close_orphaned_runs(client: Any, experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING run of this host whose process is gone; return their ids."""
    host = socket.gethostname()
    closed = []
    for run in client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.{HOST_TAG} = '{host}'"
    ):
        if process_alive(run.data.tags):
            continue
        # The process is gone, so its last writes are in: a run it ended meanwhile is not an orphan.
        if client.get_run(run.info.run_id).info.status != "RUNNING":
            continue
        pid = run.data.tags.get(PID_TAG)
        reason = f"killed: process {pid} on {host} ended without closing this run (SIGKILL, OOM or a crash)"
        with contextlib.suppress(Exception):
            client.set_tag(run.info.run_id, "failure_reason", reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
            log.warning("Closed orphaned MLflow run %s (%s) as KILLED: %s", run.info.run_id, run.info.run_name, reason)
    return closed


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

    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for group in PARAM_GROUPS:
        walk(group, container.get(group, {}))
    return params


@functools.lru_cache(maxsize=4)
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


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    import importlib.metadata as md

    versions = {}
    for package in ("keras", "jax", "jaxlib", "tensorflow-cpu", "mlflow", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[f"version.{package}"] = md.version(package)
    return versions


@functools.lru_cache(maxsize=1)
def cpu_tags() -> dict[str, str]:
    """The CPU model and its vector extensions: float results differ slightly between CPUs."""
    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    wanted = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    return {
        "cpu.model": model or "unknown",
        "cpu.vector_extensions": " ".join(f for f in wanted if f in flags) or "unknown",
        "cpu.count": str(os.cpu_count() or 0),
    }


def dvc_tags() -> dict[str, str]:
    """The DVC experiment this run belongs to, when `dvc exp run` started it."""
    names = {
        "dvc.exp_name": env.DVC_EXP_NAME,
        "dvc.baseline_rev": env.DVC_EXP_BASELINE_REV,
        "dvc.stage": env.DVC_STAGE,
        "dvc.params_overrides": env.DVC_OVERRIDES,
    }
    return {tag: os.environ[name] for tag, name in names.items() if os.environ.get(name)}


def record_stage(cfg: DictConfig, stage: str, record: dict[str, Any]) -> None:
    """When DVC runs `stage`: write what it recorded in the store to its stage record.

    The record is a DVC output beside the store, so a clone without the store, or a
    deleted store, has none and `dvc repro` reruns the stage into the store it has.
    """
    if os.environ.get(env.DVC_STAGE) == stage:
        from pipeline.core.files import write_json

        write_json(project_paths(cfg).stage_record(stage), {**record, "tracking_uri": tracking_uri(cfg)})


def latest_sweep(paths: Any, preset: str | None = None) -> dict[str, Any] | None:
    """The record of the sweep started last in this project (of `preset`, if given); None if there is none."""
    import json

    records = []
    for path in paths.sweep_records.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(path.read_text()))
    records = [r for r in records if "started" in r and (preset is None or r.get("preset") == preset)]
    return max(records, key=lambda r: r["started"], default=None)


def child_runs(client: Any, parent: Any) -> list[Any]:
    """Every child run of a sweep's parent run, oldest first."""
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=50000,
    )


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (unless ignored: `nohup`) raise `Terminated`, so runs and
    files are closed properly: in a run started from a library call, or in a launcher's worker process,
    which never ran a command's `errors.install_stop_handlers`."""
    stops = [signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN else [])
    try:
        previous = {sig: signal.signal(sig, raise_terminated) for sig in stops}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Why the evaluation of a finished run failed (the run itself stays FINISHED: its training did).
EVALUATION_FAILURE = "evaluation.failure_reason"


@contextlib.contextmanager
def tracked_run(
    cfg: DictConfig,
    *,
    run_name: str | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or resume, with `run_id`) the active MLflow run; it ends with `final_status`'s status.

    A resumed run (evaluate continues the run that trained the model) had finished: a failure
    inside the block is the evaluation's, so it goes to the `EVALUATION_FAILURE` tag (cleared by
    a later success) and the run ends FINISHED again, where the next evaluate finds it.
    Yields None when tracking is disabled.
    """
    if not cfg.tracking.enabled:
        with sigterm_raises():
            yield None
        return
    import mlflow

    setup_tracking(cfg)
    system = bool(cfg.tracking.system_metrics) and run_id is None  # a training run, not a resumed one
    if system:  # CPU, memory, disk and network every second, from the run's first second
        mlflow.set_system_metrics_sampling_interval(1)
        mlflow.set_system_metrics_samples_before_logging(1)
    run = mlflow.start_run(
        run_id=run_id, run_name=run_name, parent_run_id=parent_run_id, tags=process_tags(), log_system_metrics=system
    )
    if run_id is None:
        with final_status(run.info.run_id, end_run):
            yield run
        return
    with final_status(run_id, lambda resumed, _status: end_run(resumed, "FINISHED"), tag=EVALUATION_FAILURE):
        yield run
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):  # no such tag: nothing to clear
        MlflowClient().delete_tag(run_id, EVALUATION_FAILURE)


@contextlib.contextmanager
def parent_run(cfg: DictConfig, run_name: str, tags: Mapping[str, str]) -> Iterator[str | None]:
    """A parent run for child runs started inside the block (never the active run); yields its id.

    It ends with `final_status`'s status. Yields None when tracking is disabled.
    """
    if not cfg.tracking.enabled:
        with sigterm_raises():
            yield None
        return
    from mlflow.tracking import MlflowClient

    experiment_id = setup_tracking(cfg)
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=run_name, tags={**tags, **process_tags()}).info.run_id

    def end(run_id: str, status: str) -> None:
        try:
            client.set_terminated(run_id, status=status)
        except Exception as err:  # noqa: BLE001 - the store is gone; say so instead of hiding the first error
            log.error("Could not record the end (%s) of MLflow run %s: %s", status, run_id, err)

    with final_status(run_id, end):
        yield run_id


@contextlib.contextmanager
def final_status(run_id: str, end: Callable[[str, str], None], tag: str = "failure_reason") -> Iterator[None]:
    """Run the block with SIGTERM raising, then `end(run_id, status)` with the status that tells the truth.

    FINISHED when the block completes; KILLED on Ctrl-C, SIGTERM, SIGHUP or `RunStopped`; FAILED on any
    other exception. The reason goes to the tag `tag`; the exception is re-raised.
    """
    status = "FINISHED"
    try:
        with sigterm_raises():
            yield
    except (KeyboardInterrupt, Terminated) as err:
        status = "KILLED"
        tag_failure(run_id, f"interrupted: {type(err).__name__} {err}".strip(), tag)
        raise
    except BaseException as err:
        status = "KILLED" if isinstance(err, RunStopped) else "FAILED"
        tag_failure(run_id, str(err) or type(err).__name__, tag)
        raise
    finally:
        end(run_id, status)


def end_run(run_id: str, status: str) -> None:
    """End the active run with `status`; if the store is unreachable, say so instead of hanging."""
    import mlflow

    # MLflow ends the run, then stops its system-metrics thread: a sample written between the two
    # meets the end's write on SQLite ("database is locked", a logged traceback). Stop it first.
    monitor = mlflow.tracking.fluent.run_id_to_system_metrics_monitor.pop(run_id, None)
    if monitor is not None:
        monitor.finish()
    try:
        mlflow.end_run(status=status)
        log.info("MLflow run %s ended %s", run_id, status)
    except Exception as err:  # noqa: BLE001 - the store is gone; the run's record says RUNNING there
        log.error("Could not record the end (%s) of MLflow run %s: %s", status, run_id, err)
        with contextlib.suppress(Exception):
            mlflow.tracking.fluent._active_run_stack.get().clear()


def tag_failure(run_id: str, reason: str, tag: str = "failure_reason") -> None:
    from mlflow.tracking import MlflowClient

    with contextlib.suppress(Exception):
        MlflowClient().set_tag(run_id, tag, reason[:5000])
