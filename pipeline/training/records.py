"""What a training run records in MLflow: settings, provenance, data, curves and the model.

Provenance is measured, not copied: the data digests are the sha256 of the bytes the
stage read, the model's digest is the sha256 of the file it wrote. Per-epoch metrics go
to the run as they happen; if the tracking server vanishes mid-run, they are kept in a
local file (`<mlruns_dir>/unlogged/<run id>.json`) with the command that logs them later.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_json
from pipeline.core.paths import project_paths
from pipeline.core.store import cpu_tags, dvc_tags, flat_params, git_state, package_versions
from pipeline.data.splits import Split

log = logging.getLogger(__name__)

MODEL_SHA_TAG = "model.sha256"
DATA_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def run_name(cfg: DictConfig, with_seed: bool = False) -> str:
    """A readable run name from the main settings, e.g. `adam-bs128` or `adam-bs128-s2`."""
    name = f"{cfg.optimizer.name}-bs{cfg.train.batch_size}"
    return f"{name}-s{cfg.train.seed}" if with_seed else name


def log_run_context(cfg: DictConfig, run_id: str, splits: dict[str, Split]) -> None:
    """Params, provenance tags, the datasets read (MLflow dataset inputs) and the resolved config."""
    import mlflow

    from pipeline.core.config import effective_learning_rate, resolve_batch_size

    batch = resolve_batch_size(cfg.train.batch_size, len(splits["train"].x))
    params = {**flat_params(cfg), "optimizer.effective_learning_rate": effective_learning_rate(cfg, batch)}
    mlflow.log_params(params, run_id=run_id)
    tags = {**git_state(), **package_versions(), **cpu_tags(), **dvc_tags(), "dataset": str(cfg.dataset.name)}
    tags.update({f"data.sha256.{name}": split.sha256 for name, split in splits.items()})
    mlflow.set_tags(tags)  # the active run is `run_id`
    log_datasets(cfg, splits)
    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml", run_id=run_id)


def dataset_input(split: Split, name: str) -> Any:
    """A split as an MLflow dataset: its name, the digest of the bytes read, its file as source."""
    import warnings

    from mlflow.data.numpy_dataset import from_numpy

    with warnings.catch_warnings():
        # MLflow registers its local-file source class twice and warns that the path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        source = str(split.path) if split.path else "memory"
        return from_numpy(split.x, source=source, targets=split.y, name=name, digest=split.sha256[:16])


def log_datasets(cfg: DictConfig, splits: dict[str, Split]) -> None:
    """Each split as an MLflow dataset input of the active run (the UI's dataset column)."""
    import mlflow

    datasets = [dataset_input(split, f"{cfg.dataset.name}-{name}") for name, split in splits.items()]
    contexts = [DATA_CONTEXTS.get(name, name) for name in splits]
    past_dataset_race(lambda: mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[{} for _ in datasets]))


def past_dataset_race(call: Callable[[], Any], tries: int = 3) -> None:
    """Log dataset inputs, again when the store lost a race to create the same dataset.

    The store looks a dataset up and inserts it when missing, in two steps: two jobs of a sweep
    that log the same split at the same moment both insert, and one gets "UNIQUE constraint
    failed" (seen on a tracking server with SQLite, two SLURM jobs evaluating together). Its
    transaction is rolled back whole, and the next try finds the dataset the other job made.
    """
    for attempt in range(tries):
        try:
            call()
            return
        except Exception as err:
            if "UNIQUE constraint failed" not in str(err) or attempt == tries - 1:
                raise
            log.info("The store lost a race creating a dataset another job logged at once; logging again")
            time.sleep(0.2 * (attempt + 1))


class EpochLogger:
    """Per-epoch metrics to an MLflow run; if the store stops answering, keep them locally and fail."""

    def __init__(self, cfg: DictConfig, run_id: str | None) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.rows: list[dict[str, float]] = []

    def __call__(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if not self.run_id:
            return
        import mlflow

        metrics = {k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}
        try:
            # One small synchronous write per epoch (~10 ms) costs less than MLflow's
            # async queue, whose flush and shutdown add seconds to every run.
            mlflow.log_metrics(metrics, step=int(row["epoch"]), run_id=self.run_id)
        except Exception as err:  # noqa: BLE001 - any store failure: keep the numbers, say how to log them
            path = self.keep_locally()
            raise PipelineError(
                f"The MLflow store stopped answering at epoch {int(row['epoch'])} ({type(err).__name__}: "
                f"{str(err)[:200]}). The {len(self.rows)} epoch(s) measured so far are kept in {path}; when the "
                f"store is back, log them into run {self.run_id} with: python -m pipeline.records {path}"
            ) from err

    def keep_locally(self) -> Path:
        from pipeline.core.store import tracking_uri

        path = project_paths(self.cfg).unlogged(self.run_id)
        write_json(path, {"tracking_uri": tracking_uri(self.cfg), "run_id": self.run_id, "epochs": self.rows})
        return path


def replay_unlogged(path: Path) -> int:
    """Log the epochs kept in `path` into their run and end it FAILED; return how many."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    record = json.loads(Path(path).read_text())
    # The store named in the file, unless MLFLOW_TRACKING_URI says where it is now.
    client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"])
    run_id = record["run_id"]
    existing = {m.step for m in client.get_metric_history(run_id, "loss")}
    metrics = [
        Metric(key, float(value), 0, int(row["epoch"]))
        for row in record["epochs"]
        if int(row["epoch"]) not in existing
        for key, value in row.items()
        if key != "epoch" and math.isfinite(value)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "failure_reason", "the tracking server vanished mid-run; epochs logged afterwards")
        client.set_terminated(run_id, status="FAILED")
    return len({m.step for m in metrics})


def log_model(model_file: Path, backend: str) -> str:
    """Log the trained model as a pyfunc that takes 28 x 28 images or flat rows (`pipeline.model.serving`).

    The Keras file travels as the model's artifact; requirements are pinned, not
    inferred, and the serving example is not re-predicted (seconds per run). Returns the
    MLflow 3 logged model's id, to which the run's validation and test metrics are linked.
    """
    import importlib.metadata as md

    from mlflow.models import Model

    from pipeline.model.serving import DigitClassifier, input_example, signature

    packages = ["keras", "jax", "jaxlib"] if backend == "jax" else ["keras", "tensorflow-cpu"]
    requirements = [f"{p}=={md.version(p)}" for p in (*packages, "mlflow", "pandas", "numpy")]
    # MLflow warns on every log that a python_model object is pickled: ours is a class of
    # this package, pickled by reference; once per sweep run the warning is only noise.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    info = Model.log(
        artifact_path=None,  # deprecated in favour of name=, but still a required argument of Model.log
        name="model",
        flavor=PyfuncFlavor,
        python_model=DigitClassifier(),
        artifacts={"keras_model": str(model_file)},
        signature=signature(),
        input_example=input_example(),
        pip_requirements=requirements,
        metadata={"keras_backend": backend},
        # Skips loading the model back to predict the example (a second per run); the
        # tests load the logged model and check its predictions instead.
        validate_serving_input=False,
    )
    return info.model_id


def model_of_run(run_id: str) -> str | None:
    """The id of the logged model a training run produced (None if it logged none)."""
    import mlflow

    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
    return models[0].model_id if models else None


class PyfuncFlavor:
    """`mlflow.pyfunc` as a flavor for `Model.log`, which alone can skip the serving-input check."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow.pyfunc

        kwargs.pop("validate_serving_input", None)  # an option of Model.log, not of save_model
        mlflow.pyfunc.save_model(path, **kwargs)
