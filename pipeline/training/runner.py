"""The runner: one training and one evaluation of a workload, measured and recorded.

Shared by the train and evaluate stages, `pipeline.experiment` and every sweep job
(train and evaluate in one process and one MLflow run). Imports data, model, training
and core pieces; never a sweep, analysis or command module.

Outputs are committed as units: the model and its curves together, the metrics and
their plots together; the MLflow run records the sha256 of the staged model file just
before it replaces the old one (if the record fails, the old files stay), and evaluation
logs into the run that recorded that sha256, so a model and the run that describes it
can never disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipeline.core.config import backend_name
from pipeline.core.errors import PipelineError
from pipeline.core.files import check_writable, named_copies, sha256_file, write_json, write_together
from pipeline.core.paths import RunOutputs, project_paths
from pipeline.core.store import tracked_run
from pipeline.data.splits import Split, load_split
from pipeline.training.loop import TrainResult, check_batch_fits, fit, history_csv, time_to_target
from pipeline.training.records import (
    MODEL_SHA_TAG,
    EpochLogger,
    dataset_input,
    log_model,
    log_run_context,
    model_of_run,
    past_dataset_race,
    run_name,
)
from pipeline.training.scoring import confusion_matrix, measure, plot_confusion_matrix, plot_misclassified

log = logging.getLogger(__name__)


def train_run(
    cfg: DictConfig,
    train: Split,
    val: Split,
    outputs: RunOutputs,
    run_id: str | None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fit on `train`, then write the model and curves as one unit and record them in `run_id`.

    `on_epoch` (a search's trial reporter) sees each epoch after MLflow has it.
    """
    from pipeline.model.networks import save_model

    check_writable([outputs.model.parent, outputs.history.parent])
    if run_id:
        log_run_context(cfg, run_id, {"train": train, "val": val})
    logger = EpochLogger(cfg, run_id)

    def end_epoch(row: dict[str, float]) -> None:
        logger(row)
        if on_epoch:
            on_epoch(row)

    result = fit(cfg, train, val, end_epoch)

    def record(staged: dict) -> None:  # the run records these very files before they replace the old ones
        if not run_id:
            return
        import mlflow

        tags = {MODEL_SHA_TAG: sha256_file(staged[outputs.model]), "train.batch_samples": str(result.batch_size)}
        mlflow.set_tags({**tags, "threads": str(result.threads)})
        mlflow.log_metrics({"train_seconds": result.train_seconds}, run_id=run_id)
        log_time_to_target(run_id, result.evaluations, float(cfg.compare.target))
        with named_copies({"history.csv": staged[outputs.history], "model.keras": staged[outputs.model]}) as folder:
            mlflow.log_artifact(str(folder / "history.csv"), run_id=run_id)
            if cfg.tracking.log_model:
                model_id = log_model(folder / "model.keras", backend_name(cfg))
                final = {f"final_{k}": result.history[-1][k] for k in ("val_accuracy", "val_loss")}
                mlflow.log_metrics(
                    final, run_id=run_id, model_id=model_id, dataset=dataset_input(val, f"{cfg.dataset.name}-val")
                )

    write_together(
        {
            outputs.model: lambda tmp: save_model(result.model, tmp),
            outputs.history: lambda tmp: tmp.write_text(history_csv(result.history)),
        },
        before_replace=record,
    )
    return result


