"""The MLflow UI server, started as the README says, shows our runs and serves their artifacts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.experiment import run_experiment

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_ui_lists_the_experiment_and_serves_a_runs_artifacts(tiny_data_cfg):
    cfg = tiny_data_cfg()
    run_id = run_experiment(cfg)["run_id"]
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # Its own process group: `mlflow ui` starts workers that must all stop at the end.
    server = subprocess.Popen(
        [str(mlflow_cli), "ui", "--backend-store-uri", cfg.tracking.uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not come up"
            time.sleep(0.5)
        _, body = get(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=mnist")
        tags = {t["key"]: t["value"] for t in json.loads(body)["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development", "opens on the runs table"
        _, body = get(f"{base}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}")
        run = json.loads(body)["run"]
        assert run["info"]["status"] == "FINISHED"
        assert any(m["key"] == "test_accuracy" for m in run["data"]["metrics"])
        status, png = get(f"{base}/get-artifact?path=evaluation/confusion_matrix.png&run_uuid={run_id}")
        assert status == 200 and png[:4] == b"\x89PNG"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
