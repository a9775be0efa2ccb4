"""Training: fit the configured Keras model, epoch by epoch, on either Keras backend.

- `train.backend=jax` (the default, fastest here: benchmarks/README.md): the steps
  between two validations (`train.evals_per_epoch` an epoch) run as one compiled program.
  The Keras model and optimizer run through Keras' stateless API
  (`model.stateless_call`, `optimizer.stateless_apply`) inside `jax.lax.scan`, so the
  maths is Keras' own (initialisers, optimizer updates, loss), without `fit`'s
  per-step Python. The compiled program is cached per model and optimizer shape, so
  the seeds and jobs of a sweep in one process compile it once.
- `train.backend=tensorflow`: `model.fit` with XLA and `steps_per_execution`.

Both shuffle every epoch from `train.seed`, report the same per-epoch row (loss and
accuracy weighted by batch size, as Keras does, then validation loss and accuracy),
and stop a run that diverges (`check_divergence`).

`train.batch_size` on its way to the optimizer step, in this module and `core.config`:
`check_config` (run by `core.app.prepare_config`, and by the sweep callback for every
job) refuses a value that is not a positive integer or `full` before anything runs, and
`check_batch_fits` (below) one larger than the training set; `fit` resolves `full` to the
training set's size (`resolve_batch_size`); `build_optimizer` scales the learning rate
with it by `train.lr_scaling` (`effective_learning_rate`: `none`; `linear`: x B /
`train.base_batch_size`; `sqrt`: x its square root); on JAX, `BatchStream` cuts each
epoch's seeded permutation into batches of that size (the last one padded with rows of
weight 0), one optimizer step each; on TensorFlow it is `model.fit(batch_size=...)`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import backend_name, build_optimizer, resolve_batch_size
from pipeline.core.env import THREADS
from pipeline.core.errors import PipelineError, check_stop
from pipeline.data.splits import INFERENCE_BATCH_SIZE, Split, check_dataset, read_meta

log = logging.getLogger(__name__)

# Columns of the per-epoch history that depend on the data and seed only (DVC plots);
# timings go to MLflow, never into a DVC output.
CURVE_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]

EpochCallback = Callable[[dict[str, float]], None]


class DivergedError(PipelineError):
    """The run's weights blew up, or it does not learn (see `check_divergence`).

    Raised at the end of an epoch, after its row is logged and before any file is
    written, so the previous model and history stay. The run ends FAILED with its
    `failure_reason` tag (`core.store.final_status`); a stage prints the one line and
    exits 1 (`core.app.stage_main`, as for any `PipelineError`); in a sweep the job logs
    it and goes on with its next seed and the next cell (`sweeps.jobs.run_sweep_job`),
    and compare leaves the run out (it counts finished runs only).
    """


@dataclass
class TrainResult:
    """A trained model and what was measured while training it."""

    model: Any
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    batch_size: int = 0
    threads: int = 0
    # Validation during training, `train.evals_per_epoch` times an epoch on JAX (once on TensorFlow): step,
    # samples, epoch (fractional), training seconds so far (validation not counted on JAX, counted on
    # TensorFlow), val_loss, val_accuracy.
    evaluations: list[dict[str, float]] = field(default_factory=list)


def time_to_target(evaluations: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluation whose validation accuracy reaches `target` (AlgoPerf's score); None if none does."""
    return next((e for e in evaluations if e["val_accuracy"] >= target), None)


def gradient_noise_scale(small_sq: float, big_sq: float, small: int, big: int) -> dict[str, float]:
    """The simple gradient noise scale from mean squared gradient norms at two batch sizes.

    McCandlish et al. 2018, appendix A.1: a batch of B gives E|G_B|^2 = |G|^2 + tr(Sigma) / B, so
    `small_sq` (the mean of |G_small|^2 over the sub-batches) and `big_sq` (|G_big|^2 of their
    union) give estimates of |G|^2 (`noise.gradient_sq`) and tr(Sigma) (`noise.trace`),
    and B_simple = tr(Sigma) / |G|^2 (`noise_scale`). The ratio is only stated when both
    estimates are positive: late in training the noise can swamp |G|^2 in a single estimate.
    """
    gradient_sq = (big * big_sq - small * small_sq) / (big - small)
    trace = (small_sq - big_sq) / (1 / small - 1 / big)
    out = {"noise.gradient_sq": gradient_sq, "noise.trace": trace}
    if gradient_sq > 0 and trace > 0:
        out["noise_scale"] = trace / gradient_sq
    return out