def log_time_to_target(run_id: str, evaluations: list[dict[str, float]], target: float) -> None:
    """Validation by step (`step_val_accuracy`, `step_val_loss`) and when the run first reached `target`.

    Reached: `target.steps`, `target.samples`, `target.epochs`, `target.train_seconds` (training
    time: validation not counted on JAX, counted on TensorFlow, which validates inside its
    epoch) and the tag `target.reached=true`; never reached: no `target.*` metric, only the
    tags `target.reached=false` and `target.value`.
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [
        Metric(f"step_{name}", float(e[name]), now, int(e["step"]))
        for e in evaluations
        for name in ("val_accuracy", "val_loss")
    ]
    reached = time_to_target(evaluations, target)
    if reached:
        names = {"steps": "step", "samples": "samples", "epochs": "epoch", "train_seconds": "train_seconds"}
        metrics += [Metric(f"target.{name}", float(reached[key]), now, 0) for name, key in names.items()]
    tags = [RunTag("target.value", f"{target:g}"), RunTag("target.reached", str(reached is not None).lower())]
    MlflowClient().log_batch(run_id, metrics=metrics, tags=tags)


def evaluate_run(model: Any, test: Split, outputs: RunOutputs, run_id: str | None, dataset: str) -> dict[str, Any]:
    """Score `model` on `test`; write the metrics and plots as one unit, recorded in `run_id` first."""
    check_writable([outputs.metrics.parent])
    metrics, true, predicted = measure(model, test)
    k = test.y.shape[1]
    files = {outputs.metrics: "metrics.json", outputs.confusion_matrix: "confusion_matrix.png"}
    files[outputs.misclassified] = "misclassified.png"

    def record(staged: dict) -> None:
        if not run_id:
            return
        import mlflow

        test_input = dataset_input(test, f"{dataset}-test")
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, run_id=run_id)
        past_dataset_race(lambda: mlflow.log_input(test_input, context="testing"))
        if model_id := model_of_run(run_id):  # the MLflow 3 logged model: its Models tab ranks by these
            scores = {k: float(metrics[k]) for k in ("test_accuracy", "test_loss")}
            mlflow.log_metrics(scores, run_id=run_id, model_id=model_id, dataset=test_input)
        with named_copies({name: staged[target] for target, name in files.items()}) as folder:
            # which test images this model got right: compare's paired test over images
            np.savez(folder / "test_correct.npz", bits=np.packbits(true == predicted), count=len(true))
            mlflow.log_artifacts(str(folder), artifact_path="evaluation", run_id=run_id)

    write_together(
        {
            outputs.metrics: lambda tmp: write_json(tmp, metrics),
            outputs.confusion_matrix: lambda tmp: plot_confusion_matrix(confusion_matrix(true, predicted, k), tmp),
            outputs.misclassified: lambda tmp: plot_misclassified(test, true, predicted, tmp),
        },
        before_replace=record,
    )
    log.info("Test accuracy %.4f, test loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    return metrics


def run_of_model(cfg: DictConfig, model_sha256: str) -> str:
    """The finished MLflow run that trained the model file with this sha256 (newest if several).

    A sweep's child run is never it: its model went to its job folder, and the same settings
    train the same bytes, so a child can carry the stage model's sha256 too.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.core.store import setup_tracking, tracking_uri

    experiment_id = setup_tracking(cfg)
    token = None
    while True:  # newest first, page by page, to the first that is not a sweep's child
        runs = MlflowClient().search_runs(
            [experiment_id],
            filter_string=f"tags.`{MODEL_SHA_TAG}` = '{model_sha256}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        found = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        token = runs.token
        if found or not token:
            break
    if not found:
        raise PipelineError(
            f"No finished training run in {tracking_uri(cfg)} recorded this model (sha256 {model_sha256[:12]}): "
            "it was not trained into this store, or its training run failed. Retrain it "
            "(dvc repro train, or python -m pipeline.train), or point tracking at the store that trained it."
        )
    return found[0].info.run_id


def run_experiment(
    cfg: DictConfig,
    outputs: RunOutputs | None = None,
    parent_run_id: str | None = None,
    name: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate under one MLflow run; return the test metrics, the run id and the curves.

    Alone, bad data or a bad setting fail before a run is created; as a sweep's child
    (`parent_run_id`), every failure is recorded in the job's own FAILED run.
    """
    from pipeline.model.networks import check_buildable

    outputs = outputs or project_paths(cfg).stage_outputs
    if parent_run_id is None:
        check_buildable(cfg)
        check_batch_fits(cfg)
        load_splits(cfg)
        check_writable([outputs.model.parent, outputs.history.parent, outputs.metrics.parent])
    with tracked_run(cfg, run_name=name or run_name(cfg), parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id if run else None
        if run_id and tags:
            import mlflow

            mlflow.set_tags(tags)
        check_buildable(cfg)
        train, val, test = load_splits(cfg)
        result = train_run(cfg, train, val, outputs, run_id, on_epoch)
        metrics = evaluate_run(result.model, test, outputs, run_id, str(cfg.dataset.name))
    final = {k: result.history[-1][k] for k in ("val_accuracy", "val_loss")}
    return {**metrics, **final, "run_id": run_id, "history": result.history}


def load_splits(cfg: DictConfig) -> tuple[Split, Split, Split]:
    """The train, validation and test splits (each read once per process)."""
    return tuple(load_split(cfg, split) for split in ("train", "val", "test"))
