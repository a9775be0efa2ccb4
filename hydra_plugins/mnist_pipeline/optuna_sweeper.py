"""`hydra/sweeper=optuna`: a small Optuna (>= 4) search as a Hydra sweeper.

`hydra-optuna-sweeper` 1.3.0 pins optuna < 3 and does not install with Python 3.11 and
our pins, so this is the documented Hydra extension point, kept small: it reads the
search space from `hydra.sweeper.params` in Hydra's own sweep grammar
(`choice(a,b)`, `interval(lo,hi)`, `tag(log, interval(lo,hi))`, `range(a,b)`, or a
fixed value), asks Optuna for `n_trials` trials, `n_jobs` at a time, launches each as a
job through the configured launcher, and tells Optuna the job's return value (the
validation accuracy; maximised). Jobs report per-epoch validation accuracy to their
trial and stop when the pruner calls them hopeless (`pipeline.search`). The study lives
in `<mlruns_dir>/optuna.db` beside the MLflow store, so the same command resumes it.
"""

import logging
import math
import os
import uuid
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# Trial user attributes through which a job finds its trial (pipeline/search.py).
SWEEP_ATTR, JOB_ATTR, PRUNED_ATTR = "sweep_id", "hydra_job_num", "pruned_at_epoch"


def distribution(override: Override) -> Any:
    """The Optuna distribution of one search-space entry, or None for a fixed value."""
    import optuna.distributions as d

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


class OptunaSweeper(Sweeper):
    """Optuna TPE search with median pruning, one Hydra job per trial."""

    def __init__(
        self,
        params: dict[str, str] | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        study_name: str = "mnist-search",
        storage: str | None = None,
        seed: int | None = 0,
        n_startup_trials: int = 4,
        n_warmup_steps: int = 1,
    ) -> None:
        self.params = dict(params or {})
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.study_name, self.storage, self.seed = study_name, storage, seed
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def study(self) -> Any:
        import optuna

        from pipeline.search import study_storage

        return optuna.create_study(
            study_name=self.study_name,
            storage=self.storage or study_storage(self.config),
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=self.n_startup_trials, n_warmup_steps=self.n_warmup_steps
            ),
            load_if_exists=True,
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from pipeline.tracking import PARENT_RUN_ENV

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = [f"{key}={value}" for key, value in self.params.items()]
        searched, fixed = {}, []
        for override in parser.parse_overrides(space + list(arguments)):
            dist = distribution(override)
            if dist is None:
                fixed.append(override.input_line)
            else:
                searched[override.get_key_element()] = dist
        study = self.study()
        sweep_id = os.environ.get(PARENT_RUN_ENV) or uuid.uuid4().hex
        log.info("Optuna study %s: %d trial(s) over %s", self.study_name, self.n_trials, ", ".join(searched))
        returns, job_index = [], 0
        while job_index < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - job_index)
            trials = [study.ask(searched) for _ in range(batch)]
            jobs = []
            for offset, trial in enumerate(trials):
                trial.set_user_attr(SWEEP_ATTR, sweep_id)
                trial.set_user_attr(JOB_ATTR, job_index + offset)
                jobs.append([*fixed, *(f"{key}={value}" for key, value in trial.params.items())])
            results = self.launcher.launch(jobs, initial_job_idx=job_index)
            for trial, result in zip(trials, results, strict=True):
                self._tell(study, trial, result)
            returns.append(results)
            job_index += batch
        done = [t for t in study.trials if t.user_attrs.get(SWEEP_ATTR) == sweep_id]
        states = {s.name: sum(t.state == s for t in done) for s in optuna.trial.TrialState}
        log.info("Optuna trials of this sweep: %s", {k: v for k, v in states.items() if v})
        return returns

    @staticmethod
    def _tell(study: Any, trial: Any, result: Any) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        frozen = study._storage.get_trial(trial._trial_id)
        value = result.return_value if result.status == JobStatus.COMPLETED else None
        if PRUNED_ATTR in frozen.user_attrs:
            study.tell(trial, state=TrialState.PRUNED)
        elif isinstance(value, int | float) and math.isfinite(value):
            study.tell(trial, float(value))
        else:
            study.tell(trial, state=TrialState.FAIL)
