"""The job's side of an Optuna search (`hydra/sweeper=optuna`): its trial, pruning, importances.

A job finds its trial in the study's storage by the sweep and job number the sweeper
recorded, reports its validation accuracy after every epoch, and stops as soon as the
pruner calls the trial hopeless: the run ends KILLED with the reason, the trial PRUNED.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

from pipeline.paths import project_paths

log = logging.getLogger(__name__)

OPTUNA_SWEEPER = "OptunaSweeper"


class Pruned(Exception):  # noqa: N818 - a decision, not an error
    """The search's pruner stopped this trial (ends its run KILLED)."""


def study_storage(cfg: DictConfig) -> str:
    """Where studies live: `<mlruns_dir>/optuna.db`, beside the MLflow store (so a search resumes)."""
    db = project_paths(cfg).mlruns_dir / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def job_trial(hydra_cfg: DictConfig, cfg: DictConfig) -> Any | None:
    """This job's Optuna trial, when an Optuna sweeper launched it."""
    sweeper = hydra_cfg.sweeper
    if not str(sweeper.get("_target_", "")).endswith(OPTUNA_SWEEPER):
        return None
    import optuna
    from optuna.trial import TrialState

    from hydra_plugins.mnist_pipeline.optuna_sweeper import JOB_ATTR, SWEEP_ATTR
    from pipeline.tracking import PARENT_RUN_ENV

    storage = sweeper.get("storage") or study_storage(cfg)
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
    sweep_id, num = os.environ.get(PARENT_RUN_ENV), int(hydra_cfg.job.num)
    for trial in reversed(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        if trial.user_attrs.get(JOB_ATTR) == num and (sweep_id is None or trial.user_attrs.get(SWEEP_ATTR) == sweep_id):
            return optuna.trial.Trial(study, trial._trial_id)
    return None


class TrialReporter:
    """Per-epoch validation accuracy to the trial; raises `Pruned` when the pruner says stop."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def __call__(self, row: dict[str, float]) -> None:
        from hydra_plugins.mnist_pipeline.optuna_sweeper import PRUNED_ATTR

        epoch = int(row["epoch"])
        self.trial.report(row["val_accuracy"], epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, epoch)
            raise Pruned(
                f"pruned at epoch {epoch}: validation accuracy {row['val_accuracy']:.4f} is below the median of "
                "earlier trials at this epoch (Optuna MedianPruner)"
            )


def importances(study_name: str, storage: str, sweep_id: str) -> dict[str, float]:
    """Parameter importance (fANOVA) over the finished trials of one sweep; empty if too few."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("sweep_id") == sweep_id]
    if len(trials) < 2:
        return {}
    subset = optuna.create_study(direction="maximize")
    subset.add_trials(trials)
    try:
        return optuna.importance.get_param_importances(subset)
    except (RuntimeError, ValueError) as err:  # e.g. every trial with the same parameters
        log.warning("No parameter importance for this search: %s", err)
        return {}
