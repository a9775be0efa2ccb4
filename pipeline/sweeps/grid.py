"""The grid of a sweep: the preset's grid (`sweep.grid`) or listed jobs (`sweep.jobs_file`), expanded as Hydra does.

The grid is data in `conf/sweep/<preset>.yaml` rather than `hydra.sweeper.params`: so it
is part of `params.yaml` and DVC reruns the sweep when it changes (`params.yaml` never
holds the `hydra` node). Keys swept on the command line replace the preset's
(`-m train.batch_size=16,64`); `sweep=none` starts from an empty grid. With
`sweep.jobs_file` (a JSON list of override lists) exactly those jobs run, each with the
command line's single-valued overrides. The `grid` sweeper plugin
(`hydra_plugins/mnist_pipeline/sweepers.py`) calls into this module.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.paths import Paths, resolve_path

log = logging.getLogger(__name__)

GRID_SWEEPERS = ("GridSweeper", "BasicSweeper")


def sweeper_kind(config: DictConfig) -> str:
    """The sweeper's class name (`GridSweeper`, `BasicSweeper`, `OptunaSweeper`, ...)."""
    return str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]


def preset_grid(config: DictConfig) -> dict[str, str]:
    """`sweep.grid` of a composed config, values as override strings."""
    grid = OmegaConf.select(config, "sweep.grid", default=None)
    return {str(k): str(v) for k, v in OmegaConf.to_container(grid, resolve=True).items()} if grid else {}


def preset_jobs(config: DictConfig, arguments: list[str]) -> list[list[str]] | None:
    """With `sweep.jobs_file`: each listed job, after the command line's single-valued overrides."""
    jobs_file = OmegaConf.select(config, "sweep.jobs_file", default=None)
    if not jobs_file:
        return None
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


def sweep_overrides(config: DictConfig) -> list[str]:
    """The sweep's overrides in the order the grid sweeper combines them: preset grid, params, command line."""
    params = dict(config.hydra.sweeper.get("params") or {}) if sweeper_kind(config) in GRID_SWEEPERS else {}
    grid = preset_grid(config) if sweeper_kind(config) == "GridSweeper" else {}
    merged = {**grid, **{str(k): str(v) for k, v in params.items()}}
    return [f"{key}={value}" for key, value in merged.items()] + list(config.hydra.overrides.task)


def expand_grid(overrides: list[str]) -> list[list[str]]:
    """Every job's override list, in the order Hydra's basic sweeper launches them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def swept_keys(overrides: list[str]) -> list[str]:
    """The keys a sweep varies (`optimizer`, `train.batch_size`)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.get_key_element() for o in parsed if o.is_sweep_override()]


def grid_params(overrides: list[str]) -> dict[str, str]:
    """The swept keys and their values (`optimizer` -> `sgd,adam`), for the parent run."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {
        f"grid.{o.get_key_element()}": ",".join(o.sweep_string_iterator())
        for o in parsed
        if o.is_sweep_override() and o.is_discrete_sweep()
    }


def listed_swept_keys(jobs: list[list[str]]) -> list[str]:
    """The keys that name listed jobs' cells: those whose value differs between jobs, less any that the
    others determine (`pipeline.tune`'s learning-rate factor, chosen per optimizer x batch size, names no cell)."""
    rows = [dict(o.partition("=")[::2] for o in job) for job in jobs]
    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if len({row.get(k) for row in rows}) > 1]
    for key in reversed(list(keys)):
        others = [k for k in keys if k != key]
        by_others: dict[tuple, set] = {}
        for row in rows:
            by_others.setdefault(tuple(row.get(k) for k in others), set()).add(row.get(key))
        if others and all(len(values) == 1 for values in by_others.values()):
            keys.remove(key)
    return keys


def sweep_listed_jobs(sweeper: Any, jobs: list[list[str]]) -> Any:
    """Launch exactly `jobs` through the sweeper's launcher (what the basic sweeper does for a product)."""
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(sweeper.config, Paths.multirun_file(sweep_dir))
    sweeper.validate_batch_is_legal(jobs)
    results = sweeper.launcher.launch(jobs, initial_job_idx=0)
    for result in results:
        _ = result.return_value  # a failed job raises here, as in the basic sweeper
    return [results]


def launched(sweep: Any) -> Any:
    """Run a sweeper's `sweep()`; a launcher that breaks (a job's process killed: SIGKILL, OOM) stops it in one line.

    The parent run then ends KILLED (its exit handler), the runs of dead processes are closed
    KILLED by the next command, and compare refuses the unfinished sweep.
    """
    try:
        return sweep()
    except (KeyboardInterrupt, SystemExit):
        raise
    except PipelineError as err:  # a setting the search refuses (it is checked before any trial starts)
        log.error("%s", err)
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - e.g. joblib's TerminatedWorkerError, with a 37-line traceback
        log.error(
            "The sweep stopped: its launcher failed (%s: %s). A job's process died (SIGKILL, OOM or a crash?); "
            "the sweep's runs end KILLED and compare names no winner. Rerun the sweep.",
            type(err).__name__,
            str(err).strip().splitlines()[0][:300] if str(err).strip() else "",
        )
        sys.exit(1)
