"""Shared fixtures: tiny datasets the tests make, and the real config composed on tmp_path."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from pipeline.atomic import write_npz
from pipeline.config import CONFIG_DIR, PACKAGE_CHECKOUT

os.environ.setdefault("MPLBACKEND", "Agg")


def make_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` learnable fake digits: each class lights its own 7x7 block of a 28x28 image."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, row * 7 : row * 7 + 7, col * 7 : col * 7 + 7] = 255
    return images, labels.astype(np.uint8)


def tiny_arrays(n_train: int = 400, n_test: int = 100) -> dict[str, np.ndarray]:
    x_train, y_train = make_digits(n_train, seed=1)
    x_test, y_test = make_digits(n_test, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gzipped: bool) -> Path:
    """Write the four IDX files of `arrays` into `folder`."""
    from pipeline.sources import IDX_STEMS

    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_STEMS.items():
        data = idx_bytes(arrays[key])
        if gzipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A tiny Keras-layout mnist.npz."""
    path = tmp_path / "source" / "tiny.npz"
    path.parent.mkdir(parents=True)
    write_npz(path, tiny_arrays())
    return path


def compose_config(root: Path, *overrides: str) -> DictConfig:
    """The real config with every path under `root` and a SQLite store there."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.root={root}", *overrides])
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config with every path under tmp_path and a tmp SQLite store."""

    def _compose(*overrides: str, root: Path | None = None) -> DictConfig:
        return compose_config(root or tmp_path / "project", *overrides)

    return _compose


@pytest.fixture
def tiny_data_cfg(compose_cfg, tiny_npz) -> Callable[..., DictConfig]:
    """Config whose dataset mirror is the tiny npz, with download and preprocess done."""
    from pipeline.download import download_dataset
    from pipeline.preprocess import preprocess_dataset

    def _make(*overrides: str) -> DictConfig:
        mirror = f"dataset.mirrors=[{{url: '{tiny_npz}', sha256: null}}]"
        cfg = compose_cfg(mirror, "train.epochs=1", "train.batch_size=32", "split.val_fraction=0.2", *overrides)
        download_dataset(cfg)
        preprocess_dataset(cfg)
        return cfg

    return _make


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    """Tests choose their own MLflow store; a user's MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MNIST_PIPELINE_PARENT_RUN_ID", raising=False)


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m module args` as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or PACKAGE_CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
