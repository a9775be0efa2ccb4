"""Train stage: fit the configured network, track every epoch in MLflow, save the model.

Writes `<models_dir>/model.keras` and `<reports_dir>/history.csv` (per-epoch curves) as
one unit, and one MLflow run that records the model's sha256, by which the evaluate
stage finds the run to continue.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.app import stage_main
from pipeline.atomic import check_writable
from pipeline.data import load_split
from pipeline.jobs import train_run
from pipeline.model import build_optimizer
from pipeline.paths import project_paths
from pipeline.records import run_name
from pipeline.tracking import tracked_run
from pipeline.trainer import TrainResult


def train(cfg: DictConfig) -> TrainResult:
    """The train stage: one tracked training run whose outputs the evaluate stage reads."""
    splits = load_split(cfg, "train"), load_split(cfg, "val")
    outputs = project_paths(cfg).stage_outputs
    # Bad input fails before a run starts: an optimizer argument, an unwritable output folder.
    build_optimizer(cfg)
    check_writable([outputs.model.parent, outputs.history.parent])
    with tracked_run(cfg, run_name=run_name(cfg)) as run:
        return train_run(cfg, *splits, outputs, run.info.run_id if run else None)


main = stage_main(train)  # python -m pipeline.train [overrides]

if __name__ == "__main__":
    main()
