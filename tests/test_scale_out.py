"""The same sweep on other engines: a real MLflow tracking server, submitit (local processes, SLURM)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import compose_hydra, http_get, http_post_json, mlflow_service, run_module, run_sweep

from pipeline.core.errors import PipelineError
from pipeline.core.store import setup_tracking
from pipeline.sweeps.callback import SWEEP_ROLE_TAG, job_threads

SLURM_TEST_ENV = "MNIST_PIPELINE_SLURM_TEST"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """`mlflow server` as the README starts it: SQLite backend store, proxied artifacts."""
    store = tmp_path_factory.mktemp("server")
    with mlflow_service(
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--workers",
        "1",
        log=store / "server.log",
    ) as base:
        yield base


def on_server(server: str, experiment: str) -> tuple[str, ...]:
    """Overrides that send a command's runs to `server`, in their own experiment."""
    return ("tracking=server", f"tracking.uri={server}", f"tracking.experiment={experiment}")


def experiment_runs(base: str, experiment: str) -> tuple[dict, list[dict]]:
    """(parent, children) of the experiment's only sweep, read through the server's REST API."""
    api = f"{base}/api/2.0/mlflow"
    _, body = http_get(f"{api}/experiments/get-by-name?experiment_name={experiment}")
    experiment_id = json.loads(body)["experiment"]["experiment_id"]
    runs = http_post_json(f"{api}/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, tag in zip(runs, tags, strict=True) if tag.get(SWEEP_ROLE_TAG) == "sweep"]
    assert len(parents) == 1, f"one parent run, got {len(parents)}"
    parent_id = parents[0]["info"]["run_id"]
    children = [run for run, tag in zip(runs, tags, strict=True) if tag.get("mlflow.parentRunId") == parent_id]
    return parents[0], children


def assert_sweep_on_server(base: str, experiment: str, names: set[str]) -> tuple[dict, list[dict]]:
    """One FINISHED parent with FINISHED children `names`, their curves and artifacts; returns both."""
    parent, children = experiment_runs(base, experiment)
    assert parent["info"]["status"] == "FINISHED"
    assert {run["info"]["run_name"] for run in children} == names
    for run in children:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        for metric in ("loss", "val_accuracy"):
            _, body = http_get(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={metric}")
            assert [m["step"] for m in json.loads(body)["metrics"]] == [1], f"{metric}: one value per epoch"
        assert "test_accuracy" in {m["key"] for m in run["data"]["metrics"]}
        # Artifacts travel through the server's proxy, not a path on this machine.
        status, png = http_get(f"{base}/get-artifact?path=evaluation/confusion_matrix.png&run_uuid={run_id}")
        assert status == 200 and png[:4] == b"\x89PNG"
    return parent, children


@pytest.mark.slow
def test_sweep_against_a_tracking_server(tiny_data_cfg, server):
    root = Path(tiny_data_cfg().paths.root)
    run_sweep(root, *on_server(server, "server"), "optimizer=sgd,adam", "train.batch_size=32")
    parent, _ = assert_sweep_on_server(server, "server", {"sgd-bs32", "adam-bs32"})
    compared = run_module("pipeline.compare", f"paths.root={root}", *on_server(server, "server"))
    assert compared.returncode == 0, compared.stdout[-3000:] + compared.stderr[-3000:]
    _, body = http_get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={parent['info']['run_id']}&path=comparison")
    logged = {f["path"] for f in json.loads(body)["files"]}
    assert {"comparison/runs.md", "comparison/heatmap.png", "comparison/summary.json"} <= logged
    assert not (root / "mlruns" / "mlflow.db").exists(), "nothing went to the local SQLite store"


@pytest.mark.slow
def test_submitit_local_sweep_against_the_server(tiny_data_cfg, server):
    """The cluster set-up on one machine: separate job processes, one shared server."""
    root = Path(tiny_data_cfg().paths.root)
    result = run_sweep(
        root,
        "hydra/launcher=submitit_local",
        *on_server(server, "submitit"),
        "optimizer=sgd,adam",
        "train.batch_size=32",
    )
    assert "Submitit 'local' sweep output dir" in result.stdout + result.stderr
    assert_sweep_on_server(server, "submitit", {"sgd-bs32", "adam-bs32"})
    job_logs = list((root / "logs/multirun").glob("*/.submitit/*/*_0_log.out"))
    assert len(job_logs) == 2, "each job ran in its own submitit process"


@pytest.mark.slow
def test_slurm_sweep_against_the_server(tiny_data_cfg, server):
    """A real SLURM job array (the one-node cluster `.ci/local-slurm.sh` starts; `.ci/run` does)."""
    if os.environ.get(SLURM_TEST_ENV) != "1":
        pytest.skip(f"set {SLURM_TEST_ENV}=1 with a SLURM cluster up: .ci/local-slurm.sh starts one, .ci/run does")
    root = Path(tiny_data_cfg().paths.root)
    result = run_sweep(
        root,
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
        *on_server(server, "slurm"),
        "optimizer=sgd,adam",
        "train.batch_size=32",
    )
    assert "Submitit 'slurm' sweep output dir" in result.stdout + result.stderr
    _, children = assert_sweep_on_server(server, "slurm", {"sgd-bs32", "adam-bs32"})
    for run in children:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["threads"] == "1", "a job uses the cpus_per_task it asked for"
    job_logs = list((root / "logs/multirun").glob("*/.submitit/*/*_log.out"))
    assert len(job_logs) == 2, "each job ran as a SLURM array task"


def test_submitit_local_sweep_to_the_local_store(tiny_data_cfg):
    cfg = tiny_data_cfg()
    run_sweep(Path(cfg.paths.root), "hydra/launcher=submitit_local", "optimizer=sgd,adam", "train.batch_size=32")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    parents = [r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted((r.info.run_name, r.info.status) for r in children) == [
        ("adam-bs32", "FINISHED"),
        ("sgd-bs32", "FINISHED"),
    ]
    for run in children:
        assert run.data.tags["threads"] == "1", "2 concurrent jobs share the 2 cores"
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1


def test_unreachable_server_fails_fast_naming_the_uri(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for args in (("pipeline.train",), ("pipeline.experiment", "-m", "sweep=none", "optimizer=sgd,adam")):
        result = run_module(*args, f"paths.root={root}", "tracking=server", f"tracking.uri={dead}", timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output[-3000:]
        assert f"MLflow tracking server {dead} is not reachable" in output
        assert "Traceback" not in output
    assert not (root / "mlruns").exists() and not (root / "models").exists()


def test_silent_server_times_out(compose_cfg):
    """A host that accepts the connection but never answers: fail after server_timeout_s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cfg = compose_cfg("tracking=server", "tracking.server_timeout_s=0.5")
        cfg.tracking.uri = uri
        started = time.monotonic()
        with pytest.raises(PipelineError, match=f"MLflow tracking server {uri} is not reachable.*0.5 s"):
            setup_tracking(cfg)
        assert time.monotonic() - started < 30, "no retry loop"


def test_environment_variable_overrides_the_server_config(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = hydra_config("tracking=server")
    assert cfg.tracking.uri == "http://127.0.0.1:5000"
    setup_tracking(cfg)
    assert (tmp_path / "env.db").is_file()


def hydra_config(*overrides: str):
    return compose_hydra(*overrides, return_hydra_config=True)


def test_slurm_launcher_takes_resources_from_config():
    cfg = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=16")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb) == ("gpu", 30, 4, 16)
    assert job_threads(cfg, 12) == 4, "each SLURM job uses the cores it asked for"


@pytest.mark.parametrize(
    ("overrides", "jobs", "threads"),
    [
        ((), 4, None),  # one job at a time: TensorFlow's default (all cores)
        (("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), 4, 4),
        (("hydra/launcher=submitit_local",), 2, 4),
        (("hydra/launcher=submitit_local",), 1, None),
    ],
)
def test_parallel_jobs_share_the_cores(overrides, jobs, threads, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert job_threads(hydra_config(*overrides), jobs) == threads


def test_slurm_sweep_refuses_the_local_store(tmp_path):
    result = run_module(
        "pipeline.experiment", "-m", f"paths.root={tmp_path}", "hydra/launcher=slurm", "optimizer=sgd,adam"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "hydra/launcher=slurm runs the jobs on other machines" in output
    assert "tracking=server tracking.uri=http://<host>:5000" in output
    assert "Launching" not in output and not (tmp_path / "mlruns").exists()


def test_unknown_launcher_lists_the_installed_ones(tmp_path):
    result = run_module("pipeline.experiment", "-m", f"paths.root={tmp_path}", "hydra/launcher=ray")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Could not find 'hydra/launcher/ray'" in output
    for name in ("basic", "joblib", "slurm", "submitit_local", "submitit_slurm"):
        assert f"\t{name}\n" in output
