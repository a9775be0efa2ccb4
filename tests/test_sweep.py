"""Sweeps: real Hydra multiruns of tiny jobs in a subprocess, grouped in MLflow, compared."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import Command, run_module, run_sweep, sweep_record
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.compare import compare_sweep
from pipeline.core.errors import PipelineError
from pipeline.core.paths import project_paths
from pipeline.core.store import tracking_uri
from pipeline.sweeps.callback import SWEEP_ROLE_TAG
from pipeline.sweeps.grid import expand_grid, grid_params


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
        assert run.data.tags["sweep.cell"] == run.info.run_name, "the cell's runs share the tag"
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
        assert "test_accuracy" in run.data.metrics
    (saved,) = root.glob("logs/multirun/**/multirun.yaml")  # the sweep's config, where Hydra's sweeper keeps it
    assert "optimizer=sgd,adam" in OmegaConf.load(saved).hydra.overrides.task
    record = sweep_record(root)
    assert record["parent_run_id"] == parent.info.run_id
    assert set(record["runs"]) == {r.info.run_id for r in children}, "keyed by run id"
    assert {v["status"] for v in record["runs"].values()} == {"FINISHED"}
    assert (record["finished"], record["failed"]) == (4, 0)

    result = compare_sweep(cfg)
    table, cells = result["table"], result["cells_table"]
    assert len(table) == 4 and result["finished"] == 4 and result["failed"] == 0
    settings = json.loads((root / "reports/sweep/summary.json").read_text())["settings"]
    assert settings["train.epochs"] == "1" and settings["dataset.name"] == "mnist", "what its runs share"
    assert not {"train.batch_size", "optimizer.name", "train.seed"} & set(settings), "what the sweep compares"
    by_id = {r.info.run_id: r for r in children}
    for row in table.itertuples():
        assert row.test_accuracy == pytest.approx(by_id[row.run_id].data.metrics["test_accuracy"])
        cell = cells[(cells.optimizer == row.optimizer) & (cells.batch_size == row.batch_size)].iloc[0]
        assert cell.n == 1 and cell["mean"] == pytest.approx(row.test_accuracy)
    assert result["winner"]["val_mean"] == pytest.approx(table["final_val_accuracy"].max()), "chosen on validation"
    out = root / "reports/sweep"
    pivot = (out / "pivot.csv").read_text().splitlines()
    assert pivot[0] == "optimizer,16,64" and sorted(line.split(",")[0] for line in pivot[1:]) == ["adam", "sgd"]
    curves = (out / "curves.csv").read_text().splitlines()
    assert curves[0].startswith("run_name,cell,optimizer,batch_size,seed,epoch"), "no run ids in committed files"
    assert len(curves) == 1 + 4, "one curve point per run per epoch"
    for name in ("curves.png", "heatmap.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/runs.md", "comparison/heatmap.png", "comparison/summary.json"} <= logged
    assert {"comparison/timing.csv", "comparison/accuracy_vs_time.png"} <= logged, "timings: MLflow only"
    aggregates = client.get_run(parent.info.run_id).data.metrics  # each cell's aggregates on the parent run
    for row in table.itertuples():
        assert aggregates[f"cell.{row.cell}.test_accuracy_mean"] == pytest.approx(row.test_accuracy)
        assert aggregates[f"cell.{row.cell}.test_accuracy_n"] == 1


def test_failed_job_is_recorded_and_the_sweep_goes_on(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    # A learning rate that blows the weights up: the config is valid, the job fails while it trains.
    run_sweep(root, "optimizer=sgd,adam", "optimizer.learning_rate=0.01,1e30", "train.batch_size=32")
    _, parents, children = sweep_runs(cfg)
    statuses = {r.info.run_name: r.info.status for r in children}
    assert statuses == {
        "sgd-bs32-lr0.01": "FINISHED",
        "sgd-bs32-lr1e+30": "FAILED",
        "adam-bs32-lr0.01": "FINISHED",
        "adam-bs32-lr1e+30": "FAILED",
    }
    failed = next(r for r in children if r.info.status == "FAILED")
    assert "diverged" in failed.data.tags["failure_reason"]
    assert parents[0].info.status == "FINISHED"
    record = sweep_record(root)
    assert (record["finished"], record["failed"]) == (2, 2)
    summary = compare_sweep(cfg)
    assert (summary["finished"], summary["failed"]) == (2, 2)
    assert summary["table"].set_index("run_name").loc["sgd-bs32-lr1e+30", "status"] == "FAILED"


def test_sweep_whose_every_run_failed_exits_non_zero(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_sweep(Path(cfg.paths.root), "optimizer=sgd", "optimizer.learning_rate=1e30,1e31", expect_ok=False)
    assert result.returncode == 1
    assert "Every run of the sweep failed (2 of 2)" in result.stdout + result.stderr
    _, parents, children = sweep_runs(cfg)
    assert [r.info.status for r in children] == ["FAILED", "FAILED"]
    assert parents[0].info.status == "FAILED"


def test_sweep_over_learning_rates_keeps_every_run_apart(tiny_data_cfg):
    """Two jobs that differ in learning rate only: two names, two records, the diverged one FAILED."""
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    run_sweep(root, "optimizer=sgd", "optimizer.learning_rate=0.01,1e30")
    _, _, children = sweep_runs(cfg)
    assert {r.info.run_name: r.info.status for r in children} == {
        "sgd-bs128-lr0.01": "FINISHED",
        "sgd-bs128-lr1e+30": "FAILED",
    }
    record = sweep_record(root)
    assert {v["name"]: v["status"] for v in record["runs"].values()} == {
        "sgd-bs128-lr0.01": "FINISHED",
        "sgd-bs128-lr1e+30": "FAILED",
    }
    assert (record["finished"], record["failed"]) == (1, 1)


def test_seeds_are_replicate_runs_of_one_cell(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    run_sweep(root, "optimizer=sgd,adam", "sweep.seeds=2")
    _, _, children = sweep_runs(cfg)
    assert sorted(r.info.run_name for r in children) == [
        "adam-bs128-s0",
        "adam-bs128-s1",
        "sgd-bs128-s0",
        "sgd-bs128-s1",
    ]
    assert {r.data.params["train.seed"] for r in children} == {"0", "1"}
    summary = compare_sweep(cfg)
    assert {(c["cell"], c["n"]) for c in summary["cells"]} == {("adam-bs128", 2), ("sgd-bs128", 2)}
    for cell in summary["cells"]:
        low, high = cell["ci95"]
        assert low <= cell["mean"] <= high


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
        assert run.data.tags["threads"] == "1", "2 cores shared by 2 workers"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=32,abc", "train.batch_size='abc' is not allowed"),
        ("optimizer=sgd,adagrad", "Could not find 'optimizer/adagrad'"),
        ("optimizer.learning_rate=0.01,inf", "optimizer.learning_rate=inf is not allowed"),
        ("model.activation=relu,nonsense", "model=mlp (pipeline.model.networks.mlp) cannot be built"),
        # each job would run seeds 0-1 and 1-2: seed 1 twice in one cell
        ("train.seed=0,1 sweep.seeds=2", "train.seed=0,1 with sweep.seeds=2: the jobs run seeds 0-1 and 1-2"),
        ("++train.seed=5,0,6 sweep.seeds=2", "train.seed=5,6 with sweep.seeds=2: the jobs run seeds 5-6 and 6-7"),
    ],
)
def test_bad_sweep_value_fails_before_any_job(tiny_data_cfg, override, message):
    cfg = tiny_data_cfg()
    result = run_sweep(Path(cfg.paths.root), *override.split(), expect_ok=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Launching" not in result.stdout + result.stderr
    _, parents, children = sweep_runs(cfg)
    assert parents == [] and children == []


def test_compare_without_sweep_says_so(compose_cfg, tmp_path):
    cfg = compose_cfg()
    with pytest.raises(PipelineError, match="No sweep record at .*: run a sweep first"):
        compare_sweep(cfg)
    result = run_module("pipeline.compare", f"paths.root={tmp_path / 'project'}")
    assert result.returncode == 1
    assert "No sweep record" in result.stdout + result.stderr


def test_compare_unknown_parent_id(compose_cfg):
    cfg = compose_cfg("compare.parent_run_id=deadbeef")
    with pytest.raises(PipelineError, match="Sweep parent run 'deadbeef' is not in the MLflow store"):
        compare_sweep(cfg)


def test_the_time_answer_names_the_cells_its_seeds_cannot_tell_apart_and_the_fewest_steps():
    from pipeline.analysis import summary

    def cell(seconds: list[float] | None, steps: float | None) -> dict:
        median = None if seconds is None else sorted(seconds)[len(seconds) // 2]
        return {
            "runs": 3, "reached": 0 if seconds is None else 3, "share": 0.0 if seconds is None else 1.0,
            "median_train_seconds": median, "median_steps": steps, "median_epochs": 1.0, "median_samples": 1.0,
            "range_train_seconds": None if seconds is None else [min(seconds), max(seconds)],
        }  # fmt: skip

    times = {
        "adam-bs128": cell([0.9, 1.0, 1.4], 400),  # fastest in seconds
        "sgd-bs128": cell([1.3, 1.5, 1.6], 300),  # its quickest seed beats the fastest's slowest: not told apart
        "sgd-bs32": cell([1.5, 1.6, 2.0], 1200),  # every seed slower than every seed of the fastest
        "sgd-bs512": cell(None, None),  # never reached the target
    }
    assert summary.quickest(times) == "adam-bs128"
    assert summary.as_fast_as_fastest(times) == ["sgd-bs128"]
    assert summary.quickest(times, "median_steps") == "sgd-bs128"
    text = summary.target_answer(times, 0.97)
    assert "Fastest to 0.97 validation accuracy: adam-bs128 (median 1.00 s" in text
    assert "Not told apart from it in seconds (their seeds' times overlap): sgd-bs128." in text
    assert "Fewest steps to it: sgd-bs128 (median 300)" in text
    times["sgd-bs128"] = cell([1.5, 1.6, 1.7], 300)
    assert summary.as_fast_as_fastest(times) == [] and "Not told apart" not in summary.target_answer(times, 0.97)


def test_two_sweeps_at_once_keep_a_record_each_and_compare_takes_the_one_named(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    grids = (["optimizer=sgd,adam"], ["optimizer=rmsprop", "train.batch_size=16,64,128"])
    procs = [
        Command("pipeline.experiment", "-m", f"paths.root={root}", "train.epochs=1", "sweep=none", *g) for g in grids
    ]
    outputs = [p.finish(600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    records = [json.loads(p.read_text()) for p in (root / "mlruns" / "sweeps").glob("*.json")]
    assert sorted(len(r["runs"]) for r in records) == [2, 3], "neither sweep overwrote the other's record"
    assert {r["status"] for r in records} == {"FINISHED"}
    for record in records:
        summary = compare_sweep(tiny_data_cfg(f"compare.parent_run_id={record['parent_run_id']}"))
        assert summary["parent_run_id"] == record["parent_run_id"] and summary["runs"] == len(record["runs"])


def test_compare_replaces_every_report_or_none(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    run_sweep(root, "optimizer=sgd,adam", "sweep.seeds=2")
    compare_sweep(cfg)
    out = root / "reports" / "sweep"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    run_sweep(root, "optimizer=sgd,momentum", "sweep.seeds=2")  # a new sweep to compare
    (out / "heatmap.png").unlink()
    (out / "heatmap.png").mkdir()  # its rename fails, after every other file was written
    with pytest.raises(IsADirectoryError):
        compare_sweep(cfg)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == {k: v for k, v in before.items() if k != "heatmap.png"}, "all old, none of the new sweep"
    assert sorted(p.name for p in out.iterdir()) == sorted(before), "no temporary files left"


def test_compare_states_both_answers_best_at_the_budget_and_fastest_to_the_target(tiny_data_cfg):
    cfg = tiny_data_cfg("compare.target=0.5")
    root = Path(cfg.paths.root)
    run_sweep(root, "optimizer=sgd,adam", "sweep.seeds=2", "compare.target=0.5")
    summary = compare_sweep(cfg)
    times = summary["time_to_target"]
    assert set(times) == {"sgd-bs128", "adam-bs128"} and all(t["runs"] == 2 for t in times.values())
    table = summary["table"]
    for cell, t in times.items():
        rows = table[table["cell"] == cell]
        assert t["reached"] == int(rows["target_reached"].sum()) and t["share"] == t["reached"] / 2
        if t["reached"] == 2:
            assert t["median_steps"] == pytest.approx(rows["target_steps"].median())
    fastest = summary["fastest_to_target"]
    assert fastest in times and f"Fastest to 0.5 validation accuracy: {fastest}" in summary["answer"]
    for cell in summary["as_fast_as_fastest"]:  # a seed of theirs no later than the fastest's slowest
        assert times[cell]["range_train_seconds"][0] <= times[fastest]["range_train_seconds"][1]
    fewest = summary["fewest_steps_to_target"]
    assert times[fewest]["median_steps"] == min(t["median_steps"] for t in times.values() if t["median_steps"])
    assert f"Fewest steps to it: {fewest}" in summary["answer"]
    assert set(summary["scaling"]) == {"sgd", "adam"}, "one batch size each: rows, but no scaling to read"
    assert all(s["critical_batch_size"] is None and len(s["rows"]) <= 1 for s in summary["scaling"].values())
    assert "Chosen on validation" in summary["answer"], "both answers"
    for cell, median in summary["noise_scale"].items():  # the median of the seeds' last noise scale estimates
        assert median == pytest.approx(table[table["cell"] == cell]["noise_scale"].median()) and median > 0
    published = pd.read_csv(project_paths(cfg).sweep_report("cells.csv")).set_index("cell")["noise_scale_median"]
    assert published.to_dict() == pytest.approx(summary["noise_scale"])
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    for run in table[table["target_reached"]].itertuples():  # the estimate at the end of the epoch it got there
        history = {m.step: m.value for m in client.get_metric_history(run.run_id, "noise_scale")}
        assert run.noise_scale_at_target == history[math.ceil(run.target_epochs - 1e-9)], run.run_name
    assert table.loc[~table["target_reached"], "noise_scale_at_target"].isna().all()
    at_target = summary["noise_scale_at_target"]
    assert set(at_target) == set(times) and any(v is not None for v in at_target.values())
    with pytest.raises(PipelineError, match=r"compare.target=0.9, but runs .* recorded their time to 0.5"):
        compare_sweep(tiny_data_cfg("compare.target=0.9"))
