"""Train stage: fit the configured network, track every epoch in MLflow, save the model.

Writes `<models_dir>/model.keras` and `<reports_dir>/history.csv` (per-epoch curves) as
one unit, and one MLflow run that records the model's sha256, by which the evaluate
stage finds the run to continue (run by DVC, also the stage's record of that run).
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.core.files import check_writable, sha256_file
from pipeline.core.paths import project_paths
from pipeline.core.store import record_stage, tracked_run
from pipeline.data.splits import load_split
from pipeline.model.networks import check_buildable
from pipeline.training.loop import TrainResult, check_batch_fits
from pipeline.training.records import run_name
from pipeline.training.runner import train_run


def train(cfg: DictConfig) -> TrainResult:
    """The train stage: one tracked training run whose outputs the evaluate stage reads."""
    splits = load_split(cfg, "train"), load_split(cfg, "val")
    outputs = project_paths(cfg).stage_outputs
    # Bad input fails before a run starts: a model or optimizer setting, an unwritable output folder.
    check_buildable(cfg)
    check_batch_fits(cfg)
    check_writable([outputs.model.parent, outputs.history.parent])
    with tracked_run(cfg, run_name=run_name(cfg)) as run:
        result = train_run(cfg, *splits, outputs, run.info.run_id if run else None)
    if run:
        record_stage(cfg, "train", {"run_id": run.info.run_id, "model_sha256": sha256_file(outputs.model)})
    return result


main = stage_main(train)  # python -m pipeline.train [overrides]

if __name__ == "__main__":
    main()
