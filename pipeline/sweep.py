"""Sweep stage: every cell of the sweep preset's grid x `sweep.seeds` seeds, one MLflow child run each.

`python -m pipeline.sweep [overrides]` is a Hydra multirun (`-m` is implied) of
`pipeline.sweeps.jobs.run_sweep_job` under one parent run (`pipeline.sweeps.callback`).
Run by DVC, it also writes the sweep stage's record (`<mlruns_dir>/stages/sweep.json`),
which the compare stage compares; a sweep run by hand writes only its own record.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.sweeps.jobs import run_sweep_job


def sweep(cfg: DictConfig) -> float:
    return run_sweep_job(cfg)


main = stage_main(sweep, multirun=True)  # python -m pipeline.sweep [overrides]

if __name__ == "__main__":
    main()
