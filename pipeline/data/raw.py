"""The raw dataset file between download and preprocess: the four arrays in Keras's `.npz` layout.

The download writes it (from whichever mirror) and the preprocess stage reads it back; both
check it here, so editing how a mirror is fetched (`pipeline.data.sources`) reruns the
download alone.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError

SPLITS = ("x_train", "y_train", "x_test", "y_test")


class DatasetFormatError(PipelineError):
    """A dataset file that cannot be read or does not hold what it should."""


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a Keras-layout `.npz` (x_train, y_train, x_test, y_test) without pickles."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in SPLITS if k not in npz.files]
            if missing:
                raise DatasetFormatError(
                    f"{path}: missing arrays {missing}; an MNIST .npz holds {list(SPLITS)} (found {npz.files})"
                )
            return {k: npz[k] for k in SPLITS}
    except DatasetFormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DatasetFormatError(f"{path}: not a readable .npz archive ({err}); the file may be truncated") from err


def validate_arrays(arrays: Mapping[str, np.ndarray], source: str, image_shape, num_classes: int) -> None:
    """Check shapes, dtypes, label range and matching counts; name the source and problem."""
    image_shape = tuple(image_shape)
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != image_shape:
            raise DatasetFormatError(
                f"{source}: x_{split} is {x.dtype} {x.shape}; expected uint8 (N, {image_shape[0]}, {image_shape[1]})"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DatasetFormatError(f"{source}: y_{split} is {y.dtype} {y.shape}; expected integer labels (N,)")
        if len(x) != len(y):
            raise DatasetFormatError(f"{source}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetFormatError(
                f"{source}: y_{split} holds labels {int(y.min())}..{int(y.max())}; allowed 0..{num_classes - 1}"
            )
