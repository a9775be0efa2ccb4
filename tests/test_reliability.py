"""Faults survived: bad values, divergence, interruption, crashes mid-write, parallel writers, seeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Command, run_module
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path, write_npz
from pipeline.core.paths import project_paths
from pipeline.core.store import tracking_uri
from pipeline.train import train
from pipeline.training.loop import DivergedError
from pipeline.training.runner import run_experiment

# How a stopped command ends: Ctrl-C, `kill`, and a closed terminal (a dropped ssh session).
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
STOP_LINE = {
    signal.SIGINT: "Interrupted (Ctrl-C)",
    signal.SIGTERM: "Terminated (SIGTERM)",
    signal.SIGHUP: "Hung up (SIGHUP: the terminal closed)",
}


def all_runs(cfg):
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, (client.search_runs([experiment.experiment_id]) if experiment else [])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=0"], "train.batch_size=0 is not allowed: a positive integer or 'full'"),
        (["train.batch_size=abc"], "train.batch_size='abc' is not allowed"),
        (["train.epochs=0"], "train.epochs=0 is not allowed: a positive integer"),
        (["optimizer.learning_rate=-0.1"], "optimizer.learning_rate=-0.1 is not allowed: a finite number > 0"),
        (["optimizer.learning_rate=inf"], "optimizer.learning_rate=inf is not allowed: a finite number > 0"),
        (["train.seed=-1"], "train.seed=-1 is not allowed: an integer in [0, 2**32)"),
        (["+train.batchsize=3"], "train.batchsize is not a setting of this pipeline (misspelt?)"),
        (["optimizer=momentum", "optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not allowed: a number in [0, 1)"),
        (["split.val_fraction=1.5"], "split.val_fraction=1.5 is not allowed"),
        (["model.hidden_units=[512,-3]"], "model.hidden_units=[512, -3] is not allowed"),
        (["train.epoch=3"], "train.epoch is not a setting of this pipeline (misspelt?)"),
        (["train.epochs=five"], "could not be converted to Integer"),
        (
            ["train.backend=tensorflow", "train.stop_at_target=true"],
            "train.stop_at_target=true needs train.backend=jax",
        ),
    ],
)
def test_bad_value_exits_non_zero_with_message_and_changes_nothing(tmp_path, overrides, message):
    result = run_module("pipeline.train", f"paths.root={tmp_path}", *overrides)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for folder in ("data", "models", "reports", "mlruns"):
        assert not (tmp_path / folder).exists(), folder


@pytest.mark.parametrize("module", ["pipeline.train", "pipeline.sweep"])
def test_filesystem_root_as_project_root_is_refused_before_hydra_writes_logs(module):
    before = set(os.listdir("/"))
    result = run_module(module, "paths.root=/")
    assert result.returncode == 1
    assert "paths.root=/ is the filesystem root" in result.stderr and "Traceback" not in result.stderr
    assert set(os.listdir("/")) == before, "nothing is created at the filesystem root"


def test_diverging_run_fails_keeps_curves_and_previous_model(tiny_data_cfg):
    cfg = tiny_data_cfg("train.epochs=3")
    model = project_paths(cfg).stage_outputs.model
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"previous good model")
    cfg.optimizer.learning_rate = 1e30
    with pytest.raises(DivergedError, match="diverged at epoch 1"):
        train(cfg)
    assert model.read_bytes() == b"previous good model"
    client, runs = all_runs(cfg)
    (run,) = runs
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("diverged at epoch 1")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_seconds")] == [1]


def test_diverging_job_does_not_stop_the_sweep(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_module(
        "pipeline.experiment",
        "-m",
        f"paths.root={cfg.paths.root}",
        "sweep=none",
        "optimizer=sgd",
        "optimizer.learning_rate=1e30,0.01",
        "train.epochs=1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _, runs = all_runs(cfg)
    children = {r.data.params["optimizer.learning_rate"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children["1e+30"].info.status == "FAILED"
    assert children["1e+30"].data.tags["failure_reason"].startswith("diverged at epoch 1")
    assert children["0.01"].info.status == "FINISHED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_training_ends_killed_and_keeps_old_outputs(tiny_data_cfg, sig):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    paths = project_paths(cfg).stage_outputs
    for path in (paths.model, paths.history):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"previous")
    proc = Command("pipeline.train", f"paths.root={root}", "train.epochs=100000", "train.batch_size=8")
    seen = proc.wait_for("Epoch 3/", timeout=120)  # training is under way
    proc.send_signal(sig)
    output = proc.finish(60)
    assert proc.returncode == EXIT_STATUS[sig], output[-3000:]
    message = STOP_LINE[sig]
    assert f"{message}; every MLflow run this command started ended KILLED." in output
    assert "Traceback" not in output, "one line, as for Ctrl-C"
    client, runs = all_runs(cfg)
    (run,) = runs
    assert run.info.status == "KILLED", "".join(seen[-20:])
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) >= 2, "curves so far are kept"
    assert paths.model.read_bytes() == b"previous"
    assert paths.history.read_bytes() == b"previous"


def test_a_stop_inside_the_stores_sql_waits_until_the_interpreter_has_left_it():
    """A signal that lands in SQLAlchemy code is raised 50 ms later, outside it; elsewhere at once."""
    from pipeline.core import errors

    store_module = {"__name__": "sqlalchemy.engine.example", "errors": errors, "sys": sys}
    exec("def write():\n    errors.raise_terminated(15, sys._getframe())\n    return 'committed'", store_module)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        assert store_module["write"]() == "committed", "not raised inside the SQL code"
        assert isinstance(errors.STOPS[-1], errors.Terminated)
        with pytest.raises(errors.Terminated):
            time.sleep(5)  # outside it: the timer's next look raises the stop
        errors.STOPS.clear()
        with pytest.raises(errors.Terminated):
            errors.raise_terminated(15, sys._getframe())  # outside store code: at once
        store_module["write"]()
        with pytest.raises(errors.Terminated):
            errors.check_stop()  # the training loop's safe point raises it first ...
        time.sleep(0.3)  # ... and the timer no longer does
    finally:
        errors.STOPS.clear()
        errors.PENDING.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_sweep_ends_parent_and_current_child_killed(tiny_data_cfg, sig):
    cfg = tiny_data_cfg()
    proc = Command(
        "pipeline.experiment", "-m", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam",
        "train.epochs=100000", "train.batch_size=8",
    )  # fmt: skip
    proc.wait_for("Epoch 2/", timeout=120)
    proc.send_signal(sig)
    output = proc.finish(60)
    assert proc.returncode == EXIT_STATUS[sig], output[-3000:]
    message = STOP_LINE[sig]
    assert f"{message}; every MLflow run this command started ended KILLED." in output
    assert "Traceback" not in output, "one line, as for training"
    _, runs = all_runs(cfg)
    children = {r.info.run_name: r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    parents = [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert children == {"sgd-bs8": "KILLED"}, "the job under way; the next one never started"
    assert parents == ["KILLED"]


def test_a_nohup_command_keeps_ignoring_sighup():
    """Under `nohup` a closed terminal must not stop the command; elsewhere SIGHUP raises the stop."""
    script = (
        "import os, signal\n"
        "from pipeline.core.errors import Terminated, install_stop_handlers, stopped\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts it\n"
        "install_stop_handlers()\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "print('still running')\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's command\n"
        "install_stop_handlers()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "except Terminated as stop:\n"
        "    print(*stopped(stop))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["still running", "129 Hung up (SIGHUP: the terminal closed)"], result.stderr


def test_a_run_started_outside_a_command_ends_on_sighup_too_and_the_stop_survives_pickling():
    """A launcher's worker never runs a command's handlers: the run's own block makes SIGHUP a stop."""
    script = (
        "import os, pickle, signal\n"
        "from pipeline.core.errors import Terminated\n"
        "from pipeline.core.store import sigterm_raises\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"
        "try:\n"
        "    with sigterm_raises():\n"
        "        os.kill(os.getpid(), signal.SIGHUP)\n"
        "except Terminated as stop:\n"
        "    again = pickle.loads(pickle.dumps(stop))  # as a worker's stop travels back\n"
        "    print(again.signum, again.args[0], signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["1 received signal 1 True"], result.stderr


def test_processed_data_of_another_dataset_is_refused_before_any_run_or_file(tiny_data_cfg, compose_cfg):
    """data/processed serves whichever dataset preprocess last made: a run of another dataset is refused."""
    tiny_data_cfg("dataset=fashion_mnist")  # downloaded and preprocessed as Fashion-MNIST
    cfg = compose_cfg("train.epochs=1")  # the same project, the default dataset (mnist)
    for command in (train, run_experiment):
        with pytest.raises(PipelineError, match=r"dataset=mnist \(mnist.npz\), but the processed data was made from "
                           r"fashion_mnist.npz. Make the data for it first"):  # fmt: skip
            command(cfg)
    assert not project_paths(cfg).stage_outputs.model.exists()
    _, runs = all_runs(cfg)
    assert runs == []
    result = run_module("pipeline.sweep", f"paths.root={cfg.paths.root}", "sweep=none", "optimizer=sgd,adam")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "optimizer=sgd]: This run asks for dataset=mnist" in output, output
    _, runs = all_runs(cfg)
    assert runs == [], "refused before the parent run"


def test_crash_while_writing_keeps_the_old_file(tmp_path):
    target = tmp_path / "train.npz"
    write_npz(target, {"x": np.ones(10)})
    before = target.read_bytes()
    with pytest.raises(ValueError, match="Object arrays cannot be saved"):
        write_npz(target, {"x": np.zeros(10_000), "y": np.array([object()], dtype=object)})
    assert target.read_bytes() == before
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash in the middle of writing")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.npz"], "no temporary files left behind"


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_data_cfg):
    cfg = tiny_data_cfg("train.epochs=2", "tracking.enabled=false")
    histories, accuracies = [], []
    for seed in (3, 3, 4):
        cfg.train.seed = seed
        metrics = run_experiment(cfg)
        histories.append(project_paths(cfg).stage_outputs.history.read_text().splitlines())
        accuracies.append(metrics["test_accuracy"])

    def losses(lines):
        return [line.split(",")[1:5] for line in lines[1:]]  # accuracy, loss, val_accuracy, val_loss

    assert losses(histories[0]) == losses(histories[1])
    assert accuracies[0] == accuracies[1]
    assert losses(histories[0]) != losses(histories[2])


@pytest.mark.slow
def test_joblib_sweep_six_jobs_three_workers_fresh_store_repeatedly(tiny_data_cfg, tmp_path):
    cfg = tiny_data_cfg()
    for attempt in range(3):
        store = tmp_path / f"store{attempt}"
        result = run_module(
            "pipeline.experiment",
            "-m",
            f"paths.root={cfg.paths.root}",
            f"paths.mlruns_dir={store}",
            "sweep=none",
            "optimizer=sgd,adam,rmsprop",
            "train.batch_size=16,32",
            "train.epochs=2",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=3",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "database is locked" not in result.stdout + result.stderr
        client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("mnist")
        children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 6, f"attempt {attempt}"
        for run in children:
            assert run.info.status == "FINISHED"
            for name in ("loss", "val_loss", "val_accuracy"):
                assert len(client.get_metric_history(run.info.run_id, name)) == 2, (attempt, name)
