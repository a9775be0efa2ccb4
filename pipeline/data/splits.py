"""The processed splits: how MNIST images become features, and reading them back verified.

A split is read once per process and file version (the jobs of an in-process sweep
share it), hashed from the very bytes that are parsed, checked against what preprocess
recorded in `meta.json`, and refused when the run's dataset or split settings contradict
the ones the data was made with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pipeline.core.errors import PipelineError
from pipeline.core.paths import project_paths

# Batch size of the TensorFlow backend's validation passes (JAX validation and test scoring take the whole
# split at once): no gradient step, so only speed depends on it.
INFERENCE_BATCH_SIZE = 1000
REBUILD = "rerun preprocess (dvc repro preprocess, or python -m pipeline.download && python -m pipeline.preprocess)"


def to_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H*W) float32 scaled to [0, 1], as in the reference."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows."""
    return np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]


@dataclass(frozen=True)
class Split:
    """Features `(N, 784)` float32, one-hot labels `(N, classes)` float32, and their file's sha256."""

    x: np.ndarray
    y: np.ndarray
    sha256: str = ""
    path: Path | None = None


def read_meta(cfg: DictConfig) -> dict[str, Any]:
    """What preprocess recorded about the splits it wrote (`meta.json`)."""
    path = project_paths(cfg).processed_meta
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise PipelineError(f"Processed data record {path} is missing: {REBUILD}.") from err
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path} cannot be read ({err}): {REBUILD}.") from err


def load_split(cfg: DictConfig, name: str) -> Split:
    """Load one processed split, verified against `meta.json` and the run's split settings."""
    path = project_paths(cfg).processed(name)
    if not path.is_file():
        raise PipelineError(f"Processed data {path} is missing: {REBUILD}.")
    meta = read_meta(cfg)
    stat = path.stat()
    split = _read_split(path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
    recorded = (meta.get("sha256") or {}).get(name)
    if recorded != split.sha256:
        raise PipelineError(
            f"{path} (sha256 {split.sha256[:12]}) is not the file preprocess wrote "
            f"(meta.json says {str(recorded)[:12]}): it was replaced or changed. {REBUILD[0].upper()}{REBUILD[1:]}."
        )
    check_dataset(cfg, meta)
    check_split_settings(cfg, meta)
    return split


def check_dataset(cfg: DictConfig, meta: dict[str, Any]) -> None:
    """The processed data must come from the run's dataset: one processed folder serves every dataset."""
    wanted = project_paths(cfg).raw_data.name
    made_from = meta.get("source")
    if made_from is not None and made_from != wanted:
        dataset = cfg.dataset.name
        raise PipelineError(
            f"This run asks for dataset={dataset} ({wanted}), but the processed data was made from {made_from}. "
            f"Make the data for it first (python -m pipeline.download dataset={dataset} && "
            f"python -m pipeline.preprocess dataset={dataset}), or run with the dataset the data was made from."
        )


def check_split_settings(cfg: DictConfig, meta: dict[str, Any]) -> None:
    """The run's `split.*` must be the settings the processed data was made with."""
    made = meta.get("split") or {}
    given = {"val_fraction": float(cfg.split.val_fraction), "seed": int(cfg.split.seed)}
    if {k: made.get(k) for k in given} != given:
        asked = " ".join(f"split.{k}={v}" for k, v in given.items())
        have = " ".join(f"split.{k}={made.get(k)}" for k in given)
        raise PipelineError(
            f"This run asks for {asked}, but the processed data was made with {have}. "
            f"Make the data with your settings first (python -m pipeline.preprocess {asked}), "
            "or drop the split overrides."
        )


@functools.lru_cache(maxsize=3)
def _read_split(path: Path, mtime_ns: int, size: int, inode: int) -> Split:
    """Hash and parse the same open file: the hash describes exactly the bytes used."""
    try:
        with open(path, "rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as npz:
                x, y = npz["x"], npz["y"]
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError) as err:
        raise PipelineError(
            f"{path} cannot be read as a processed split ({type(err).__name__}: {err}); "
            f"it is damaged or not what preprocess wrote: {REBUILD}."
        ) from err
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or x.dtype != np.float32:
        raise PipelineError(f"{path} holds x {x.shape} {x.dtype} and y {y.shape}, not a processed split: {REBUILD}.")
    x.flags.writeable = y.flags.writeable = False  # shared between jobs: nobody may change it
    return Split(x=x, y=y, sha256=sha256, path=path)
