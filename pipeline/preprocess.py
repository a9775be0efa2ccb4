"""Preprocess stage: the reference preprocessing plus a validation split.

Images `(N, 28, 28)` uint8 -> `(N, 784)` float32 in [0, 1]; labels -> one-hot float32.
A seeded validation split is carved from the training set; the test set is untouched.
Writes `<processed_dir>/{train,val,test}.npz` and `meta.json` (ndim, shape, dtype of
every tensor, checksums, split settings).
"""

from __future__ import annotations

import logging

import numpy as np
from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.core.config import check_val_fraction
from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_file, write_json, write_npz
from pipeline.core.paths import project_paths
from pipeline.data.raw import read_npz, validate_arrays
from pipeline.data.splits import one_hot, to_features

log = logging.getLogger(__name__)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded permutation of range(n) cut into (train, val) index arrays, each sorted."""
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise PipelineError(
            f"split.val_fraction={val_fraction} leaves {n_val} of {n} training images for validation; "
            "choose a fraction that keeps at least one image on each side."
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def preprocess_dataset(cfg: DictConfig) -> dict:
    """Read the canonical raw dataset, write the processed splits; return the metadata."""
    val_fraction = check_val_fraction(cfg.split.val_fraction)
    paths = project_paths(cfg)
    raw_file = paths.raw_data
    if not raw_file.is_file():
        raise PipelineError(f"{raw_file} does not exist: run the download stage first (python -m pipeline.download).")
    raw = read_npz(raw_file)
    validate_arrays(raw, str(raw_file), cfg.dataset.image_shape, cfg.dataset.num_classes)

    train_idx, val_idx = split_indices(len(raw["y_train"]), val_fraction, int(cfg.split.seed))
    k = int(cfg.dataset.num_classes)
    splits = {
        "train": (raw["x_train"][train_idx], raw["y_train"][train_idx]),
        "val": (raw["x_train"][val_idx], raw["y_train"][val_idx]),
        "test": (raw["x_test"], raw["y_test"]),
    }
    meta = {
        "source": raw_file.name,
        "source_sha256": sha256_file(raw_file),
        "split": {"val_fraction": val_fraction, "seed": int(cfg.split.seed)},
    }
    tensors, checksums = {}, {}
    for name, (images, labels) in splits.items():
        arrays = {"x": to_features(images), "y": one_hot(labels, k)}
        write_npz(paths.processed(name), arrays)
        checksums[name] = sha256_file(paths.processed(name))
        tensors[name] = {
            key: {"ndim": a.ndim, "shape": list(a.shape), "dtype": str(a.dtype)} for key, a in arrays.items()
        }
        log.info("%s: x %s %s, y %s", name, arrays["x"].shape, arrays["x"].dtype, arrays["y"].shape)
    meta.update(tensors=tensors, sha256=checksums)
    write_json(paths.processed_meta, meta)
    return meta


main = stage_main(preprocess_dataset)  # python -m pipeline.preprocess [overrides]


if __name__ == "__main__":
    main()
