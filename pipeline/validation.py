"""Start-up checks of the composed config: a bad value fails before data or TensorFlow load.

Each message names the key, the bad value, what is allowed and how to fix it. Type and
key checks that Hydra can do itself (unknown groups, keys that do not exist) stay
with Hydra; these are the range and type rules it cannot express.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from pipeline.errors import PipelineError

FULL_BATCH = "full"


def _bad(key: str, value: Any, allowed: str, example: str) -> PipelineError:
    return PipelineError(f"{key}={value!r} is not allowed: {allowed}. Fix it, e.g. {key}={example}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_batch_size(value: Any) -> None:
    """A positive integer or `full` (the whole training set as one batch)."""
    if not (value == FULL_BATCH or (_is_int(value) and value > 0)):
        raise _bad(
            "train.batch_size", value, f"a positive integer or '{FULL_BATCH}' (full-batch gradient descent)", "128"
        )


def resolve_batch_size(value: Any, n_train: int) -> int:
    """The number of samples per step; `full` is the whole training set."""
    check_batch_size(value)
    return n_train if value == FULL_BATCH else min(int(value), n_train)


def check_config(cfg: DictConfig) -> None:
    """Validate the training-related values of a composed config (cheap, no imports)."""
    train = cfg.get("train")
    if train is not None:
        check_batch_size(train.batch_size)
        if not (_is_int(train.epochs) and train.epochs > 0):
            raise _bad("train.epochs", train.epochs, "a positive integer", "5")
        if not (_is_int(train.steps_per_execution) and train.steps_per_execution > 0):
            raise _bad("train.steps_per_execution", train.steps_per_execution, "a positive integer", "64")
        if not _is_int(train.seed):
            raise _bad("train.seed", train.seed, "an integer", "0")
        threads = train.get("threads")
        if threads is not None and not (_is_int(threads) and threads > 0):
            raise _bad("train.threads", threads, "a positive integer or null (all cores)", "2")
    optimizer = cfg.get("optimizer")
    if optimizer is not None:
        lr = optimizer.get("learning_rate")
        if not (_is_number(lr) and lr > 0):
            raise _bad("optimizer.learning_rate", lr, "a number > 0", "0.001")
        momentum = optimizer.get("momentum")
        if momentum is not None and not (_is_number(momentum) and 0 <= momentum < 1):
            raise _bad("optimizer.momentum", momentum, "a number in [0, 1)", "0.9")
    model = cfg.get("model")
    if model is not None:
        units = model.get("hidden_units")
        if not isinstance(units, ListConfig | list) or not all(_is_int(u) and u > 0 for u in units):
            raise _bad("model.hidden_units", units, "a list of positive integers (layer sizes)", "[512]")
    split = cfg.get("split")
    if split is not None:
        check_val_fraction(split.get("val_fraction"))
    tracking = cfg.get("tracking")
    if tracking is not None:
        timeout = tracking.server_timeout_s
        if not (_is_number(timeout) and timeout > 0):
            raise _bad("tracking.server_timeout_s", timeout, "a number of seconds > 0", "10")


def check_val_fraction(value: Any) -> float:
    """The validation fraction, strictly between 0 and 1."""
    if not (_is_number(value) and 0 < value < 1):
        raise _bad("split.val_fraction", value, "a number strictly between 0 and 1", "0.1")
    return float(value)
