"""Scoring a trained model on the test split: metrics, confusion matrix, misclassified digits.

Shared by the evaluate stage and the experiment entry point (train + evaluate in one
process). Predictions are one plain forward pass (no compiled Keras predict loop per
model), so scoring costs the same in every job of a sweep.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import Split
from pipeline.plots import pyplot, save_figure

EPSILON = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its cross-entropy


def probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's class probabilities for `x` (N, features), as float32 numpy."""
    return np.asarray(model(x, training=False), dtype=np.float32)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true, predicted]`."""
    return np.bincount(true * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def measure(model: Any, test: Split) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Test loss (Keras' categorical cross-entropy), accuracy and error count; true and predicted labels."""
    probs = probabilities(model, test.x)
    clipped = np.clip(probs / probs.sum(axis=1, keepdims=True), EPSILON, 1 - EPSILON)
    loss = float(-(test.y * np.log(clipped)).sum(axis=1).mean())
    predicted, true = probs.argmax(axis=1), test.y.argmax(axis=1)
    metrics = {
        "test_loss": loss if math.isfinite(loss) else math.inf,
        "test_accuracy": float((predicted == true).mean()),
        "test_errors": int((predicted != true).sum()),
        "test_samples": len(true),
    }
    return metrics, true, predicted


def plot_confusion_matrix(matrix: np.ndarray, path: Path) -> None:
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
    save_figure(fig, path)


def plot_misclassified(test: Split, true: np.ndarray, predicted: np.ndarray, path: Path, limit: int = 36) -> None:
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
        top, left = r * cell + pad, c * cell + pad // 2
        mosaic[top : top + side, left : left + side] = test.x[i].reshape(side, side)
        ax.text(c * cell + cell / 2, top - 0.5, f"{true[i]} -> {predicted[i]}", ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(f"Misclassified test images: {int((true != predicted).sum())} (first {len(wrong)} shown)", fontsize=10)
    save_figure(fig, path, dpi=100)
