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


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes"])
def test_every_sampler_of_the_official_plugins_config_searches(tiny_data_cfg, sampler):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    space = (
        [
            "~hydra.sweeper.params",
            "+hydra.sweeper.params={optimizer: 'choice(sgd, adam)', train.batch_size: 'choice(32, 64)'}",
        ]
        if sampler == "grid"  # a grid is choices only
        else []
    )
    name = f"hydra.sweeper.study_name={sampler}"
    search(root, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.sampler.seed=1", name, *space)
    study = optuna.load_study(study_name=sampler, storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    (parent,) = [
        r for r in client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
        if r.data.tags.get("optuna.study") == sampler
    ]  # fmt: skip
    expected = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "cmaes": "CmaEsSampler"}
    assert parent.data.tags["optuna.sampler"] == expected[sampler] and len(study.trials) == 4
    if sampler == "grid":
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4, "the 2 x 2 grid, each point once"


def test_a_trial_whose_sampled_settings_are_refused_is_a_failed_run_and_the_search_goes_on(tiny_data_cfg):
    """The callback checks the config trials start from; a sampled value the schema refuses fails that trial only."""
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    space = "+hydra.sweeper.params={optimizer: 'choice(sgd, adam)', train.epochs: 'choice(1, 0)'}"
    search(root, "hydra/sweeper/sampler=grid", "~hydra.sweeper.params", space, "hydra.sweeper.study_name=refused")
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    failed = [r for r in children if r.info.status == "FAILED"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert len(children) == 4 and len(failed) == 2 and len(finished) == 2, [r.info.status for r in children]
    for run in failed:
        assert run.info.run_name.endswith("-refused") and "train.epochs=0" in run.data.tags["failure_reason"]
        assert run.data.tags["sweep.cell"] == run.info.run_name and run.data.params["train.epochs"] == "0"
    assert {r.data.params["train.epochs"] for r in finished} == {"1"}
    assert parent.info.status == "FINISHED", "the search went on past the refused trials"


def test_a_search_minimises_validation_loss_with_a_hyperband_pruner(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    search(root, "optimized_metric=val_loss", "hydra.sweeper.direction=minimize", "hydra/sweeper/pruner=hyperband",
           "hydra.sweeper.study_name=loss")  # fmt: skip
    study = optuna.load_study(study_name="loss", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    (parent,) = [
        r for r in client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
        if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"
    ]  # fmt: skip
    assert parent.data.tags["optuna.pruner"] == "HyperbandPruner" and parent.data.tags["optuna.direction"] == "minimize"
    losses = {}
    for run in client.search_runs([client.get_experiment_by_name("mnist").experiment_id]):
        if run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags:
            losses[int(run.info.run_name.split("-")[0][1:])] = run.data.metrics["val_loss"]
    values = {t.number: t.value for t in study.trials if t.value is not None}
    assert values and all(values[n] == pytest.approx(losses[n]) for n in values), "each trial told its val_loss"
    refused = run_module(
        "pipeline.experiment", "-m", f"paths.root={root}", "hydra/sweeper=optuna", "optimized_metric=val_loss",
    )  # fmt: skip
    assert refused.returncode == 1 and "wants direction=minimize" in refused.stdout + refused.stderr


def test_a_lightning_hydra_template_search_file_runs_unchanged(tiny_data_cfg):
    """conf/hparams_search/mnist_optuna.yaml: the template's file, only its parameter names changed."""
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    result = run_module(
        "pipeline.experiment",
        f"paths.root={root}",
        "hparams_search=mnist_optuna",
        "hydra.sweeper.n_trials=2",
        "train.epochs=1",
    )  # fmt: skip  (no -m: the file sets hydra.mode=MULTIRUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(SWEEP_ROLE_TAG) == "sweep"]
    assert parent.data.tags["sweep.sweeper"] == "OptunaSweeper" and parent.data.tags["optuna.study"].startswith(
        "search-"
    )
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(r.data.params["train.batch_size"] in {"32", "64", "128", "256"} for r in children)
