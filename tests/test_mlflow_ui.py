"""The MLflow UI server, started as the README says, shows our runs and serves their artifacts."""

from __future__ import annotations

import json

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
