"""`hydra/sweeper=grid`: Hydra's basic sweeper over the grid of the chosen sweep preset.

The grid is data (`sweep.grid` in `conf/sweep/<preset>.yaml`, so it is part of
`params.yaml` and of DVC's record); keys swept on the command line replace the
preset's (`-m train.batch_size=16,64`), and `sweep=none` starts from an empty grid.
With `sweep.jobs_file` (a JSON list of override lists) it launches exactly those jobs
instead of a product, with the command line's single-valued overrides added to each.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


@dataclass
class GridSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.mnist_pipeline.grid_sweeper.GridSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="mnist_pipeline")


# Jobs whose configs the sweep callback (`pipeline.sweep.compose_jobs`) composed in this
# process to check them before the first job: Hydra's own check would repeat that work.
COMPOSED_JOBS: set[tuple[str, ...]] = set()


def preset_grid(config: DictConfig) -> dict[str, str]:
    """`sweep.grid` of a composed config, values as override strings."""
    grid = OmegaConf.select(config, "sweep.grid", default=None)
    if not grid:
        return {}
    return {str(k): str(v) for k, v in OmegaConf.to_container(grid, resolve=True).items()}


def preset_jobs(config: DictConfig, arguments: list[str]) -> list[list[str]] | None:
    """With `sweep.jobs_file`: each listed job, after the command line's single-valued overrides."""
    jobs_file = OmegaConf.select(config, "sweep.jobs_file", default=None)
    if not jobs_file:
        return None
    from pipeline.errors import PipelineError
    from pipeline.paths import resolve_path

    path = resolve_path(jobs_file, OmegaConf.select(config, "paths.root", default=None))
    try:
        jobs = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"sweep.jobs_file={jobs_file}: cannot read a JSON list of override lists ({err})") from err
    fixed = [o for o in OverridesParser.create().parse_overrides(arguments) if not o.is_sweep_override()]
    out = []
    for job in jobs:
        keys = {str(o).split("=", 1)[0] for o in job}
        out.append([o.input_line for o in fixed if o.get_key_element() not in keys] + [str(o) for o in job])
    return out


class GridSweeper(BasicSweeper):
    """The basic sweeper with the preset's grid placed before the command line's keys."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.params = {**preset_grid(config), **(self.params or {})}

    def validate_batch_is_legal(self, batch: Any) -> None:
        """Compose the jobs the sweep callback has not already composed (each costs ~0.3 s)."""
        unchecked = [job for job in batch if tuple(job) not in COMPOSED_JOBS]
        if unchecked:
            super().validate_batch_is_legal(unchecked)

    def sweep(self, arguments: list[str]) -> Any:
        jobs = preset_jobs(self.config, arguments)
        if jobs is None:
            return super().sweep(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.validate_batch_is_legal(jobs)
        results = self.launcher.launch(jobs, initial_job_idx=0)
        for result in results:
            _ = result.return_value  # a failed job raises here, as in the basic sweeper
        return [results]
