"""Evaluate stage: test loss and accuracy of the saved model, plus pictures of its errors.

Writes `<reports_dir>/metrics.json`, `confusion_matrix.png` and `misclassified.png` as
one unit, and logs them into the MLflow run that trained this very model file (found
by its sha256; never a sweep's child), which then ends FINISHED. A model no finished run
recorded is refused. If the evaluation fails, that run still ends FINISHED (its training
did), with the reason in `evaluation.failure_reason`, and evaluate can simply run again.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.core.errors import PipelineError
from pipeline.core.files import check_writable, sha256_file
from pipeline.core.paths import project_paths
from pipeline.core.store import record_stage, tracked_run
from pipeline.data.splits import load_split
from pipeline.training.runner import evaluate_run, run_of_model


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The evaluate stage: load the trained model, evaluate it, continue its MLflow run."""
    outputs = project_paths(cfg).stage_outputs
    if not outputs.model.is_file():
        raise PipelineError(
            f"No trained model at {outputs.model}: run the train stage first "
            "(dvc repro train, or python -m pipeline.train)."
        )
    test = load_split(cfg, "test")
    check_writable([outputs.metrics.parent])
    run_id = run_of_model(cfg, sha256_file(outputs.model)) if cfg.tracking.enabled else None
    from pipeline.model.networks import load_model

    try:
        model = load_model(outputs.model)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file
        raise PipelineError(f"{outputs.model} cannot be loaded as a Keras model ({err}); retrain it.") from err
    with tracked_run(cfg, run_id=run_id) as run:
        metrics = evaluate_run(model, test, outputs, run.info.run_id if run else None, str(cfg.dataset.name))
    if run:
        record_stage(cfg, "evaluate", {"run_id": run.info.run_id, "test_accuracy": metrics["test_accuracy"]})
    return metrics


main = stage_main(evaluate)  # python -m pipeline.evaluate [overrides]

if __name__ == "__main__":
    main()
