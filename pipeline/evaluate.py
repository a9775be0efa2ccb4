"""Evaluate stage: test loss and accuracy of the saved model, plus pictures of its errors.

Writes `<reports_dir>/metrics.json`, `confusion_matrix.png` and `misclassified.png`,
and logs them into the training's MLflow run, which then ends FINISHED.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from pipeline.atomic import atomic_path, write_json
from pipeline.data import INFERENCE_BATCH_SIZE, OutputPaths, Split, load_split
from pipeline.errors import PipelineError, exit_on_pipeline_error
from pipeline.tracking import tracked_run

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (stages run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true, predicted]`."""
    return np.bincount(true * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def measure(model: Any, test: Split) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Test metrics, true labels and predicted labels."""
    loss, accuracy = model.evaluate(test.x, test.y, batch_size=INFERENCE_BATCH_SIZE, verbose=0)[:2]
    predicted = model.predict(test.x, batch_size=INFERENCE_BATCH_SIZE, verbose=0).argmax(axis=1)
    true = test.y.argmax(axis=1)
    metrics = {
        "test_loss": float(loss),
        "test_accuracy": float(accuracy),
        "test_errors": int((predicted != true).sum()),
        "test_samples": len(true),
    }
    return metrics, true, predicted


def plot_confusion_matrix(matrix: np.ndarray, path) -> None:
    """A labelled heatmap of the confusion matrix."""
    plt = pyplot()
    k = len(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(k):
        for j in range(k):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title="Test confusion matrix")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def plot_misclassified(test: Split, true: np.ndarray, predicted: np.ndarray, path, limit: int = 36) -> None:
    """A grid of the first misclassified test digits, each labelled `true -> predicted`.

    Drawn as one mosaic image (one axes, not one per digit): ten times faster, which
    matters once per sweep job.
    """
    plt = pyplot()
    wrong = np.flatnonzero(true != predicted)[:limit]
    cols, side, pad = 6, int(round(np.sqrt(test.x.shape[1]))), 4
    rows = max(1, -(-len(wrong) // cols))
    cell = side + pad
    mosaic = np.zeros((rows * cell, cols * cell), dtype=np.float32)
    fig, ax = plt.subplots(figsize=(cols * 1.25, rows * 1.4 + 0.5))
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        mosaic[r * cell + pad : (r + 1) * cell, c * cell + pad // 2 : c * cell + pad // 2 + side] = test.x[i].reshape(
            side, side
        )
        ax.text(
            c * cell + cell / 2,
            r * cell + pad - 0.5,
            f"{true[i]} -> {predicted[i]}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(f"Misclassified test images: {int((true != predicted).sum())} (first {len(wrong)} shown)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def evaluate_model(model: Any, test: Split, paths: OutputPaths, run_id: str | None, extra: dict | None = None) -> dict:
    """Measure `model` on `test`, write the reports, log them to `run_id`; return the metrics."""
    metrics, true, predicted = measure(model, test)
    metrics.update(extra or {})
    k = test.y.shape[1]
    plot_confusion_matrix(confusion_matrix(true, predicted, k), paths.confusion_matrix)
    plot_misclassified(test, true, predicted, paths.misclassified)
    write_json(paths.metrics, metrics)
    if run_id:
        import mlflow

        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)}, run_id=run_id)
        for artifact in (paths.metrics, paths.confusion_matrix, paths.misclassified):
            mlflow.log_artifact(str(artifact), artifact_path="evaluation", run_id=run_id)
    log.info("Test accuracy %.4f, test loss %.4f", metrics["test_accuracy"], metrics["test_loss"])
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """The evaluate stage: load the trained model, evaluate it, continue its MLflow run."""
    paths = OutputPaths.for_stages(cfg)
    if not paths.model.is_file():
        raise PipelineError(
            f"No trained model at {paths.model}: run the train stage first "
            "(dvc repro train, or python -m pipeline.train)."
        )
    test = load_split(cfg, "test")
    run_info = json.loads(paths.run_info.read_text()) if paths.run_info.is_file() else {}
    run_id = run_info.get("run_id") if cfg.tracking.enabled else None
    import keras

    model = keras.models.load_model(paths.model)
    extra = {"train_seconds": run_info.get("train_seconds")} if run_info.get("train_seconds") else {}
    if run_id:
        with tracked_run(cfg, run_id=run_id):
            return evaluate_model(model, test, paths, run_id, extra)
    return evaluate_model(model, test, paths, None, extra)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Entry point: `python -m pipeline.evaluate [overrides]`."""
    with exit_on_pipeline_error():
        evaluate(cfg)


if __name__ == "__main__":
    main()
