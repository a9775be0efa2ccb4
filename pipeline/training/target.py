"""Training to a target: one run that stops at its first validation at or above a target accuracy.

The unit of a batch-size scaling study (`pipeline.sweeps.study`), which trains hundreds of
such runs in one process (JAX backend):

- the same model, optimizer, initial weights and batches as `pipeline.train` with the same
  settings (drawn as `pipeline.training.loop` draws them), so a study's run is the start of
  the pipeline's run;
- validation on a schedule whose spacing grows with the step count (`eval_steps`): steps
  2^(1/8) apart, and at least `min_samples` images apart, so the step at which a run first
  reaches the target is known to within about 9 % (or `min_samples` images, whichever is
  more), without validation passes dominating the cheap steps of small batches;
- a stretch between validations runs as scans of power-of-two lengths, so one batch size
  compiles about a dozen programs, shared by every run of the same model and optimizer
  shape (the learning rate is an input of the program, not part of it), compiled ahead of
  time so that `train_seconds` counts training only;
- `prune_after`: a learning-rate search stops a run once it can no longer reach the target
  sooner than the best run so far; `max_steps` ends a run that never reaches it;
- a run whose weights blew up (`blown_up`: a loss that is not finite, or chance accuracy
  with a loss worse than guessing) stops as DIVERGED;
- the gradient noise scale (`gradient_noise_scale`) once an epoch and at the target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig

from pipeline.core.errors import check_stop
from pipeline.data.splits import Split
from pipeline.training.loop import BatchStream, blown_up, jax_start

REACHED, NOT_REACHED, PRUNED, DIVERGED = "reached", "not_reached", "pruned", "diverged"


@dataclass
class Attempt:
    """What one run to the target measured. `target` is the first evaluation at or above it (None: never)."""

    status: str
    steps: int  # optimizer steps trained
    train_seconds: float  # training only: validation and noise estimates not counted
    evaluations: list[dict[str, float]] = field(default_factory=list)  # step, samples, epoch, train_seconds, val_*
    noise: list[dict[str, float]] = field(default_factory=list)  # step, epoch, noise_scale, noise.trace, ...
    target: dict[str, float] | None = None
    diverged: str | None = None  # why the weights count as blown up (`blown_up`'s reason)

    @property
    def last_accuracy(self) -> float:
        return self.evaluations[-1]["val_accuracy"] if self.evaluations else 0.0

    def noise_at_target(self) -> float | None:
        """The noise scale estimated at the target, if the run reached it and the estimate is positive."""
        if self.target is None:
            return None
        return next((n.get("noise_scale") for n in self.noise if n["step"] == self.target["step"]), None)


def eval_steps(batch_size: int, max_steps: int, ratio: float, min_samples: int) -> list[int]:
    """The steps after which a run validates: each at least `ratio` x the last and `min_samples` images later."""
    steps, step = [], 0
    gap = max(1, math.ceil(min_samples / batch_size))
    while step < max_steps:
        step = min(max_steps, max(step + gap, math.ceil(step * ratio)))
        steps.append(step)
    return steps


def power_of_two_pieces(count: int) -> list[int]:
    """`count` as a sum of powers of two, largest first (13 -> [8, 4, 1]): scans of few distinct lengths."""
    return [1 << bit for bit in range(count.bit_length() - 1, -1, -1) if count >> bit & 1]


def train_to_target(
    cfg: DictConfig,
    train: Split,
    val: Split,
    *,
    target: float,
    max_steps: int,
    schedule: list[int],
    prune_after: int | None = None,
    measure_noise: bool = False,
) -> Attempt:
    """Train `cfg`'s model with `cfg`'s optimizer, batch size and seed until the target, the cap or a prune.

    `schedule` is `eval_steps(...)` for the batch size; `prune_after`: stop (PRUNED) at the first
    validation at or after this step that has not reached the target.
    """
    batch_size, n = int(cfg.train.batch_size), len(train.x)
    _, program, state, (x, y, x_val, y_val) = jax_start(cfg, train, val, batch_size)
    stream = BatchStream(n, batch_size, int(cfg.train.seed))
    small = int(cfg.train.noise_scale.small_batch)
    sub_batches = min(int(cfg.train.noise_scale.examples), n) // small
    noise_rng = np.random.default_rng([int(cfg.train.seed), 1]) if measure_noise and sub_batches >= 2 else None
    attempt = Attempt(NOT_REACHED, 0, 0.0)
    noted_epochs = 0
    for step in schedule:
        check_stop()
        seen, loss_sum, correct = stream.samples(step) - stream.samples(attempt.steps), 0.0, 0.0
        for length in power_of_two_pieces(step - attempt.steps):
            index, weight = stream.rows(attempt.steps, attempt.steps + length)
            epoch_program = program.compiled_epoch(state, x, y, index, weight)  # compiling is not training
            started = time.perf_counter()
            state, piece_loss, piece_correct = epoch_program(state, x, y, index, weight)
            loss_sum, correct = loss_sum + float(piece_loss), correct + float(piece_correct)  # float() waits
            attempt.train_seconds += time.perf_counter() - started
            attempt.steps += length
        attempt.diverged = blown_up(loss_sum / seen, correct / seen, train.y.shape[1], cfg.train.divergence)
        if attempt.diverged:
            attempt.status = DIVERGED
            break
        val_loss, val_accuracy = program.evaluate(state[0], state[1], x_val, y_val)
        epoch = step / stream.steps_per_epoch
        evaluation = {"step": step, "samples": stream.samples(step), "epoch": epoch}
        attempt.evaluations.append(
            {**evaluation, "train_seconds": attempt.train_seconds, "val_loss": val_loss, "val_accuracy": val_accuracy}
        )
        reached = val_accuracy >= target
        if noise_rng is not None and (reached or int(epoch) > noted_epochs):
            noted_epochs = int(epoch)
            attempt.noise.append(
                {"step": step, "epoch": epoch, **program.noise_scale(state, x, y, noise_rng, sub_batches, small)}
            )
        if reached:
            attempt.status, attempt.target = REACHED, attempt.evaluations[-1]
            break
        if prune_after is not None and step >= prune_after:
            attempt.status = PRUNED
            break
    return attempt
