"""Scoring a trained model on the test split: metrics, confusion matrix, misclassified digits.

Shared by the evaluate stage and the experiment entry point (train + evaluate in one
process). Predictions are one plain forward pass (no compiled Keras predict loop per
model), so scoring costs the same in every job of a sweep.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.files import atomic_path
from pipeline.data.splits import Split

EPSILON = 1e-7  # Keras clips probabilities to [eps, 1 - eps] in its cross-entropy


_FORWARD: dict[tuple, Any] = {}  # compiled forward passes by model shape (JAX backend)


def probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    """The model's class probabilities for `x` (N, features), as float32 numpy.

    On JAX, one compiled forward pass per model shape and process (the runs of a sweep
    share it); elsewhere Keras' eager call.
    """
    import keras

    if keras.backend.backend() != "jax":
        return np.asarray(model(x, training=False), dtype=np.float32)
    import jax

    key = (
        tuple(tuple(w.shape) for w in model.weights),
        tuple(str(getattr(layer, "activation", "")) for layer in model.layers),
    )
    forward = _FORWARD.get(key)
    if forward is None:
        template = model
        forward = _FORWARD[key] = jax.jit(lambda t, n, x: template.stateless_call(t, n, x, training=False)[0])
    values = forward([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x)
    return np.asarray(values, dtype=np.float32)


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


def plot_confusion_matrix(matrix: np.ndarray, path: Path, cell: int = 44) -> None:
    """A labelled heatmap of the confusion matrix (rows true, columns predicted; colour log(1 + count)).

    Drawn with Pillow, not matplotlib: a hundredth of the time, once per run of a sweep.
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    k = len(matrix)
    left, top, right, bottom = 56, 46, 16, 46
    png = Image.new("RGB", (left + k * cell + right, top + k * cell + bottom), "white")
    draw = ImageDraw.Draw(png)
    shade = np.log1p(matrix) / max(np.log1p(matrix).max(), 1e-9)
    blues = colormaps["Blues"]
    for i in range(k):
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            rgba = blues(0.05 + 0.95 * shade[i, j])
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=tuple(int(255 * c) for c in rgba[:3]))
            text = "white" if shade[i, j] > 0.6 else "black"
            draw.text((x + cell / 2, y + cell / 2), str(matrix[i, j]), fill=text, font=_font(11), anchor="mm")
        draw.text((left - 10, top + i * cell + cell / 2), str(i), fill="black", font=_font(12), anchor="rm")
        draw.text((left + i * cell + cell / 2, top + k * cell + 10), str(i), fill="black", font=_font(12), anchor="mt")
    draw.text(
        (png.width / 2, 14), "Test confusion matrix (colour: log(1 + count))", fill="black", font=_font(13), anchor="mt"
    )
    draw.text((left + k * cell / 2, png.height - 14), "predicted", fill="black", font=_font(12), anchor="mm")
    draw.text((14, top + k * cell / 2), "true", fill="black", font=_font(12), anchor="mm")
    _save(png, path)


def plot_misclassified(test: Split, true: np.ndarray, predicted: np.ndarray, path: Path, limit: int = 36) -> None:
    """A grid of the first misclassified test digits (dark on white), each labelled `true -> predicted`.

    Drawn with Pillow as one mosaic: a hundredth of a figure per digit, once per run of a sweep.
    """
    from PIL import Image, ImageDraw

    wrong = np.flatnonzero(true != predicted)[:limit]
    cols, side, zoom, label = 6, int(round(np.sqrt(test.x.shape[1]))), 3, 18
    rows = max(1, -(-len(wrong) // cols))
    cell_w, cell_h = side * zoom + 16, side * zoom + label + 8
    png = Image.new("L", (cols * cell_w + 8, rows * cell_h + 36), 255)
    draw = ImageDraw.Draw(png)
    title = f"Misclassified test images: {int((true != predicted).sum())} (first {len(wrong)} shown)"
    draw.text((png.width / 2, 10), title, fill=0, font=_font(13), anchor="mt")
    for k, i in enumerate(wrong):
        r, c = divmod(k, cols)
        x, y = 12 + c * cell_w, 36 + r * cell_h
        digit = (255 - np.clip(test.x[i].reshape(side, side), 0, 1) * 255).astype(np.uint8)
        png.paste(Image.fromarray(digit).resize((side * zoom, side * zoom), Image.NEAREST), (x, y + label))
        draw.text(
            (x + side * zoom / 2, y + label / 2), f"{true[i]} -> {predicted[i]}", fill=0, font=_font(12), anchor="mm"
        )
    _save(png, path)


@functools.cache  # ~150 labels per confusion matrix: load each size once per process
def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _save(png: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        png.save(tmp, format="PNG")