def blown_up(loss: float, accuracy: float, num_classes: int, rule: DictConfig) -> str | None:
    """Why training says the weights blew up (see `check_divergence`), or None."""
    if not math.isfinite(loss):
        return f"training loss is {loss}"
    chance, uniform_loss = 1.0 / num_classes, math.log(num_classes)
    if accuracy <= chance + rule.chance_margin and loss > rule.loss_factor * uniform_loss:
        return (
            f"training accuracy {accuracy:.4f} is at chance ({chance:.2f}) while the loss {loss:.4g} is above "
            f"{rule.loss_factor:g} x ln({num_classes}) = {rule.loss_factor * uniform_loss:.2f}, worse than guessing"
        )
    return None


def check_divergence(row: dict[str, float], num_classes: int, rule: DictConfig, steps: int, start: float) -> None:
    """Raise `DivergedError` when an epoch says the weights blew up, or that the run does not learn.

    Diverged: the training loss is not finite, or the training accuracy is within
    `rule.chance_margin` of chance (1 / classes) while the loss exceeds `rule.loss_factor`
    x ln(classes), the cross-entropy of a uniform guess (Keras clips probabilities, so
    the loss of a blown-up network can stay finite). Not learning: after `steps` >=
    `rule.learn_after_steps` optimizer steps, the validation accuracy has not risen by
    `rule.min_accuracy_gain` above `start`, the untrained network's, whatever the loss
    (a learning rate of 1e-30). A slowly starting run with few steps (full-batch gradient descent takes one
    per epoch) is not judged; the config admits only losses and metrics this rule can
    judge (`pipeline.core.config`).
    """
    loss, accuracy, epoch = row["loss"], row["accuracy"], int(row["epoch"])
    hint = "lower optimizer.learning_rate, e.g. optimizer.learning_rate=0.01"
    reason = blown_up(loss, accuracy, num_classes, rule)
    if reason:
        raise DivergedError(f"diverged at epoch {epoch}: {reason} ({hint})")
    if steps >= rule.learn_after_steps and row["val_accuracy"] < start + rule.min_accuracy_gain:
        raise DivergedError(
            f"does not learn: after {steps} steps ({epoch} epoch(s)) the validation accuracy {row['val_accuracy']:.4f} "
            f"is no better than the untrained network's {start:.4f}; raise the learning rate "
            "(optimizer.learning_rate or train.lr_factor), e.g. optimizer.learning_rate=0.01"
        )


def keras_verbosity(setting: Any) -> int:
    """Progress bar on a terminal, one line per epoch otherwise (logs, CI, DVC)."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(setting)


def thread_count(cfg: DictConfig) -> int | None:
    """Intra-op threads asked for: `train.threads`, else a sweep job's share, else None (all)."""
    threads = cfg.train.get("threads") or os.environ.get(THREADS)
    return int(threads) if threads else None


def limit_threads(threads: int | None) -> None:
    """Ask XLA (JAX) for `threads` compute threads; must happen before JAX starts."""
    if threads and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            extra = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
            os.environ["XLA_FLAGS"] = f"{flags} {extra}intra_op_parallelism_threads={threads}".strip()


