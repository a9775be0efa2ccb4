"""Reading the processed splits, and where each stage writes its outputs."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from pipeline.config import project_path
from pipeline.errors import PipelineError
from pipeline.preprocess import processed_paths

# Batch size for validation and test passes: no gradient step, so only speed depends on it.
INFERENCE_BATCH_SIZE = 1000


@dataclass(frozen=True)
class Split:
    """Features `(N, 784)` float32 and one-hot labels `(N, classes)` float32."""

    x: np.ndarray
    y: np.ndarray


def load_split(cfg: DictConfig, name: str) -> Split:
    """Load one processed split, or say which stage produces it."""
    path = processed_paths(cfg)[name]
    if not path.is_file():
        raise PipelineError(
            f"Processed data {path} is missing: run the preprocess stage first "
            "(dvc repro preprocess, or python -m pipeline.download && python -m pipeline.preprocess)."
        )
    stat = path.stat()
    return _read_split(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=3)
def _read_split(path: Path, mtime_ns: int, size: int) -> Split:
    """Read once per process and file version: the jobs of an in-process sweep share it."""
    with np.load(path, allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"]
    x.flags.writeable = y.flags.writeable = False  # shared between jobs: nobody may change it
    return Split(x=x, y=y)


def processed_checksums(cfg: DictConfig) -> dict[str, str]:
    """The sha256 of each processed split as recorded by preprocess (empty if unknown)."""
    meta = processed_paths(cfg)["meta"]
    try:
        return json.loads(meta.read_text()).get("sha256", {})
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class OutputPaths:
    """Files a training/evaluation writes: the stage folders, or one sweep job's folder."""

    model: Path
    run_info: Path
    history: Path
    metrics: Path
    confusion_matrix: Path
    misclassified: Path

    @classmethod
    def for_stages(cls, cfg: DictConfig) -> OutputPaths:
        models, reports = project_path(cfg, "models_dir"), project_path(cfg, "reports_dir")
        return cls._build(models, reports)

    @classmethod
    def in_folder(cls, folder: Path) -> OutputPaths:
        return cls._build(folder, folder)

    @classmethod
    def _build(cls, models: Path, reports: Path) -> OutputPaths:
        return cls(
            model=models / "model.keras",
            run_info=models / "run.json",
            history=reports / "history.csv",
            metrics=reports / "metrics.json",
            confusion_matrix=reports / "confusion_matrix.png",
            misclassified=reports / "misclassified.png",
        )
