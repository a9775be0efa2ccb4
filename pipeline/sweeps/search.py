"""Optuna searches (`hydra/sweeper=optuna`): the search itself, and each trial's side of it.

`hydra-optuna-sweeper` 1.3.0 pins optuna < 3 and does not install with Python 3.11 and our
pins, so the search is this small module behind the documented Hydra extension point
(`hydra_plugins/mnist_pipeline/sweepers.py`). It reads the search space from
`hydra.sweeper.params` in Hydra's sweep grammar (`choice(a,b)`, `interval(lo,hi)`,
`tag(log, interval(lo,hi))`, `range(a,b)`, or a fixed value), asks Optuna for `n_trials`
trials, `n_jobs` at a time, launches each as a job through the configured launcher and
tells Optuna the job's return value (its `optimized_metric`, validation accuracy or loss).
A job finds its trial by the sweep and job number recorded on it, reports the metric after
every epoch, and stops when the pruner calls it hopeless: its run ends KILLED, the trial
PRUNED. The study lives in `<mlruns_dir>/optuna.db` beside the MLflow store, so the
same command resumes it.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from typing import Any

from omegaconf import DictConfig

from pipeline.core import env
from pipeline.core.errors import PipelineError, RunStopped
from pipeline.core.paths import project_paths

log = logging.getLogger(__name__)

OPTUNA_SWEEPER = "OptunaSweeper"
# Trial user attributes through which a job finds its trial.
SWEEP_ATTR, JOB_ATTR, PRUNED_ATTR = "sweep_id", "hydra_job_num", "pruned_at_epoch"


class Pruned(RunStopped):
    """The search's pruner stopped this trial (its run ends KILLED)."""


def study_storage(cfg: DictConfig) -> str:
    """Where studies live: `<mlruns_dir>/optuna.db`, beside the MLflow store (so a search resumes)."""
    db = project_paths(cfg).optuna_db
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def distribution(override: Any) -> Any:
    """The Optuna distribution of one search-space entry, or None for a fixed value."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(override.sweep_iterator(transformer=lambda x: x)))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return d.IntDistribution(int(start), int(stop) - 1, step=int(step))
        return d.FloatDistribution(float(start), float(stop), step=float(step))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int) and not log_scale:
            return d.IntDistribution(value.start, value.end)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    return None


class OptunaSearch:
    """An Optuna study, one Hydra job per trial, configured as Hydra's official optuna sweeper is.

    `sampler` and `pruner` are `_target_` nodes (the `hydra/sweeper/sampler` and `pruner`
    groups: tpe, random, grid, cmaes; median, hyperband, none); `direction` is maximize or
    minimize, the objective the config's `optimized_metric`; `custom_search_space` names a
    function `(config, trial)` that suggests further parameters. The old keys `seed`,
    `n_startup_trials` and `n_warmup_steps` still set the sampler's and pruner's.
    """

    def __init__(
        self,
        hydra_context: Any,
        task_function: Any,
        config: DictConfig,
        params: dict[str, str] | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        study_name: str | None = "mnist-search",
        storage: str | None = None,
        direction: str = "maximize",
        sampler: Any = None,
        pruner: Any = None,
        custom_search_space: str | None = None,
        search_space: Any = None,  # the official plugin's key: parameters in Optuna's own form
        seed: int | None = None,
        n_startup_trials: int | None = None,
        n_warmup_steps: int | None = None,
    ) -> None:
        from hydra.core.plugins import Plugins

        self.params = {**dict(search_space or {}), **dict(params or {})}
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.study_name, self.storage, self.direction = study_name, storage, str(direction)
        self.sampler = dict(sampler or {"_target_": "optuna.samplers.TPESampler"})
        self.pruner = dict(pruner or {"_target_": "optuna.pruners.MedianPruner"})
        for node, key, value in (
            (self.sampler, "seed", seed), (self.sampler, "n_startup_trials", n_startup_trials),
            (self.pruner, "n_startup_trials", n_startup_trials), (self.pruner, "n_warmup_steps", n_warmup_steps),
        ):  # fmt: skip
            if value is not None and (key in node or key == "seed"):
                node[key] = value
        self.custom_search_space = custom_search_space
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def study(self, searched: dict[str, Any]) -> Any:
        import optuna
        from hydra.utils import instantiate

        sampler = dict(self.sampler)
        if sampler["_target_"].endswith("GridSampler"):  # its grid is the search space itself
            if not all(hasattr(d, "choices") for d in searched.values()):
                raise PipelineError(
                    "hydra/sweeper/sampler=grid needs every searched parameter as choice(...): "
                    f"{', '.join(k for k, d in searched.items() if not hasattr(d, 'choices'))} is not"
                )
            sampler["search_space"] = {k: list(d.choices) for k, d in searched.items()}
        return optuna.create_study(
            study_name=self.study_name,
            storage=self.storage or study_storage(self.config),
            direction=self.direction,
            sampler=instantiate(sampler),
            pruner=instantiate(self.pruner),
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.utils import get_method

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = [f"{key}={value}" for key, value in self.params.items()]
        searched, fixed = {}, []
        for override in parser.parse_overrides(space + list(arguments)):
            dist = distribution(override)
            if dist is None:
                fixed.append(override.input_line)
            else:
                searched[override.get_key_element()] = dist
        study = self.study(searched)
        custom = get_method(self.custom_search_space) if self.custom_search_space else None
        sweep_id = self.config.hydra.job.env_set.get(env.PARENT_RUN) or uuid.uuid4().hex
        log.info("Optuna study %s: %d trial(s) over %s", self.study_name, self.n_trials, ", ".join(searched))
        returns, job_index = [], 0
        while job_index < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - job_index)
            trials = [study.ask(searched) for _ in range(batch)]
            jobs = []
            for offset, trial in enumerate(trials):
                trial.set_user_attr(SWEEP_ATTR, sweep_id)
                trial.set_user_attr(JOB_ATTR, job_index + offset)
                if custom:
                    custom(self.config, trial)
                jobs.append([*fixed, *(f"{key}={value}" for key, value in trial.params.items())])
            results = self.launcher.launch(jobs, initial_job_idx=job_index)
            exhausted = False
            for trial, result in zip(trials, results, strict=True):
                exhausted |= self._tell(study, trial, result)
            returns.append(results)
            job_index += batch
            if exhausted:
                log.info("The grid is exhausted after %d trial(s)", job_index)
                break
        done = [t for t in study.trials if t.user_attrs.get(SWEEP_ATTR) == sweep_id]
        states = {s.name: sum(t.state == s for t in done) for s in optuna.trial.TrialState}
        log.info("Optuna trials of this sweep: %s", {k: v for k, v in states.items() if v})
        return returns

    @staticmethod
    def _tell(study: Any, trial: Any, result: Any) -> bool:
        """Tell the trial's outcome; True when the sampler has nothing left (a grid sampler's last point)."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        frozen = study._storage.get_trial(trial._trial_id)
        value = result.return_value if result.status == JobStatus.COMPLETED else None
        if PRUNED_ATTR in frozen.user_attrs:
            told: dict[str, Any] = {"state": TrialState.PRUNED}
        elif isinstance(value, int | float) and math.isfinite(value):
            told = {"values": float(value)}
        else:
            told = {"state": TrialState.FAIL}
        try:
            study.tell(trial, **told)
        except RuntimeError as err:  # GridSampler stops the study when its grid is done: only optimize() may
            if "Study.stop" not in str(err):
                raise
            return True
        return False


