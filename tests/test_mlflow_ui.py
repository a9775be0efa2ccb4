"""The MLflow UI server, started as the README says, shows our runs and serves their artifacts."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import http_get, mlflow_service

from pipeline.training.runner import run_experiment

pytestmark = pytest.mark.slow


def test_ui_lists_the_experiment_and_serves_a_runs_artifacts(tiny_data_cfg):
    cfg = tiny_data_cfg()
    run_id = run_experiment(cfg)["run_id"]
    with mlflow_service("ui", "--backend-store-uri", cfg.tracking.uri) as base:
        _, body = http_get(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist")
        tags = {t["key"]: t["value"] for t in json.loads(body)["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development", "opens on the runs table"
        _, body = http_get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}")
        run = json.loads(body)["run"]
        assert run["info"]["status"] == "FINISHED"
        assert any(m["key"] == "test_accuracy" for m in run["data"]["metrics"])
        status, png = http_get(f"{base}/get-artifact?path=evaluation/confusion_matrix.png&run_uuid={run_id}")
        assert status == 200 and png[:4] == b"\x89PNG"


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP])
def test_pipeline_ui_serves_the_projects_store_without_a_uri_typed(tiny_data_cfg, stop):
    """`python -m pipeline.ui`: the store's UI on a port of our choosing, its runs page printed; Ctrl-C stops it,
    and so does a closed terminal (the server, in a session of its own, would outlive it and hold the port)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import free_port, hangup_as_a_terminal_does

    from pipeline.core.paths import PACKAGE_CHECKOUT

    cfg = tiny_data_cfg()
    run_id = run_experiment(cfg)["run_id"]
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ui", f"paths.root={cfg.paths.root}", f"tracking.ui_port={port}"],
        cwd=PACKAGE_CHECKOUT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=hangup_as_a_terminal_does(),
    )
    try:
        deadline = time.monotonic() + 180
        for line in ui.stdout:
            if line.startswith("MLflow UI of") or time.monotonic() > deadline:
                break
        assert line.startswith(f"MLflow UI of sqlite:///{cfg.paths.root}/mlruns/mlflow.db: http://127.0.0.1:{port}/#/")
        address = line.split(": ", 1)[1].split()[0]
        _, body = http_get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}")
        assert json.loads(body)["run"]["info"]["status"] == "FINISHED"
        experiment = json.loads(
            http_get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist")[1]
        )
        assert address.endswith(f"#/experiments/{experiment['experiment']['experiment_id']}/runs")
    finally:
        ui.send_signal(stop)
        ui.wait(timeout=60)
    assert ui.returncode == {signal.SIGINT: 0, signal.SIGHUP: 129}[stop]
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{port}/health", timeout=2)
