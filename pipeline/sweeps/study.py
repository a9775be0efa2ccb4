"""The batch-size scaling study: per workload, optimizer and batch size, the learning rate that reaches the
target in the fewest steps, then that setting over fresh seeds (`python -m pipeline.scaling`).

As Shallue et al. (JMLR 2019) measured it: steps to a validation target against the batch
size, with the learning rate tuned for every batch size.

- **Search** (`search_rate`): learning rates on a log grid, `scaling.rates_per_decade` a
  decade (2: ..., 1e-3, 3.16e-3, 1e-2, ...). The walk starts at the rate chosen for the next
  smaller batch size (the optimizer file's rate, rounded to the grid, for the smallest),
  tries both neighbours and moves toward the faster one until both neighbours of the best
  are slower, so the chosen rate is never on the edge of the rates tried (`on_edge` marks
  a choice at the end of the grid inside `scaling.rate_range`). Faster: reached the target at an earlier
  validation (a tie: the higher validation accuracy there); among runs that never reached
  it, the higher last validation accuracy. A run that has passed the best run's step
  without reaching the target cannot win and is stopped (pruned). The search trains
  `scaling.search_seed`.
- **Replicas**: the chosen rate with each of `scaling.seeds`, fresh seeds (the search's
  seed chose the rate, so its luck would count twice), each to the target or
  `scaling.max_epochs`. A point's steps are the median over its seeds, a seed that never
  reached the target counting as infinitely late (no median when half or more never did). A point
  whose search never reached the target is not replicated.
- **Tracking**: each run is a child run of the study's parent run: its settings, the
  validation curve by step, the time to target (`target.steps`, `target.samples`,
  `target.epochs`, `target.train_seconds`, or the tag `target.reached=false`), the noise
  scale per epoch and at the target (replicas). A pruned run ends KILLED and a run whose
  weights blew up (`blown_up`) FAILED, each with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, open_dict

from pipeline.core.errors import RunStopped
from pipeline.data.splits import Split
from pipeline.training.target import DIVERGED, PRUNED, Attempt, eval_steps, train_to_target

log = logging.getLogger(__name__)

SEARCH, REPLICA = "search", "replica"


def rate_of(k: int, per_decade: int) -> float:
    """The k-th rate of the grid: 10 ** (k / per_decade), rounded to 4 significant digits."""
    return float(f"{10 ** (k / per_decade):.4g}")


def grid_index(rate: float, per_decade: int, rounding: Callable[[float], int] = round) -> int:
    """The grid index nearest `rate` (`math.ceil` / `math.floor`: the first at or above / at or below it)."""
    return int(rounding(round(math.log10(rate) * per_decade, 9)))


def faster(a: Attempt, b: Attempt) -> bool:
    """Whether `a` is faster to the target than `b` (see the module docstring)."""

    def key(attempt: Attempt) -> tuple:
        if attempt.target is not None:
            return (0, attempt.target["step"], -attempt.target["val_accuracy"])
        return (2 if attempt.status == DIVERGED else 1, 0, -attempt.last_accuracy)

    return key(a) < key(b)


def search_rate(try_rate: Callable[[int, int | None], Attempt], start: int, low: int, high: int) -> tuple[int, dict]:
    """Walk the grid from `start` within [low, high]; return the chosen index and every attempt by index.

    `try_rate(k, prune_after)` trains grid rate k, stopped after step `prune_after` (None: never).
    """
    tried: dict[int, Attempt] = {}
    best = None

    def attempt(k: int) -> None:
        nonlocal best
        if k in tried or not low <= k <= high:
            return
        prune = tried[best].target["step"] if best is not None and tried[best].target else None
        tried[k] = try_rate(k, prune)
        if best is None or faster(tried[k], tried[best]):
            best = k

    attempt(min(max(start, low), high))
    attempt(best + 1)
    attempt(best - 1)
    while True:
        edge = best + 1 if best == max(tried) else best - 1 if best == min(tried) else None
        if edge is None or edge in tried or not low <= edge <= high:
            return best, tried
        attempt(edge)


@dataclass
class Workload:
    """What is learned (the composed config: dataset, model) and the validation target that judges it."""

    name: str
    cfg: DictConfig
    target: float
    batch_sizes: list[int]
    train: Split
    val: Split


@dataclass
class Point:
    """One workload x optimizer x batch size: the chosen rate, its search and its replicas."""

    workload: str
    optimizer: str
    batch_size: int
    rate: float
    on_edge: bool
    search: dict[float, Attempt] = field(default_factory=dict)
    replicas: dict[int, Attempt] = field(default_factory=dict)

    def median(self, key: str) -> float | None:
        """The median over the replicas of `target[key]`, unreached seeds counting as infinite; None when the
        median is infinite (half the seeds or more never reached the target) or there are no replicas."""
        if not self.replicas:
            return None
        values = sorted(a.target[key] if a.target else math.inf for a in self.replicas.values())
        middle = statistics.median(values)
        return None if math.isinf(middle) else float(middle)

    def noise_at_target(self) -> float | None:
        values = [v for v in (a.noise_at_target() for a in self.replicas.values()) if v is not None]
        return float(statistics.median(values)) if values else None

    def row(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "optimizer": self.optimizer,
            "batch_size": self.batch_size,
            "learning_rate": self.rate,
            "on_edge": self.on_edge,
            "rates_tried": len(self.search),
            "seeds": len(self.replicas),
            "seeds_reached": sum(a.target is not None for a in self.replicas.values()),
            "median_steps": self.median("step"),
            "median_samples": self.median("samples"),
            "median_epochs": self.median("epoch"),
            "median_seconds": self.median("train_seconds"),
            "noise_scale_at_target": self.noise_at_target(),
        }


def attempt_config(cfg: DictConfig, batch_size: int, rate: float, seed: int) -> DictConfig:
    """`cfg` with this batch size, learning rate (exactly: no factor, no batch-size rule) and seed."""
    copy = cfg.copy()
    with open_dict(copy):
        copy.train.batch_size, copy.train.seed = batch_size, seed
        copy.train.lr_factor, copy.train.lr_scaling = 1.0, "none"
        copy.optimizer.learning_rate = rate
    return copy


class Study:
    """Runs the study's attempts, each as a child run of `parent_run_id` (None: not tracked)."""

    def __init__(self, settings: DictConfig, parent_run_id: str | None) -> None:
        self.settings, self.parent_run_id = settings, parent_run_id
        self.runs = 0

    def run(self, workload: Workload, cfg: DictConfig, phase: str, prune_after: int | None = None) -> Attempt:
        """Train one attempt (`cfg` holds its batch size, rate and seed) as a child run; return what it measured."""
        batch_size = int(cfg.train.batch_size)
        steps_per_epoch = -(-len(workload.train.x) // batch_size)
        max_steps = math.ceil(float(self.settings.max_epochs) * steps_per_epoch)
        schedule = eval_steps(
            batch_size, max_steps, float(self.settings.eval_ratio), int(self.settings.eval_min_samples)
        )
        name = (
            f"{workload.name}-{cfg.optimizer.name}-bs{batch_size}-lr{cfg.optimizer.learning_rate:g}-s{cfg.train.seed}"
        )
        result: list[Attempt] = []

        def train() -> Attempt:
            result.append(
                train_to_target(
                    cfg, workload.train, workload.val, target=workload.target, max_steps=max_steps,
                    schedule=schedule, prune_after=prune_after, measure_noise=phase == REPLICA,
                )
            )  # fmt: skip
            return result[0]

        self.runs += 1
        if self.parent_run_id is None:
            return train()
        with contextlib.suppress(RunStopped, DivergedRun):  # recorded KILLED or FAILED, with the reason
            record_attempt(cfg, name, self.parent_run_id, workload, phase, train)
        return result[0]

    def point(self, workload: Workload, cfg: DictConfig, batch_size: int, start: int) -> Point:
        """Search the rate for one batch size from grid index `start`, then replicate the choice."""
        per_decade = int(self.settings.rates_per_decade)
        low = grid_index(float(self.settings.rate_range[0]), per_decade, math.ceil)  # the grid inside the range
        high = grid_index(float(self.settings.rate_range[1]), per_decade, math.floor)
        seed = int(self.settings.search_seed)

        def try_rate(k: int, prune_after: int | None) -> Attempt:
            attempt = self.run(
                workload, attempt_config(cfg, batch_size, rate_of(k, per_decade), seed), SEARCH, prune_after
            )
            status = f"step {attempt.target['step']}" if attempt.target else attempt.status
            log.info(
                "%s %s bs %d lr %g: %s", workload.name, cfg.optimizer.name, batch_size, rate_of(k, per_decade), status
            )
            return attempt

        best, tried = search_rate(try_rate, start, low, high)
        point = Point(
            workload.name, str(cfg.optimizer.name), batch_size, rate_of(best, per_decade), best in (low, high),
            {rate_of(k, per_decade): a for k, a in sorted(tried.items())},
        )  # fmt: skip
        if tried[best].target is not None:
            for replica in self.settings.seeds:
                point.replicas[int(replica)] = self.run(
                    workload, attempt_config(cfg, batch_size, point.rate, int(replica)), REPLICA
                )
        return point

    def optimizer(self, workload: Workload, cfg: DictConfig) -> list[Point]:
        """Every batch size of `workload` for the optimizer of `cfg`, smallest first, each search starting
        where the last one chose."""
        per_decade = int(self.settings.rates_per_decade)
        start = grid_index(float(cfg.optimizer.learning_rate), per_decade)
        points = []
        for batch_size in sorted(workload.batch_sizes):
            points.append(self.point(workload, cfg, batch_size, start))
            start = grid_index(points[-1].rate, per_decade)
        return points


class DivergedRun(Exception):  # noqa: N818 - a measured outcome of a study's run, recorded FAILED
    """A study's run whose weights blew up: its loss not finite, or chance accuracy with a loss worse than guessing."""


def record_attempt(
    cfg: DictConfig, name: str, parent_run_id: str, workload: Workload, phase: str, train: Callable[[], Attempt]
) -> None:
    """Train inside a child run of the study and record what it measured; pruned runs end KILLED, diverged FAILED."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipeline.core.store import cpu_tags, flat_params, tracked_run

    with tracked_run(cfg, run_name=name, parent_run_id=parent_run_id) as run:
        run_id = run.info.run_id
        params = {**flat_params(cfg), "workload": workload.name, "scaling.phase": phase, "target": workload.target}
        mlflow.log_params(params)
        started = time.time()
        attempt = train()
        stamp = int(started * 1000)
        metrics = [
            Metric(k, e[k], stamp, int(e["step"])) for e in attempt.evaluations for k in ("val_accuracy", "val_loss")
        ]
        metrics += [
            Metric(k, v, stamp, int(n["step"]))
            for n in attempt.noise
            for k, v in n.items()
            if k not in ("step", "epoch")
        ]
        summary = {"steps": attempt.steps, "train_seconds": attempt.train_seconds}
        if attempt.target:
            names = {"target.steps": "step", "target.samples": "samples", "target.epochs": "epoch"}
            summary.update(
                {name: attempt.target[key] for name, key in {**names, "target.train_seconds": "train_seconds"}.items()}
            )
            if attempt.noise_at_target() is not None:
                summary["noise_scale_at_target"] = attempt.noise_at_target()
        metrics += [Metric(k, float(v), stamp, 0) for k, v in summary.items()]
        client = MlflowClient()
        for first in range(0, len(metrics), 1000):  # MLflow's limit per batch
            client.log_batch(run_id, metrics=metrics[first : first + 1000])
        tags = {"workload": workload.name, "scaling.phase": phase, "scaling.status": attempt.status, **cpu_tags()}
        mlflow.set_tags({**tags, "target.reached": str(attempt.target is not None).lower()})
        if attempt.status == PRUNED:
            raise RunStopped(f"pruned: not at {workload.target} by step {attempt.steps}, which a faster rate beat")
        if attempt.status == DIVERGED:
            raise DivergedRun(f"diverged by step {attempt.steps}: {attempt.diverged}")
