"""Sweeps: real Hydra multiruns of tiny jobs in a subprocess, grouped in MLflow, compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_module, run_sweep
from mlflow.tracking import MlflowClient

from pipeline.compare import compare_sweep
from pipeline.errors import PipelineError
from pipeline.sweep import SWEEP_ROLE_TAG, expand_grid, grid_params
from pipeline.tracking import tracking_uri


def sweep_runs(cfg) -> tuple:
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_grid_expansion_matches_hydra_order():
    jobs = expand_grid(["optimizer=sgd,adam", "train.batch_size=32,128"])
    assert jobs == [
        ["optimizer=sgd", "train.batch_size=32"],
        ["optimizer=sgd", "train.batch_size=128"],
        ["optimizer=adam", "train.batch_size=32"],
        ["optimizer=adam", "train.batch_size=128"],
    ]
    assert grid_params(["optimizer=sgd,adam", "train.epochs=1"]) == {"grid.optimizer": "sgd,adam"}


def test_two_by_two_sweep_one_parent_four_children_and_comparison(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    run_sweep(root, "optimizer=sgd,adam", "train.batch_size=16,64")
    client, parents, children = sweep_runs(cfg)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["grid.optimizer"] == "sgd,adam"
    assert parent.data.params["grid.train.batch_size"] == "16,64"
    assert sorted(r.info.run_name for r in children) == ["adam-bs16", "adam-bs64", "sgd-bs16", "sgd-bs64"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        optimizer, batch = run.info.run_name.split("-bs")
        assert run.data.params["optimizer.name"] == optimizer
        assert run.data.params["train.batch_size"] == batch
        assert run.data.tags["train.batch_samples"] == batch
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
        assert "test_accuracy" in run.data.metrics
    record = json.loads((root / "reports/sweep/sweep.json").read_text())
    assert record["parent_run_id"] == parent.info.run_id
    assert set(record["runs"].values()) == {"FINISHED"}

    result = compare_sweep(cfg)
    table, pivot = result["table"], result["pivot"]
    assert len(table) == 4 and result["finished"] == 4 and result["failed"] == 0
    by_name = {r.info.run_name: r for r in children}
    for row in table.itertuples():
        assert row.test_accuracy == pytest.approx(by_name[row.run_name].data.metrics["test_accuracy"])
        assert pivot.loc[row.optimizer, row.batch_size] == pytest.approx(row.test_accuracy)
    assert list(pivot.columns) == ["16", "64"] and sorted(pivot.index) == ["adam", "sgd"]
    assert result["winner"].startswith(f"Winner: {table.iloc[0].run_name} ")
    out = root / "reports/sweep"
    for name in ("runs.csv", "runs.md", "pivot.csv", "curves.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    for name in ("curves.png", "heatmap.png", "accuracy_vs_time.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert len(result["curves"]) == 4, "one curve point per run per epoch"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/runs.md", "comparison/heatmap.png", "comparison/summary.json"} <= logged


def failing_optimizer_dir(tmp_path: Path) -> Path:
    """A test-only config group option whose optimizer cannot be built."""
    extra = tmp_path / "extra_conf" / "optimizer"
    extra.mkdir(parents=True)
    (extra / "broken.yaml").write_text(
        "_target_: keras.optimizers.SGD\nname: broken\nlearning_rate: 0.01\nno_such_argument: 1\n"
    )
    return extra.parent


def test_failed_job_is_recorded_and_the_sweep_goes_on(tiny_data_cfg, tmp_path):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    extra = failing_optimizer_dir(tmp_path)
    run_sweep(root, "optimizer=sgd,broken,rmsprop,adam", "train.batch_size=32", f"hydra.searchpath=[file://{extra}]")
    _, parents, children = sweep_runs(cfg)
    statuses = {r.info.run_name: r.info.status for r in children}
    assert statuses == {
        "sgd-bs32": "FINISHED",
        "broken-bs32": "FAILED",
        "rmsprop-bs32": "FINISHED",
        "adam-bs32": "FINISHED",
    }
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "no_such_argument" in failed.data.tags["failure_reason"]
    assert parents[0].info.status == "FINISHED"
    summary = compare_sweep(cfg)
    assert (summary["finished"], summary["failed"]) == (3, 1)
    table = summary["table"]
    assert table.set_index("run_name").loc["broken-bs32", "status"] == "FAILED"
    assert "broken" not in summary["winner"]


@pytest.mark.slow
def test_joblib_launcher_two_workers_fresh_store_loses_nothing(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    assert not (root / "mlruns").exists(), "a fresh store"
    result = run_sweep(
        root, "optimizer=sgd,adam", "train.batch_size=16,64", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )
    client, parents, children = sweep_runs(cfg)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4, result.stdout[-2000:]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["tf.intra_op_threads"] == "1", "2 cores shared by 2 workers"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=32,abc", "train.batch_size='abc' is not allowed"),
        ("optimizer=sgd,adagrad", "Could not find 'optimizer/adagrad'"),
    ],
)
def test_bad_sweep_value_fails_before_any_job(tiny_data_cfg, override, message):
    cfg = tiny_data_cfg()
    result = run_sweep(Path(cfg.paths.root), override, expect_ok=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Launching" not in result.stdout + result.stderr
    _, parents, children = sweep_runs(cfg)
    assert parents == [] and children == []


def test_compare_without_sweep_says_so(compose_cfg, tmp_path):
    cfg = compose_cfg()
    with pytest.raises(PipelineError, match="No sweep found in this MLflow store"):
        compare_sweep(cfg)
    result = run_module("pipeline.compare", f"paths.root={tmp_path / 'project'}")
    assert result.returncode == 1
    assert "No sweep found" in result.stdout + result.stderr


def test_compare_unknown_parent_id(compose_cfg):
    cfg = compose_cfg("compare.parent_run_id=deadbeef")
    with pytest.raises(PipelineError, match="compare.parent_run_id='deadbeef': no such run"):
        compare_sweep(cfg)
