"""Train stage: fit the configured network, track every epoch in MLflow, save the model.

Writes `<models_dir>/model.keras`, `<models_dir>/run.json` (the MLflow run that the
evaluate stage continues) and `<reports_dir>/history.csv` (per-epoch curves).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.config import THREADS_ENV
from pipeline.data import INFERENCE_BATCH_SIZE, OutputPaths, Split, load_split, processed_checksums
from pipeline.errors import PipelineError, exit_on_pipeline_error
from pipeline.tracking import flat_params, git_state, package_versions, tracked_run
from pipeline.validation import check_config, resolve_batch_size

log = logging.getLogger(__name__)


class DivergedError(PipelineError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """A trained model and what was measured while training it."""

    model: Any
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    batch_size: int = 0


def run_name(cfg: DictConfig) -> str:
    """A readable run name from the settings a sweep varies, e.g. `adam-bs128`."""
    return f"{cfg.optimizer.name}-bs{cfg.train.batch_size}"


def configure_tensorflow(cfg: DictConfig) -> int:
    """Seed everything and set thread counts (before TensorFlow starts executing).

    Returns the intra-op thread count in effect (0: TensorFlow's default, all cores).
    """
    import keras
    import tensorflow as tf

    threads = cfg.train.get("threads") or os.environ.get(THREADS_ENV)
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError:  # already initialised in this process (a later job of a sweep)
            pass
    keras.utils.set_random_seed(int(cfg.train.seed))
    return tf.config.threading.get_intra_op_parallelism_threads()


def keras_verbosity(setting: Any) -> int:
    """Progress bar on a terminal, one line per epoch otherwise (logs, CI, DVC)."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def make_epoch_callback(run_id: str | None, n_train: int, history: list[dict[str, float]]):
    """A Keras callback that times each epoch, logs it to MLflow and stops on divergence."""
    import keras
    import mlflow

    class EpochTracker(keras.callbacks.Callback):
        """Per-epoch metrics to MLflow (never per step); raises on NaN/inf loss."""

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._started
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            row.update(epoch_seconds=seconds, samples_per_second=n_train / seconds)
            history.append(row)
            if run_id:
                metrics = {k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}
                # One small synchronous write per epoch (~10 ms) costs less than MLflow's
                # async queue, whose flush and shutdown add about 2 s to every run.
                mlflow.log_metrics(metrics, step=epoch + 1, run_id=run_id)
            if not math.isfinite(row.get("loss", 0.0)):
                self.model.stop_training = True
                raise DivergedError(
                    f"diverged at epoch {epoch + 1}: training loss is {row['loss']} "
                    "(lower optimizer.learning_rate, e.g. optimizer.learning_rate=0.01)"
                )

    return EpochTracker()


def fit(cfg: DictConfig, train: Split, val: Split, run_id: str | None) -> TrainResult:
    """Build, compile and fit the model on `train`, validating on `val` each epoch."""
    from pipeline.model import build_model, compile_model

    threads = configure_tensorflow(cfg)
    batch_size = resolve_batch_size(cfg.train.batch_size, len(train.x))
    if run_id:
        import mlflow

        # What `full` and the thread share resolved to in this run.
        mlflow.set_tags({"tf.intra_op_threads": str(threads or os.cpu_count()), "train.batch_samples": str(batch_size)})
    model = compile_model(build_model(cfg, train.x.shape[1], train.y.shape[1]), cfg)
    result = TrainResult(model=model, batch_size=batch_size)
    started = time.perf_counter()
    # In-memory numpy arrays: measured as fast as a cached tf.data pipeline here, with a
    # lower peak memory (benchmarks/README.md). Keras reshuffles them every epoch, seeded.
    model.fit(
        train.x,
        train.y,
        batch_size=batch_size,
        epochs=int(cfg.train.epochs),
        validation_data=(val.x, val.y),
        validation_batch_size=INFERENCE_BATCH_SIZE,
        shuffle=True,
        verbose=keras_verbosity(cfg.train.verbose),
        callbacks=[make_epoch_callback(run_id, len(train.x), result.history)],
    )
    result.train_seconds = time.perf_counter() - started
    return result


def history_csv(history: list[dict[str, float]]) -> str:
    """Per-epoch rows as CSV text (for `dvc plots`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def log_run_context(cfg: DictConfig, run_id: str) -> None:
    """Params, provenance tags and the resolved config of a training run."""
    import mlflow

    mlflow.log_params(flat_params(cfg), run_id=run_id)
    checksums = processed_checksums(cfg)
    tags = {**git_state(), **package_versions(), "dataset": cfg.dataset.name}
    tags.update({f"data.sha256.{name}": sha for name, sha in checksums.items()})
    mlflow.set_tags(tags)
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml", run_id=run_id)


def save_training(cfg: DictConfig, result: TrainResult, paths: OutputPaths, run_id: str | None) -> None:
    """Write the model, history and run id atomically; log the model to MLflow."""
    with atomic_path(paths.model) as tmp:
        result.model.save(tmp)
    write_text(paths.history, history_csv(result.history))
    write_json(paths.run_info, {"run_id": run_id, "train_seconds": result.train_seconds})
    if run_id:
        import mlflow

        mlflow.log_artifact(str(paths.history), run_id=run_id)
        mlflow.log_metrics({"train_seconds": result.train_seconds}, run_id=run_id)
        if cfg.tracking.log_model:
            log_keras_model(result.model)


class KerasFlavor:
    """`mlflow.keras` with its save folder created first.

    mlflow.keras.save_model writes the input example before it creates the model
    folder, so `log_model(..., input_example=...)` fails (mlflow issue #16183, open
    in 3.17.2). Everything else is MLflow's own Keras flavor.
    """

    @staticmethod
    def save_model(model: Any, path: str, **kwargs: Any) -> None:
        import mlflow.keras

        kwargs.pop("validate_serving_input", None)  # an option of Model.log, not of save_model
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(model, path, **kwargs)


def log_keras_model(model: Any) -> None:
    """Log the model with its signature and an input example (requirements pinned, not inferred)."""
    import importlib.metadata as md

    import numpy as np
    from mlflow.models import Model, infer_signature

    example = np.zeros((2, model.input_shape[1]), dtype=np.float32)
    # The output's shape and dtype are known; no predict call (one more trace) needed.
    signature = infer_signature(example, np.zeros((2, model.output_shape[1]), dtype=np.float32))
    requirements = [f"{p}=={md.version(p)}" for p in ("keras", "tensorflow-cpu")]
    Model.log(
        artifact_path=None,  # deprecated in favour of name=, but still a required argument of Model.log
        name="model",
        flavor=KerasFlavor,
        model=model,
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
        # Skips reloading the model to predict the example (seconds per run, and a
        # progress bar in the log); the tests check that the saved model reloads exactly.
        validate_serving_input=False,
    )


def train(cfg: DictConfig) -> TrainResult:
    """The train stage: one tracked training run whose outputs the evaluate stage reads."""
    check_config(cfg)
    train_split, val_split = load_split(cfg, "train"), load_split(cfg, "val")
    paths = OutputPaths.for_stages(cfg)
    with tracked_run(cfg, run_name=run_name(cfg)) as run:
        run_id = run.info.run_id if run else None
        if run_id:
            log_run_context(cfg, run_id)
        result = fit(cfg, train_split, val_split, run_id)
        save_training(cfg, result, paths, run_id)
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Entry point: `python -m pipeline.train [overrides]`."""
    with exit_on_pipeline_error():
        train(cfg)


if __name__ == "__main__":
    main()