def use_compilation_cache(folder: str | None) -> None:
    """Keep JAX's compiled programs on disk, so the next process skips compiling them (same results)."""
    if not folder:
        return
    import jax

    path = os.path.expanduser(folder)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        log.warning("No JAX compilation cache at %s (%s); compiling every run", path, err.strerror)
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def check_batch_fits(cfg: DictConfig) -> None:
    """Refuse processed data of another dataset, and a batch size above its training set (from what
    preprocess recorded; skipped without it). A sweep checks every job with it before the first starts."""
    try:
        meta = read_meta(cfg)
        n_train = int(meta["tensors"]["train"]["x"]["shape"][0])
    except (PipelineError, KeyError, TypeError):
        return  # no processed data yet: reading the splits says so
    check_dataset(cfg, meta)
    resolve_batch_size(cfg.train.batch_size, n_train)


def fit(cfg: DictConfig, train: Split, val: Split, on_epoch: EpochCallback | None = None) -> TrainResult:
    """Build, compile and fit the model on `train` from `train.seed`, validating on `val` (on JAX up to
    `train.evals_per_epoch` times an epoch, on TensorFlow once an epoch)."""
    threads = thread_count(cfg)
    batch_size = resolve_batch_size(cfg.train.batch_size, len(train.x))
    fit_backend = _fit_jax if backend_name(cfg) == "jax" else _fit_tensorflow
    history: list[dict[str, float]] = []
    steps_per_epoch = -(-len(train.x) // batch_size)

    def end_epoch(row: dict[str, float], start: float) -> None:
        check_stop()
        history.append(row)
        if on_epoch:
            on_epoch(row)
        steps = steps_per_epoch * int(row["epoch"])
        check_divergence(row, train.y.shape[1], cfg.train.divergence, steps, start)

    result = TrainResult(None, history, 0.0, batch_size)
    result.model, result.train_seconds, result.threads = fit_backend(
        cfg, train, val, batch_size, threads, end_epoch, result.evaluations
    )
    return result


def history_csv(history: list[dict[str, float]]) -> str:
    """The per-epoch curves as CSV (deterministic columns only; for `dvc plots`)."""
    import pandas as pd

    return pd.DataFrame(history, columns=CURVE_COLUMNS).to_csv(index=False, lineterminator="\n")


def _fit_tensorflow(cfg, train, val, batch_size, threads, end_epoch, evaluations):
    import keras
    import tensorflow as tf

    from pipeline.model.networks import build_model

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # already initialised in this process (a later job of a sweep)
            pass
    keras.utils.set_random_seed(int(cfg.train.seed))  # seeds the shuffling of fit
    model = build_model(cfg, train.x.shape[1], train.y.shape[1])
    model.compile(
        optimizer=build_optimizer(cfg, batch_size),
        loss=cfg.train.loss,
        metrics=list(cfg.train.metrics),
        steps_per_execution=int(cfg.train.steps_per_execution),
        jit_compile=bool(cfg.train.jit_compile),
    )

    start = float(
        model.evaluate(val.x, val.y, batch_size=INFERENCE_BATCH_SIZE, verbose=0, return_dict=True)["accuracy"]
    )

    steps = -(-len(train.x) // batch_size)

    class EpochEnd(keras.callbacks.Callback):  # the TensorFlow backend validates once an epoch
        trained = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            self.trained += seconds  # with its validation pass
            evaluations.append(
                {"step": steps * (epoch + 1), "samples": len(train.x) * (epoch + 1), "epoch": epoch + 1.0,
                 "train_seconds": self.trained, "val_loss": row["val_loss"], "val_accuracy": row["val_accuracy"]}
            )  # fmt: skip
            end_epoch({**row, "epoch_seconds": seconds, "samples_per_second": len(train.x) / seconds}, start)

    started = time.perf_counter()
    model.fit(
        train.x,
        train.y,
        batch_size=batch_size,
        epochs=int(cfg.train.epochs),
        validation_data=(val.x, val.y),
        validation_batch_size=INFERENCE_BATCH_SIZE,
        shuffle=True,
        verbose=keras_verbosity(cfg.train.verbose),
        callbacks=[EpochEnd()],
    )
    seconds = time.perf_counter() - started
    return model, seconds, tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


def jax_start(cfg: DictConfig, train: Split, val: Split, batch_size: int) -> tuple:
    """What a JAX run starts from: the model, its compiled program, the initial state (trainable,
    non-trainable and optimizer variables) and the splits on the device (x, y, x_val, y_val)."""
    from pipeline.model.networks import build_model

    use_compilation_cache(cfg.train.get("compilation_cache"))
    model = build_model(cfg, train.x.shape[1], train.y.shape[1])
    optimizer = build_optimizer(cfg, batch_size)
    optimizer.build(model.trainable_variables)
    program = JaxProgram.for_model(cfg, model, optimizer)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    return model, program, state, tuple(device_array(a) for a in (train.x, train.y, val.x, val.y))


def _fit_jax(cfg, train, val, batch_size, threads, end_epoch, evaluations):
    limit_threads(threads)
    model, program, state, (x, y, x_val, y_val) = jax_start(cfg, train, val, batch_size)
    start = program.evaluate(state[0], state[1], x_val, y_val)[1]  # the untrained network
    n, stream = len(train.x), BatchStream(len(train.x), batch_size, int(cfg.train.seed))
    steps = stream.steps_per_epoch
    # The epoch's scan cut into at most `evals_per_epoch` pieces (the same steps in the same order), validated
    # after each.
    piece = -(-steps // max(1, min(int(cfg.train.evals_per_epoch), steps)))
    bounds = [*range(0, steps, piece), steps]
    verbose = keras_verbosity(cfg.train.verbose)
    epochs = int(cfg.train.epochs)
    # The noise scale's images come from their own generator: training sees the same batches with it on or off.
    small = int(cfg.train.noise_scale.small_batch)
    sub_batches = min(int(cfg.train.noise_scale.examples), n) // small
    noise_rng = np.random.default_rng([int(cfg.train.seed), 1]) if sub_batches >= 2 else None
    # A time-to-target study needs no training past the target: the run ends at the first validation that reaches it.
    stop_at = float(cfg.compare.target) if cfg.train.get("stop_at_target") else None
    fit_started, trained, noise_seconds = time.perf_counter(), 0.0, 0.0
    for epoch in range(1, epochs + 1):
        started, loss_sum, correct = time.perf_counter(), 0.0, 0.0
        index, weight = stream.rows((epoch - 1) * steps, epoch * steps)
        for first, last in zip(bounds, bounds[1:], strict=False):
            piece_started = time.perf_counter()
            check_stop()
            state, piece_loss, piece_correct = program.epoch(state, x, y, index[first:last], weight[first:last])
            loss_sum, correct = loss_sum + float(piece_loss), correct + float(piece_correct)  # float() waits for it
            trained += time.perf_counter() - piece_started
            val_loss, val_accuracy = program.evaluate(state[0], state[1], x_val, y_val)
            evaluations.append(
                {
                    "step": (epoch - 1) * steps + last,
                    "samples": stream.samples((epoch - 1) * steps + last),
                    "epoch": epoch - 1 + last / steps,
                    "train_seconds": trained,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                }  # fmt: skip
            )
            if stop_at is not None and val_accuracy >= stop_at:
                break
        seconds = time.perf_counter() - started
        seen = min(last * batch_size, n)  # n, unless the run stopped at the target inside this epoch
        row = {"epoch": epoch, "loss": loss_sum / seen, "accuracy": correct / seen}
        row.update(val_loss=val_loss, val_accuracy=val_accuracy)
        if noise_rng is not None:  # a measurement, not training: its time is its own (`noise.seconds`)
            measuring = time.perf_counter()
            row.update(program.noise_scale(state, x, y, noise_rng, sub_batches, small))
            row["noise.seconds"] = time.perf_counter() - measuring
            noise_seconds += row["noise.seconds"]
        if verbose:
            print(
                f"Epoch {epoch}/{epochs} - {seconds:.1f}s - "
                + " - ".join(f"{k}: {row[k]:.4f}" for k in CURVE_COLUMNS[1:]),
                flush=True,
            )
        end_epoch({**row, "epoch_seconds": seconds, "samples_per_second": seen / seconds}, start)
        if stop_at is not None and val_accuracy >= stop_at:
            log.info("Reached compare.target=%g at step %d: stopped (train.stop_at_target)", stop_at,
                     evaluations[-1]["step"])  # fmt: skip
            break
    seconds = time.perf_counter() - fit_started - noise_seconds  # training and validation
    for variable, value in zip(model.trainable_variables, state[0], strict=True):
        variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, state[1], strict=True):
        variable.assign(value)
    return model, seconds, threads or (os.cpu_count() or 1)


class BatchStream:
    """Batch indices and weights, epoch after epoch: each epoch a permutation of the training set from
    `seed`, cut into batches, the last one padded with weight-0 rows."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.steps_per_epoch = -(-n // batch_size)
        self.rng = np.random.default_rng(seed)
        self.index = np.zeros((0, batch_size), np.int32)
        self.weight = np.zeros((0, batch_size), np.float32)
        self.first = 0  # the step of self.index[0]

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Steps [start, stop) (steps count from 0); earlier steps are forgotten."""
        while self.first + len(self.index) < stop:
            index = np.zeros(self.steps_per_epoch * self.batch_size, np.int32)
            index[: self.n] = self.rng.permutation(self.n)
            weight = np.zeros(self.steps_per_epoch * self.batch_size, np.float32)
            weight[: self.n] = 1.0
            shape = (self.steps_per_epoch, self.batch_size)
            self.index = np.concatenate([self.index, index.reshape(shape)])
            self.weight = np.concatenate([self.weight, weight.reshape(shape)])
        drop = start - self.first
        self.index, self.weight, self.first = self.index[drop:], self.weight[drop:], start
        return self.index[: stop - start], self.weight[: stop - start]

    def samples(self, steps: int) -> int:
        """Training images seen after `steps` steps (the padding of each epoch's last batch not counted)."""
        full_epochs, rest = divmod(steps, self.steps_per_epoch)
        return full_epochs * self.n + min(rest * self.batch_size, self.n)


_DEVICE_ARRAYS: dict[int, tuple[np.ndarray, Any]] = {}


def device_array(array: np.ndarray) -> Any:
    """`array` on the JAX device, copied once per process (the splits are read-only and shared)."""
    import jax.numpy as jnp

    cached = _DEVICE_ARRAYS.get(id(array))
    if cached is None or cached[0] is not array:
        cached = (array, jnp.asarray(array))
        _DEVICE_ARRAYS[id(array)] = cached
    return cached[1]


class JaxProgram:
    """The compiled epoch and evaluation of one model and optimizer shape (cached per process).

    Only the learning rate may differ between runs sharing a program: Keras keeps it
    in an optimizer variable, which is passed in, while the other hyperparameters are
    compiled in and so are part of the cache key.
    """

    _cache: dict[tuple, JaxProgram] = {}

    def __init__(self, model: Any, optimizer: Any, loss: str) -> None:
        import jax

        self.model, self.optimizer = model, optimizer
        self.loss = loss
        self.epoch = jax.jit(self._epoch, donate_argnums=(0,))
        self._compiled: dict[tuple, Any] = {}  # compiled_epoch's executables by shape
        self._evaluate = jax.jit(self._evaluate_batch)
        self._norms = jax.jit(self._gradient_norms)

    @classmethod
    def for_model(cls, cfg: DictConfig, model: Any, optimizer: Any) -> JaxProgram:
        optimizer_config = {k: v for k, v in optimizer.get_config().items() if k not in ("learning_rate", "name")}
        key = (
            repr(OmegaConf.to_container(cfg.model, resolve=True)),
            model.input_shape,
            model.output_shape,
            type(optimizer).__qualname__,
            repr(sorted(optimizer_config.items())),
            str(cfg.train.loss),
        )
        program = cls._cache.get(key)
        if program is None:
            program = cls._cache[key] = cls(model, optimizer, str(cfg.train.loss))
        return program

    def _batch_loss(self, trainable, non_trainable, x, y, w):
        import jax.numpy as jnp
        import keras

        y_pred, non_trainable = self.model.stateless_call(trainable, non_trainable, x, training=True)
        per_sample = keras.losses.get(self.loss)(y, y_pred)
        count = jnp.maximum(w.sum(), 1.0)
        correct = ((y_pred.argmax(-1) == y.argmax(-1)) * w).sum()
        return (per_sample * w).sum() / count, (non_trainable, correct, count)

    def _step(self, state, batch):
        import jax

        trainable, non_trainable, optimizer_vars = state
        x_all, y_all, index, w = batch
        x, y = x_all[index], y_all[index]
        (loss, (non_trainable, correct, count)), grads = jax.value_and_grad(self._batch_loss, has_aux=True)(
            trainable, non_trainable, x, y, w
        )
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return (trainable, non_trainable, optimizer_vars), (loss * count, correct)

    def _epoch(self, state, x, y, index, weight):
        import jax

        def body(carry, batch):
            return self._step(carry, (x, y, *batch))

        state, (loss_sums, corrects) = jax.lax.scan(body, state, (index, weight))
        return state, loss_sums.sum(), corrects.sum()

    def _gradient_norms(self, trainable, non_trainable, x, y, index):
        import jax
        import jax.numpy as jnp

        def squared(tree):
            return sum(jnp.vdot(leaf, leaf) for leaf in jax.tree_util.tree_leaves(tree))

        def body(carry, batch):
            total, small_sq = carry
            weight = jnp.ones(batch.shape, jnp.float32)
            grads = jax.grad(lambda t: self._batch_loss(t, non_trainable, x[batch], y[batch], weight)[0])(trainable)
            return (jax.tree_util.tree_map(jnp.add, total, grads), small_sq + squared(grads)), None

        start = (jax.tree_util.tree_map(jnp.zeros_like, trainable), jnp.float32(0.0))
        (total, small_sq), _ = jax.lax.scan(body, start, index)
        count = index.shape[0]
        return small_sq / count, squared(jax.tree_util.tree_map(lambda g: g / count, total))

    def noise_scale(self, state, x, y, rng: np.random.Generator, sub_batches: int, small: int) -> dict[str, float]:
        """`gradient_noise_scale` at `state` from `sub_batches` batches of `small` training images drawn by `rng`."""
        chosen = rng.choice(len(x), sub_batches * small, replace=False).astype(np.int32)
        small_sq, big_sq = self.gradient_norms(state[0], state[1], x, y, chosen.reshape(sub_batches, small))
        return gradient_noise_scale(small_sq, big_sq, small, sub_batches * small)

    def compiled_epoch(self, state, x, y, index, weight) -> Any:
        """`epoch` compiled ahead of time for these shapes, once per process: a caller can time the run alone."""
        key = (index.shape, x.shape, y.shape)
        if key not in self._compiled:
            self._compiled[key] = self.epoch.lower(state, x, y, index, weight).compile()
        return self._compiled[key]

    def gradient_norms(self, trainable, non_trainable, x, y, index) -> tuple[float, float]:
        """Mean |G_small|^2 over the rows of `index` (one sub-batch each) and |G_big|^2 of all of them."""
        small_sq, big_sq = self._norms(trainable, non_trainable, x, y, index)
        return float(small_sq), float(big_sq)

    def _evaluate_batch(self, trainable, non_trainable, x, y):
        import keras

        y_pred, _ = self.model.stateless_call(trainable, non_trainable, x, training=False)
        per_sample = keras.losses.get(self.loss)(y, y_pred)
        return per_sample.sum(), (y_pred.argmax(-1) == y.argmax(-1)).sum(), y_pred

    def evaluate(self, trainable, non_trainable, x, y) -> tuple[float, float]:
        """Mean loss and accuracy over `x`, in one compiled call."""
        loss_sum, correct, _ = self._evaluate(trainable, non_trainable, x, y)
        return float(loss_sum) / len(x), float(correct) / len(x)
