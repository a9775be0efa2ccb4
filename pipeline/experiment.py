"""One experiment in one call: `python -m pipeline.experiment [overrides]` trains then evaluates
in one process and one MLflow run, and returns the test accuracy.

With `-m` it is the sweep (the same as `python -m pipeline.sweep`): each job one cell of
the sweep preset's grid, replicated over seeds (`pipeline.sweeps`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.core.app import stage_main


def experiment(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from pipeline.sweeps.jobs import run_sweep_job

        return run_sweep_job(cfg)
    from pipeline.training.runner import run_experiment

    return run_experiment(cfg)["test_accuracy"]


main = stage_main(experiment)  # python -m pipeline.experiment [-m] [overrides]

if __name__ == "__main__":
    main()
