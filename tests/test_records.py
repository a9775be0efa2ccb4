"""No false records: faults provoked for real leave every run, output and report true."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Command, free_port, mlflow_service, run_module
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file
from pipeline.core.paths import project_paths
from pipeline.core.store import setup_tracking, tracking_uri
from pipeline.data.splits import load_split
from pipeline.evaluate import evaluate
from pipeline.train import train
from pipeline.training.loop import DivergedError


def store(cfg) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, (client.search_runs([experiment.experiment_id]) if experiment else [])


def test_failed_write_after_training_keeps_the_previous_model_and_its_run(tiny_data_cfg):
    """history.csv cannot be replaced after training: the model is not replaced either."""
    cfg = tiny_data_cfg()
    train(cfg)
    evaluate(cfg)
    outputs = project_paths(cfg).stage_outputs
    good_model = outputs.model.read_bytes()
    outputs.history.unlink()
    outputs.history.mkdir()  # a real folder where the file goes: the final rename fails
    cfg.train.seed = 1
    with pytest.raises(OSError, match="Is a directory"):
        train(cfg)
    assert outputs.model.read_bytes() == good_model, "the previous good model is still there"
    assert not [p for p in outputs.model.parent.iterdir() if p.name.startswith(".")], "no temporary files left"
    _, runs = store(cfg)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FINISHED"]
    outputs.history.rmdir()
    metrics = evaluate(cfg)  # logs into the run that trained this very file
    client, runs = store(cfg)
    (finished,) = [r for r in runs if r.info.status == "FINISHED"]
    assert finished.data.tags["model.sha256"] == sha256_file(outputs.model)
    assert finished.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_evaluate_refuses_a_model_no_run_recorded(tiny_data_cfg):
    cfg = tiny_data_cfg()
    train(cfg)
    model = project_paths(cfg).stage_outputs.model
    model.write_bytes(model.read_bytes() + b"\0")  # someone else's file now
    with pytest.raises(PipelineError, match="No finished training run .* recorded this model"):
        evaluate(cfg)


def test_unwritable_output_folder_fails_before_training(tiny_data_cfg):
    """An output folder that cannot be written (here a file in its place, which stops root too)."""
    cfg = tiny_data_cfg()
    reports = project_paths(cfg).reports_dir
    shutil.rmtree(reports, ignore_errors=True)
    reports.write_text("not a folder")
    result = run_module("pipeline.train", f"paths.root={cfg.paths.root}")
    assert result.returncode == 1
    assert f"Cannot write to {reports}" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    _, runs = store(cfg)
    assert runs == []


@pytest.mark.parametrize("learning_rate", [100.0, 1e4])
def test_finite_divergence_is_caught(tiny_data_cfg, learning_rate):
    """SGD blown up to chance accuracy, with a finite (clipped) loss, is a FAILED run."""
    cfg = tiny_data_cfg("optimizer=sgd", f"optimizer.learning_rate={learning_rate}", "train.epochs=3")
    with pytest.raises(DivergedError, match="diverged at epoch 1"):
        train(cfg)
    _, runs = store(cfg)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["failure_reason"].startswith("diverged at epoch 1")


@pytest.mark.parametrize("batch", ["1", "full"])
def test_divergence_rule_spares_healthy_extremes(tiny_data_cfg, batch):
    """Batch size 1 and full-batch gradient descent (near chance after few steps) are healthy runs."""
    cfg = tiny_data_cfg("optimizer=sgd", f"train.batch_size={batch}", "train.epochs=2")
    train(cfg)
    _, runs = store(cfg)
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_data_hashes_are_measured_from_the_bytes_read(tiny_data_cfg):
    cfg = tiny_data_cfg()
    paths = project_paths(cfg)
    shutil.copy(paths.processed("val"), paths.processed("train"))
    with pytest.raises(PipelineError, match="train.npz .* is not the file preprocess wrote"):
        train(cfg)
    paths.processed_meta.unlink()
    with pytest.raises(PipelineError, match="meta.json is missing"):
        train(cfg)
    _, runs = store(cfg)
    assert runs == []


@pytest.mark.parametrize(
    ("content", "name"),
    [(b"garbage, not a zip", "BadZipFile"), (None, "truncated")],
)
def test_damaged_processed_file_is_one_line(tiny_data_cfg, content, name):
    cfg = tiny_data_cfg()
    path = project_paths(cfg).processed("train")
    data = path.read_bytes()
    path.write_bytes(content if content is not None else data[: len(data) // 2])
    result = run_module("pipeline.train", f"paths.root={cfg.paths.root}")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output
    assert "train.npz" in output and "rerun preprocess" in output, name


def test_split_settings_must_match_the_data(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_module("pipeline.train", f"paths.root={cfg.paths.root}", "split.val_fraction=0.5", "split.seed=7")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "asks for split.val_fraction=0.5 split.seed=7, but the processed data was made with" in output
    assert "split.val_fraction=0.1 split.seed=42" in output
    _, runs = store(cfg)
    assert runs == []
    assert load_split(cfg, "train").x.shape[0] == 360


def test_killed_training_run_is_closed_by_the_next_command(tiny_data_cfg):
    cfg = tiny_data_cfg()
    proc = Command("pipeline.train", f"paths.root={cfg.paths.root}", "train.epochs=100000", "train.batch_size=8")
    proc.wait_for("Epoch 2/")
    proc.kill()  # SIGKILL: no finally block, no atexit
    proc.finish(60)
    _, runs = store(cfg)
    assert [r.info.status for r in runs] == ["RUNNING"], "the store cannot know yet"
    setup_tracking(cfg)  # what every later stage does first
    _, runs = store(cfg)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert f"process {proc.pid} on" in runs[0].data.tags["failure_reason"]


def test_killed_sweep_parent_and_child_are_closed_and_compare_names_no_winner(tiny_data_cfg):
    cfg = tiny_data_cfg()
    proc = Command(
        "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam",
        "train.epochs=100000", "train.batch_size=8",
    )  # fmt: skip
    proc.wait_for("Epoch 2/")
    proc.kill()
    proc.finish(60)
    assert not project_paths(cfg).sweep_record.exists(), "the killed sweep is not the sweep stage's record"
    _, runs = store(cfg)
    assert sorted(r.info.status for r in runs) == ["RUNNING", "RUNNING"], "the store cannot know yet"
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    result = run_module(
        "pipeline.compare", f"paths.root={cfg.paths.root}", f"compare.parent_run_id={parent.info.run_id}"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "is KILLED" in output and "names no winner" in output
    assert not project_paths(cfg).sweep_report("summary.json").exists()
    _, runs = store(cfg)
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"], "parent and the job under way, closed"
    plain = run_module("pipeline.compare", f"paths.root={cfg.paths.root}")  # the sweep started last: this one
    assert plain.returncode == 1 and "is KILLED" in plain.stdout + plain.stderr


def test_concurrent_stages_on_a_fresh_store_never_crash(tiny_data_cfg):
    cfg = tiny_data_cfg()
    assert not project_paths(cfg).store_db.exists(), "a fresh store"
    procs = [Command("pipeline.train", f"paths.root={cfg.paths.root}", f"train.seed={seed}") for seed in range(3)]
    outputs = [proc.finish(600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], "\n".join(o[-1500:] for o in outputs)
    _, runs = store(cfg)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3, "\n".join(
        line for o in outputs for line in o.splitlines() if "ERROR" in line or "WARNING" in line
    )


def test_ctrl_c_is_one_line(tiny_data_cfg):
    cfg = tiny_data_cfg()
    proc = Command("pipeline.train", f"paths.root={cfg.paths.root}", "train.epochs=100000", "train.batch_size=8")
    proc.wait_for("Epoch 2/")
    proc.send_signal(signal.SIGINT)
    output = proc.finish(60)
    assert proc.returncode == 130
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert "Interrupted (Ctrl-C)" in output


@pytest.mark.slow
def test_vanished_tracking_server_fails_in_time_and_keeps_the_epochs(tiny_data_cfg, tmp_path):
    cfg = tiny_data_cfg()
    previous = project_paths(cfg).stage_outputs
    for path in (previous.model, previous.history):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"previous")
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    args = ("--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1")
    port = free_port()
    with mlflow_service("server", *args, port=port) as base:
        proc = Command(
            "pipeline.train", f"paths.root={cfg.paths.root}", "tracking=server", f"tracking.uri={base}",
            "train.epochs=100000", "train.batch_size=8",
        )  # fmt: skip
        proc.wait_for("Epoch 3/")
    stopped = time.monotonic()  # the server is gone
    output = proc.finish(300)
    assert proc.returncode == 1
    assert time.monotonic() - stopped < 60, "the run fails within a minute"
    assert "Traceback" not in output
    assert previous.model.read_bytes() == previous.history.read_bytes() == b"previous", "the previous outputs stay"
    assert "stopped answering" in output and "python -m pipeline.records" in output
    kept = next((project_paths(cfg).mlruns_dir / "unlogged").glob("*.json"))
    with mlflow_service("server", *args, port=port) as base:  # back at the same address: log the kept epochs
        result = run_module("pipeline.records", str(kept))
        assert result.returncode == 0, result.stdout + result.stderr
        client = MlflowClient(tracking_uri=base)
        run = client.get_run(kept.stem)
        assert run.info.status == "FAILED"
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert len(epochs) >= 3 and epochs == list(range(1, len(epochs) + 1)), "every epoch once, none missing"


@pytest.mark.parametrize("override", ["optimizer.learning_rate=1e-30", "train.lr_factor=1e-30"])
def test_a_run_that_does_not_learn_ends_failed_naming_the_setting(tiny_data_cfg, override):
    """No better than untrained after 200 steps, with a loss near ln(10) (no divergence): a FAILED run, not a result."""
    cfg = tiny_data_cfg(override, "train.batch_size=8", "train.epochs=6")
    with pytest.raises(DivergedError, match=r"does not learn: after \d+ steps .* raise the learning rate"):
        train(cfg)
    _, runs = store(cfg)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "optimizer.learning_rate or train.lr_factor" in runs[0].data.tags["failure_reason"]


def test_a_batch_larger_than_the_training_set_is_refused_before_any_run(tiny_data_cfg):
    cfg = tiny_data_cfg("train.batch_size=100000")
    with pytest.raises(PipelineError, match=r"train.batch_size=100000 is not allowed: at most the 360 training images"):
        train(cfg)
    result = run_module(
        "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "train.batch_size=32,100000"
    )
    assert result.returncode == 1 and "train.batch_size=100000 is not allowed" in result.stdout + result.stderr
    _, runs = store(cfg)
    assert runs == [], "no run records a batch size other than the one it ran"


def test_seeds_beyond_the_seed_range_fail_the_sweep_before_any_job(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_module(
        "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam",
        f"train.seed={2**32 - 1}", "sweep.seeds=2",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "reaches seed 4294967296, beyond 2**32 - 1" in output
    _, runs = store(cfg)
    assert runs == [], "no cell with fewer seeds than it asked for"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.loss=mean_squared_error",
            "train.loss='mean_squared_error' is not allowed: one of categorical_crossentropy",
        ),
        ("train.metrics=[mae]", "train.metrics=['mae'] is not allowed: a list holding accuracy"),
    ],
)
def test_settings_the_divergence_rules_cannot_judge_are_refused(tmp_path, override, message):
    result = run_module("pipeline.train", f"paths.root={tmp_path}", override)
    assert result.returncode == 1 and message in result.stdout + result.stderr


def test_a_damaged_store_is_one_line_naming_it_and_the_fix(tiny_data_cfg):
    cfg = tiny_data_cfg()
    db = project_paths(cfg).store_db
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"SQLite format 3\0" + np.random.default_rng(0).bytes(8192))  # a header, then garbage
    result = run_module("pipeline.train", f"paths.root={cfg.paths.root}")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert f"The MLflow store sqlite:///{db} cannot be used" in output and "mv " in output, output[-2000:]
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, errors
    assert not project_paths(cfg).stage_outputs.model.exists()


@pytest.mark.slow
def test_a_server_that_vanishes_mid_sweep_fails_the_sweep_and_leaves_nothing_running(tiny_data_cfg, tmp_path):
    import json

    cfg = tiny_data_cfg()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    args = ("--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1")
    port = free_port()
    with mlflow_service("server", *args, port=port) as base:
        proc = Command(
            "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam",
            "tracking=server", f"tracking.uri={base}", "train.epochs=100000", "train.batch_size=8",
        )  # fmt: skip
        proc.wait_for("Epoch 2/")
    output = proc.finish(300)  # the server is gone
    assert proc.returncode == 1, output[-3000:]
    (record,) = [json.loads(p.read_text()) for p in (project_paths(cfg).mlruns_dir / "sweeps").glob("*.json")]
    assert record["status"] == "FAILED" and "could not be written" in record["failure_reason"]
    with mlflow_service("server", *args, port=port) as base:  # back: the next command closes what the sweep left
        result = run_module(
            "pipeline.compare", f"paths.root={cfg.paths.root}", "tracking=server", f"tracking.uri={base}"
        )
        assert result.returncode == 1 and "names no winner" in result.stdout + result.stderr
        client = MlflowClient(tracking_uri=base)
        runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
        assert runs and "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]


@pytest.mark.slow
def test_a_killed_worker_stops_the_sweep_in_one_line_and_compare_refuses_it(tiny_data_cfg):
    cfg = tiny_data_cfg()
    proc = Command(
        "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.epochs=100000", "train.batch_size=8",
    )  # fmt: skip
    seen = proc.wait_for("Epoch 2/")
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == proc.pid and b"loky" in cmdline and b"resource_tracker" not in cmdline:
            workers.append(int(stat.parent.name))
    assert workers, "".join(seen[-20:])
    os.kill(workers[0], signal.SIGKILL)
    output = proc.finish(300)
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "The sweep stopped: its launcher failed (TerminatedWorkerError" in output
    result = run_module("pipeline.compare", f"paths.root={cfg.paths.root}")  # the sweep just run, never an older one
    assert result.returncode == 1 and "names no winner" in result.stdout + result.stderr
    _, runs = store(cfg)
    assert "RUNNING" not in {r.info.status for r in runs}, "compare's start closed what the dead processes left"


def test_a_full_artifact_store_fails_the_run_and_keeps_the_previous_model(tiny_data_cfg, tmp_path):
    """A real 300 KB tmpfs over the artifact store: logging the model fails; the model, curves and run stay."""
    cfg = tiny_data_cfg()
    train(cfg)
    evaluate(cfg)
    outputs = project_paths(cfg).stage_outputs
    good = {path: path.read_bytes() for path in (outputs.model, outputs.history)}
    artifacts = project_paths(cfg).store_artifacts
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(artifacts)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
    try:
        cfg.train.seed = 1  # another model, which cannot be recorded
        with pytest.raises(OSError, match="No space left on device"):
            train(cfg)
        assert {path: path.read_bytes() for path in good} == good, "the previous model and curves are still there"
        assert not [p for p in outputs.model.parent.iterdir() if p.name.startswith(".")], "no temporary files left"
        _, runs = store(cfg)
        assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
        (finished,) = [r for r in runs if r.info.status == "FINISHED"]
        assert finished.data.tags["model.sha256"] == sha256_file(outputs.model), "the files' run is the good one"
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)


def test_a_dataset_logged_by_two_jobs_at_once_is_logged_again_not_lost():
    """The store's get-or-create of a dataset is two steps: the job that loses the race logs again."""
    from mlflow.exceptions import MlflowException

    from pipeline.training.records import past_dataset_race

    race = "BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"
    calls = []

    def lost_once():
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException(race)

    past_dataset_race(lost_once)
    assert len(calls) == 2, "logged again after the lost race"

    def broken():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    calls.clear()
    with pytest.raises(MlflowException, match="run not found"):
        past_dataset_race(broken)
    assert len(calls) == 1, "any other error is not retried"

    def always_lost():
        calls.append(1)
        raise MlflowException(race)

    calls.clear()
    with pytest.raises(MlflowException, match="UNIQUE constraint failed"):
        past_dataset_race(always_lost)
    assert len(calls) == 3, "three tries, then the error"


def test_a_failed_evaluate_write_keeps_the_previous_metrics_and_plots(tiny_data_cfg):
    """The metrics change with their plots: one plot cannot be written, so no file is replaced."""
    cfg = tiny_data_cfg()
    train(cfg)
    evaluate(cfg)
    outputs = project_paths(cfg).stage_outputs
    outputs.metrics.write_text('{"previous": true}\n')
    plot = outputs.confusion_matrix.read_bytes()
    outputs.misclassified.unlink()
    outputs.misclassified.mkdir()  # a real folder where the last file goes: its final rename fails
    with pytest.raises(OSError, match="Is a directory"):
        evaluate(cfg)
    assert outputs.metrics.read_text() == '{"previous": true}\n', "the previous metrics stay"
    assert outputs.confusion_matrix.read_bytes() == plot, "and the previous plot"
    assert not [p for p in outputs.metrics.parent.iterdir() if p.name.startswith(".")], "no temporary files left"
