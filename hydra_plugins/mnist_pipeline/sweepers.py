"""The `grid` sweeper (`hydra/sweeper=grid`, also registered as `basic`, the default) and the
`optuna` sweeper (`hydra/sweeper=optuna`).

Only the plugin classes live here (see this package's docstring): `pipeline.sweeps.grid`
and `pipeline.sweeps.search` do the work, imported when Hydra sets a sweeper up.
"""

from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mnist_pipeline.sweepers.GridSweeper"


# The default sweeper (`basic`, Hydra's own name, so that a search file's `override /hydra/sweeper: optuna`
# wins over no override in conf/config.yaml) and `grid`: Hydra's basic sweeper plus the preset's grid.
for name in ("basic", "grid"):
    ConfigStore.instance().store(group="hydra/sweeper", name=name, node=GridSweeperConf, provider="mnist_pipeline")


class GridSweeper(BasicSweeper):
    """Hydra's basic sweeper over the sweep preset's grid (or its listed jobs), command-line keys last."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from pipeline.sweeps import grid

        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.params = {**grid.preset_grid(config), **(self.params or {})}

    def validate_batch_is_legal(self, batch: Any) -> None:
        """Skipped when the sweep callback runs: it composed and checked every job before the first started."""
        callback = self.config.hydra.callbacks.get("sweep") or {}
        if not str(callback.get("_target_", "")).endswith("SweepCallback"):
            super().validate_batch_is_legal(batch)

    def sweep(self, arguments: list[str]) -> Any:
        from pipeline.sweeps import grid

        jobs = grid.preset_jobs(self.config, arguments)
        if jobs is None:
            return grid.launched(lambda: super(GridSweeper, self).sweep(arguments))
        return grid.launched(lambda: grid.sweep_listed_jobs(self, jobs))


class OptunaSweeper(Sweeper):
    """An Optuna search, one Hydra job per trial (`pipeline.sweeps.search.OptunaSearch`)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from pipeline.sweeps.search import OptunaSearch

        self.search = OptunaSearch(hydra_context, task_function, config, **self.settings)

    def sweep(self, arguments: list[str]) -> Any:
        from pipeline.sweeps import grid

        return grid.launched(lambda: self.search.sweep(arguments))
