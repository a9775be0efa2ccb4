"""Optuna search as a Hydra sweeper: trials as child runs, a resumable study, pruning, importance."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import run_module
from mlflow.tracking import MlflowClient

from pipeline.compare import compare_sweep
from pipeline.core.store import tracking_uri
from pipeline.sweeps.callback import SWEEP_ROLE_TAG
from pipeline.sweeps.search import Pruned, TrialReporter


def search(root: Path, *overrides: str):
    result = run_module(
        "pipeline.experiment", "-m", f"paths.root={root}", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
        "train.epochs=1", *overrides,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_search_runs_trials_as_child_runs_and_resumes(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    search(root)  # the command, on tiny data
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert {r.info.run_name.split("-")[0] for r in children} == {"t0", "t1", "t2", "t3"}, "trial numbers in names"
    for run in children:
        assert run.data.params["optimizer.name"] in {"sgd", "momentum", "rmsprop", "adam"}
        assert run.data.params["train.batch_size"] in {"32", "128", "512"}
        assert 1e-4 <= float(run.data.params["optimizer.learning_rate"]) <= 0.3
    assert (root / "mlruns" / "optuna.db").is_file(), "the study lives beside the MLflow store"
    study = optuna.load_study(study_name="mnist-search", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}

    summary = compare_sweep(cfg)
    assert set(summary["importance"]) == {"optimizer", "train.batch_size", "optimizer.learning_rate"}
    assert "Parameter importance" in summary["answer"]

    search(root)  # the same command again: the study resumes
    assert len(optuna.load_study(study_name="mnist-search", storage=study._storage).trials) == 8


def test_hopeless_trial_is_pruned(tmp_path):
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    good = study.ask()
    for epoch, accuracy in enumerate([0.90, 0.95], start=1):
        good.report(accuracy, epoch)
    study.tell(good, 0.95)
    hopeless = study.ask()
    with pytest.raises(Pruned, match="pruned at epoch 1"):
        TrialReporter(hopeless)({"epoch": 1, "val_accuracy": 0.1})
    assert study._storage.get_trial(hopeless._trial_id).user_attrs["pruned_at_epoch"] == 1
