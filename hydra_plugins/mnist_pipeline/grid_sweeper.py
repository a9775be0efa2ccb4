"""`hydra/sweeper=grid`: Hydra's basic sweeper over the grid of the chosen sweep preset.

The grid is data (`sweep.grid` in `conf/sweep/<preset>.yaml`, so it is part of
`params.yaml` and of DVC's record); keys swept on the command line replace the
preset's (`-m train.batch_size=16,64`), and `sweep=none` starts from an empty grid.
"""

from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mnist_pipeline.grid_sweeper.GridSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="mnist_pipeline")


def preset_grid(config: DictConfig) -> dict[str, str]:
    """`sweep.grid` of a composed config, values as override strings."""
    grid = OmegaConf.select(config, "sweep.grid", default=None)
    if not grid:
        return {}
    return {str(k): str(v) for k, v in OmegaConf.to_container(grid, resolve=True).items()}


class GridSweeper(BasicSweeper):
    """The basic sweeper with the preset's grid placed before the command line's keys."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.params = {**preset_grid(config), **(self.params or {})}