def job_trial(hydra_cfg: DictConfig, cfg: DictConfig) -> Any | None:
    """This job's Optuna trial, when an Optuna sweeper launched it."""
    sweeper = hydra_cfg.sweeper
    if not str(sweeper.get("_target_", "")).endswith(OPTUNA_SWEEPER):
        return None
    import optuna
    from optuna.trial import TrialState

    storage = sweeper.get("storage") or study_storage(cfg)
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage)
    sweep_id, num = os.environ.get(env.PARENT_RUN), int(hydra_cfg.job.num)
    for trial in reversed(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
        if trial.user_attrs.get(JOB_ATTR) == num and (sweep_id is None or trial.user_attrs.get(SWEEP_ATTR) == sweep_id):
            return optuna.trial.Trial(study, trial._trial_id)
    return None


class TrialReporter:
    """The objective (`optimized_metric`) after every epoch to the trial; raises `Pruned` when the pruner says stop."""

    def __init__(self, trial: Any, metric: str = "val_accuracy") -> None:
        self.trial, self.metric = trial, metric

    def __call__(self, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        self.trial.report(row[self.metric], epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, epoch)
            pruner = type(self.trial.study.pruner).__name__
            raise Pruned(
                f"pruned at epoch {epoch}: {self.metric} {row[self.metric]:.4f} falls behind earlier trials at this "
                f"epoch (Optuna {pruner})"
            )


def importances(study_name: str, storage: str, sweep_id: str) -> dict[str, float]:
    """Parameter importance (fANOVA) over the finished trials of one sweep; empty if too few."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get(SWEEP_ATTR) == sweep_id]
    if len(trials) < 2:
        return {}
    subset = optuna.create_study(directions=study.directions)
    subset.add_trials(trials)
    try:
        return optuna.importance.get_param_importances(subset)
    except (RuntimeError, ValueError) as err:  # e.g. every trial with the same parameters
        log.warning("No parameter importance for this search: %s", err)
        return {}
