"""The body of one training and one evaluation, shared by the train and evaluate stages and
by `pipeline.experiment` (both in one process, one run per seed in a sweep).

Outputs are committed as units: the model and its curves together, the metrics and
their plots together; the MLflow run is told the model's sha256 only after the model
file is in place, and evaluation logs into the run that recorded that sha256, so a
model and the run that describes it can never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from pipeline.atomic import check_writable, sha256_file, write_json, write_together
from pipeline.data import Split
from pipeline.errors import PipelineError
from pipeline.paths import StageOutputs
from pipeline.records import MODEL_SHA_TAG, EpochLogger, dataset_input, log_model, log_run_context
from pipeline.schema import backend_name
from pipeline.scoring import confusion_matrix, measure, plot_confusion_matrix, plot_misclassified
from pipeline.trainer import TrainResult, fit, history_csv

log = logging.getLogger(__name__)


def train_run(
    cfg: DictConfig,
    train: Split,
    val: Split,
    outputs: StageOutputs,
    run_id: str | None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit on `train`, then write the model and curves as one unit and record them in `run_id`.

    `on_epoch` (a search's trial reporter) sees each epoch after MLflow has it.
    """
    from pipeline.model import save_model

    check_writable([outputs.model.parent, outputs.history.parent])
    if run_id:
        log_run_context(cfg, run_id, {"train": train, "val": val})
    logger = EpochLogger(cfg, run_id)

    def end_epoch(row: dict[str, float]) -> None:
        logger(row)
        if on_epoch:
            on_epoch(row)

    result = fit(cfg, train, val, end_epoch)
    write_together(
        {
            outputs.model: lambda tmp: save_model(result.model, tmp),
            outputs.history: lambda tmp: tmp.write_text(history_csv(result.history)),
        }
    )
    if run_id:
        import mlflow

        mlflow.set_tags(
            {
                MODEL_SHA_TAG: sha256_file(outputs.model),
                "train.batch_samples": str(result.batch_size),
                "threads": str(result.threads),
            }
        )
        mlflow.log_metrics({"train_seconds": result.train_seconds}, run_id=run_id)
        mlflow.log_artifact(str(outputs.history), run_id=run_id)
        if cfg.tracking.log_model:
            log_model(outputs.model, backend_name(cfg))
    return result


def evaluate_run(model: Any, test: Split, outputs: StageOutputs, run_id: str | None, dataset: str) -> dict[str, Any]:
    """Score `model` on `test`, write the metrics and plots as one unit, log them to `run_id`."""
    check_writable([outputs.metrics.parent])
    metrics, true, predicted = measure(model, test)
    k = test.y.shape[1]
    write_together(
        {
            outputs.metrics: lambda tmp: write_json(tmp, metrics),
            outputs.confusion_matrix: lambda tmp: plot_confusion_matrix(confusion_matrix(true, predicted, k), tmp),
            outputs.misclassified: lambda tmp: plot_misclassified(test, true, predicted, tmp),
        }
    )
    if run_id:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id)
        mlflow.log_input(dataset_input(test, f"{dataset}-test"), context="testing")
        for artifact in (outputs.metrics, outputs.confusion_matrix, outputs.misclassified):
            mlflow.log_artifact(str(artifact), artifact_path="evaluation", run_id=run_id)
    log.info("Test accuracy %.4f, test loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    return metrics


def run_of_model(cfg: DictConfig, model_sha256: str) -> str:
    """The finished MLflow run that trained the model file with this sha256 (newest if several)."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import setup_tracking, tracking_uri

    experiment_id = setup_tracking(cfg)
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MODEL_SHA_TAG}` = '{model_sha256}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise PipelineError(
            f"No finished training run in {tracking_uri(cfg)} recorded this model (sha256 {model_sha256[:12]}): "
            "it was not trained into this store, or its training run failed. Retrain it "
            "(dvc repro train, or python -m pipeline.train), or point tracking at the store that trained it."
        )
    return runs[0].info.run_id
