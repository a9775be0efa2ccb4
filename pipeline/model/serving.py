"""The model as MLflow logs and serves it: digit images (28 x 28) or flat rows (784) in, digits out.

`DigitClassifier` is an MLflow pyfunc model around the trained Keras file. Its signature
has two optional inputs, `image` (28 x 28 floats in [0, 1], digit white on black, as
MNIST) and `pixels` (the same 784 values as one flat row); each record gives one of
them. It returns `digit` and `probability` (of that digit) and `probabilities` (all ten).

The inputs are typed `Any`, and `as_rows` checks their shape and range: MLflow 3.17 turns
the scoring protocol's `instances` rows into one stacked array per field, which an
`Array` column type refuses ("Data must be 1-dimensional"), so typed arrays would serve
only `dataframe_records`, `dataframe_split` and `inputs`. With `Any`, all four formats
reach `as_rows` as one record per image; with `instances`, every row must give the same
field (MLflow stacks rows by field, so rows of both forms arrive as one record with both,
which is refused).
`to_mnist` converts an image file the way MNIST was made, for `pipeline.predict`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from pipeline.core.errors import PipelineError

SIDE = 28  # MNIST images are 28 x 28 ...
BOX = 20  # ... with the digit scaled to fit 20 x 20 and centred by its centre of mass
INK_THRESHOLD = 0.1  # pixels above this (after inversion, in [0, 1]) count as ink when cropping


def signature() -> Any:
    """`image` (28 x 28) or `pixels` (784) in; digit, its probability and all ten out."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    inputs = Schema([ColSpec(AnyType(), "image", required=False), ColSpec(AnyType(), "pixels", required=False)])
    outputs = Schema(
        [
            ColSpec(DataType.long, "digit"),
            ColSpec(DataType.float, "probability"),
            ColSpec(Array(DataType.float), "probabilities"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> list[dict]:
    """One record holding a blank image (MLflow writes it as the `inputs` request of `serving_input_example.json`)."""
    return [{"image": [[0.0] * SIDE for _ in range(SIDE)]}]


FIELDS = "`image` (28 x 28 values) or `pixels` (784 values), each a grey level in [0, 1]"


def as_rows(data: Any) -> np.ndarray:
    """Records with `image` (28 x 28) or `pixels` (784) -> float32 rows (N, 784); anything else is refused.

    A refusal is an `MlflowException(INVALID_PARAMETER_VALUE)`: the scoring server answers it
    with HTTP 400 and this message. MLflow drops fields the signature does not name before
    the model sees the records, so a request whose fields are all misspelt arrives empty.
    """
    import pandas as pd

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    if frame.empty:
        raise _refused(f"no record holds {FIELDS}: a misspelt or missing field? (unknown fields are dropped)")
    rows = []
    for i, record in enumerate(frame.to_dict("records")):
        given = [k for k in ("image", "pixels") if _present(record.get(k))]
        if len(given) != 1:
            which = "neither field" if not given else "both fields"
            raise _refused(f"record {i} has {which}: give one of {FIELDS} (`instances`: the same one in every row)")
        field = given[0]
        try:
            row = np.asarray(record[field], dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as err:
            raise _refused(f"record {i}: `{field}` is not a grid of numbers ({err}); give {FIELDS}") from err
        if row.size != SIDE * SIDE:
            raise _refused(f"record {i}: `{field}` has {row.size} values; an image is 28 x 28 = 784 values in [0, 1]")
        if not np.isfinite(row).all() or row.min() < 0 or row.max() > 1:
            raise _refused(
                f"record {i}: `{field}` holds values outside [0, 1] (min {np.nanmin(row):g}, max {np.nanmax(row):g}, "
                f"{int((~np.isfinite(row)).sum())} not finite); scale grey levels to [0, 1], e.g. divide 0-255 by 255"
            )
        rows.append(row)
    return np.stack(rows)


def _refused(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# MLflow warns, when such a class is defined, that its predict has no type hints: on
# purpose, since the signature (two optional inputs) is the schema.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class DigitClassifier(mlflow.pyfunc.PythonModel):
        """The Keras model behind a pyfunc that takes images or flat rows."""

        def load_context(self, context: Any) -> None:
            from pipeline.model.networks import load_model

            self.model = load_model(context.artifacts["keras_model"])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            probs = np.asarray(self.model(as_rows(model_input), training=False), dtype=np.float32)
            digits = probs.argmax(axis=1)
            return pd.DataFrame(
                {
                    "digit": digits.astype(np.int64),
                    "probability": probs[np.arange(len(probs)), digits],
                    "probabilities": list(probs),
                }
            )


def viewed_grey(path: Path) -> np.ndarray:
    """The image as a viewer shows it, in grey levels [0, 1]: turned by its EXIF orientation (phone photos),
    transparent parts on white, any bit depth (16-bit greys scaled, not clipped) and colour mode."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit integer or float greys
        values = np.asarray(image, dtype=np.float64)
        full = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return np.clip(values / (1.0 if image.mode == "F" and values.max() <= 1 else full), 0, 1).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.float32) / 255.0


def to_mnist(path: Path, invert: str = "auto") -> np.ndarray:
    """An image file as MNIST made its digits: grey, digit white on black, fitted into 20 x 20,
    centred by its centre of mass in 28 x 28, scaled to [0, 1]; returns 784 float32 values.

    Dark-on-light rule (`invert=auto`): when the outermost pixels are on average light
    (>= 0.5), the image is a dark digit on a light background and is inverted.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        grey = viewed_grey(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PipelineError(f"{path} is not an image Pillow can read (PNG or JPEG): {err}") from err
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if invert == "true" or (invert == "auto" and border.mean() >= 0.5):
        grey = 1.0 - grey
    ink = np.argwhere(grey > INK_THRESHOLD)
    if ink.size == 0:
        raise PipelineError(f"{path}: no digit found (the image is blank after the dark-on-light rule)")
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    digit = grey[top:bottom, left:right]
    scale = BOX / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))
    small = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32) / 255
    canvas = np.zeros((SIDE, SIDE), np.float32)
    row, col = (SIDE - small.shape[0]) // 2, (SIDE - small.shape[1]) // 2
    canvas[row : row + small.shape[0], col : col + small.shape[1]] = small
    mass = canvas.sum()
    cy, cx = (np.indices(canvas.shape) * canvas).reshape(2, -1).sum(axis=1) / mass
    shift = (int(round(SIDE / 2 - 0.5 - cy)), int(round(SIDE / 2 - 0.5 - cx)))
    canvas = np.roll(canvas, shift, axis=(0, 1))
    return np.clip(canvas, 0, 1).reshape(-1)
