"""Preprocess stage: the reference preprocessing, the split, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_module, tiny_arrays

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_npz
from pipeline.core.paths import project_paths
from pipeline.download import download_dataset
from pipeline.preprocess import preprocess_dataset


@pytest.fixture
def downloaded(compose_cfg, tiny_npz):
    def _cfg(*overrides):
        cfg = compose_cfg(f"dataset.mirrors=[{{url: '{tiny_npz}', sha256: null}}]", *overrides)
        download_dataset(cfg)
        return cfg

    return _cfg


def load(path):
    with np.load(path) as npz:
        return npz["x"], npz["y"]


def test_reference_preprocessing_and_split(downloaded):
    cfg = downloaded("split.val_fraction=0.25", "split.seed=7")
    meta = preprocess_dataset(cfg)
    paths = project_paths(cfg)
    raw = tiny_arrays()
    x_train, y_train = load(paths.processed("train"))
    x_val, y_val = load(paths.processed("val"))
    x_test, y_test = load(paths.processed("test"))
    assert (len(x_train), len(x_val)) == (300, 100)
    assert x_train.dtype == np.float32 and x_train.shape[1] == 784
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert y_train.shape == (300, 10) and np.all(y_train.sum(axis=1) == 1)
    # The test split is the raw test set, untouched and in order.
    np.testing.assert_array_equal(x_test, raw["x_test"].reshape(100, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(y_test.argmax(1), raw["y_test"])
    # Train and validation partition the raw training set.
    rows = {r.tobytes() for r in np.concatenate([x_train, x_val])}
    assert rows == {r.tobytes() for r in raw["x_train"].reshape(400, 784).astype(np.float32) / 255}
    assert meta["tensors"]["train"]["x"] == {"ndim": 2, "shape": [300, 784], "dtype": "float32"}
    assert meta["tensors"]["test"]["y"] == {"ndim": 2, "shape": [100, 10], "dtype": "float32"}
    assert json.loads(paths.processed_meta.read_text()) == meta


def test_same_seed_same_split_other_seed_other_split(downloaded):
    cfg = downloaded()
    first = preprocess_dataset(cfg)["sha256"]
    assert preprocess_dataset(cfg)["sha256"] == first, "byte-identical outputs for DVC"
    cfg.split.seed = 1
    assert preprocess_dataset(cfg)["sha256"]["train"] != first["train"]


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_val_fraction_outside_unit_interval(downloaded, fraction):
    cfg = downloaded()
    cfg.split.val_fraction = fraction
    with pytest.raises(PipelineError, match=r"split.val_fraction=.* strictly between 0 and 1"):
        preprocess_dataset(cfg)
    assert not project_paths(cfg).processed("train").exists()


def test_missing_raw_data_names_the_stage(compose_cfg):
    with pytest.raises(PipelineError, match="run the download stage first"):
        preprocess_dataset(compose_cfg())


def test_corrupt_raw_file_names_file_and_problem(downloaded):
    cfg = downloaded()
    raw_file = project_paths(cfg).raw_data
    arrays = tiny_arrays()
    arrays["x_test"] = arrays["x_test"][:, :20, :]
    write_npz(raw_file, arrays)
    with pytest.raises(
        PipelineError, match=r"mnist.npz: x_test is uint8 \(100, 20, 28\); expected uint8 \(N, 28, 28\)"
    ):
        preprocess_dataset(cfg)


def test_mismatched_counts(downloaded):
    cfg = downloaded()
    raw_file = project_paths(cfg).raw_data
    arrays = tiny_arrays()
    arrays["y_train"] = arrays["y_train"][:-1]
    write_npz(raw_file, arrays)
    with pytest.raises(PipelineError, match="x_train has 400 images but y_train has 399 labels"):
        preprocess_dataset(cfg)


def test_cli_bad_fraction_exits_with_message(tmp_path):
    result = run_module("pipeline.preprocess", f"paths.root={tmp_path}", "split.val_fraction=2")
    assert result.returncode == 1
    assert "split.val_fraction=2.0 is not allowed" in result.stdout + result.stderr
