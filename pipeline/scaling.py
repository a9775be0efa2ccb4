"""Why batch size matters: a batch-size scaling study (a command outside the DAG).

    python -m pipeline.scaling                      # the default study (conf/scaling/default.yaml)
    python -m pipeline.scaling scaling=large        # bigger machines and GPUs
    python -m pipeline.scaling scaling.optimizers=[adam] scaling.batch_sizes=[64,1024]

For every workload (`scaling.workloads`: a name, the Hydra overrides that make it from the
config, its validation target), optimizer and batch size it searches the learning rate that
reaches the target in the fewest steps and replicates it over fresh seeds
(`pipeline.sweeps.study`), then reads steps against batch size: the regimes, the critical
batch size and the gradient noise scale (`pipeline.analysis.scaling`), and compares the
optimizers across workloads with performance profiles (`pipeline.analysis.profiles`).

Every setting is composed and checked, and every model and optimizer built, before any data
is read. A workload's data is made by the download and preprocess commands with its
overrides when missing (a dataset other than the pipeline's goes beside its processed data,
`Paths.other_dataset_processed`). Every run is a child of the study's parent run
(`scaling-<time>`), which gets the reports under `study/`. Writes `<reports_dir>/scaling/`
as one unit (`SCALING_REPORTS`): `runs.csv` (every run), `points.csv` (per workload,
optimizer and batch size), `profiles.csv`, `summary.json`, `steps_vs_batch.png`,
`profiles.png`.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from datetime import UTC, datetime

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.core.app import prepare_config, stage_main
from pipeline.core.config import backend_name
from pipeline.core.errors import PipelineError
from pipeline.core.files import named_copies, write_json, write_together
from pipeline.core.paths import PACKAGE_CHECKOUT, SCALING_REPORTS, project_paths
from pipeline.data.splits import load_split

log = logging.getLogger(__name__)


def compose_workloads(cfg: DictConfig) -> dict[str, dict]:
    """Per workload: its config per optimizer (composed from the command line's overrides plus its own, checked,
    built once), its target, batch sizes and the overrides that make its data."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from pipeline.model.networks import check_buildable

    settings = cfg.scaling
    task = list(HydraConfig.get().overrides.task)
    found = {}
    for name, workload in settings.workloads.items():
        sizes = [int(b) for b in (workload.batch_sizes or settings.batch_sizes)]
        # The data commands get the command line's overrides except the study's own, which they do not read.
        data_overrides = [*(o for o in task if not o.lstrip("+~").startswith("scaling")), *workload.overrides]
        configs = {}
        for optimizer in settings.optimizers:
            try:
                overrides = [*task, *workload.overrides, f"optimizer={optimizer}"]
                composed = compose("config", overrides=overrides, return_hydra_config=True)
                choices = composed.hydra.runtime.choices
                with open_dict(composed):
                    del composed["hydra"]
                    composed.tracking.system_metrics = False  # runs of seconds: a sampling thread each is only cost
                cfg_w = prepare_config(composed, choices)
                if cfg_w.dataset.name != cfg.dataset.name:
                    with open_dict(cfg_w):
                        cfg_w.paths.processed_dir = str(
                            project_paths(cfg_w).other_dataset_processed(cfg_w.dataset.name)
                        )
                check_buildable(cfg_w)
            except PipelineError as err:
                raise PipelineError(f"scaling.workloads.{name} with optimizer={optimizer}: {err}") from err
            except Exception as err:  # noqa: BLE001 - Hydra's composition errors (an unknown option or key)
                raise PipelineError(
                    f"scaling.workloads.{name} with optimizer={optimizer}: {err}. Fix the workload's overrides or "
                    "scaling.optimizers (file names under conf/optimizer/)."
                ) from err
            configs[str(optimizer)] = cfg_w
        first = next(iter(configs.values()))
        data_overrides.append(f"paths.processed_dir='{first.paths.processed_dir}'")
        found[str(name)] = {
            "configs": configs,
            "target": float(workload.target),
            "batch_sizes": sizes,
            "data": data_overrides,
        }
    return found


def ensure_data(cfg: DictConfig, overrides: list[str]) -> None:
    """Make the workload's processed splits with the download and preprocess commands, unless they exist."""
    if project_paths(cfg).processed_meta.is_file():
        return
    for command in ("pipeline.download", "pipeline.preprocess"):
        args = [sys.executable, "-m", command, *overrides]
        log.info("$ python -m %s %s", command, " ".join(overrides))
        if subprocess.run(args, cwd=PACKAGE_CHECKOUT).returncode != 0:
            raise PipelineError(f"python -m {command} {' '.join(overrides)} failed (see its output above)")


def load_split_pair(cfg: DictConfig) -> tuple:
    return load_split(cfg, "train"), load_split(cfg, "val")


def run_scaling(cfg: DictConfig) -> dict:
    """Run the study, read it, write the reports; return the summary."""
    from pipeline.core.store import cpu_tags, git_state, parent_run
    from pipeline.sweeps.study import Study, Workload

    if backend_name(cfg) != "jax":
        raise PipelineError(
            f"train.backend={backend_name(cfg)}: the scaling study trains on JAX (pipeline.training.target). "
            "Fix: drop the override, or set train.backend=jax."
        )
    workloads = compose_workloads(cfg)
    data = {}
    for name, spec in workloads.items():
        first = next(iter(spec["configs"].values()))
        ensure_data(first, spec["data"])
        data[name] = Workload(name, first, spec["target"], spec["batch_sizes"], *load_split_pair(first))
        largest = max(spec["batch_sizes"])
        if largest > len(data[name].train.x):
            raise PipelineError(
                f"scaling.workloads.{name}: batch size {largest} is larger than its {len(data[name].train.x):,} "
                "training images. Fix it: drop it from scaling.batch_sizes (or the workload's batch_sizes)."
            )
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    tags = {"mnist_pipeline.role": "scaling", **git_state(), **cpu_tags()}
    with parent_run(cfg, f"scaling-{stamp}", tags) as parent_id:
        study = Study(cfg.scaling, parent_id)
        points = []
        for name, spec in workloads.items():
            for optimizer_cfg in spec["configs"].values():
                points += study.optimizer(data[name], optimizer_cfg)
        seconds = time.perf_counter() - started
        summary = write_reports(cfg, points, workloads, seconds, study.runs, parent_id)
    log.info("%s", summary["answer"])
    return summary


def attempt_rows(points: list, search_seed: int) -> list[dict]:
    """Every run of the study, one row each (`runs.csv`)."""
    rows = []
    for point in points:
        phases = [("search", rate, a, search_seed) for rate, a in point.search.items()]
        phases += [("replica", point.rate, a, seed) for seed, a in point.replicas.items()]
        for phase, rate, attempt, seed in phases:
            target = attempt.target or {}
            rows.append(
                {
                    "workload": point.workload, "optimizer": point.optimizer, "batch_size": point.batch_size,
                    "learning_rate": rate, "phase": phase, "seed": seed, "status": attempt.status,
                    "steps_trained": attempt.steps, "train_seconds": round(attempt.train_seconds, 3),
                    "target_steps": target.get("step"), "target_samples": target.get("samples"),
                    "target_epochs": target.get("epoch"), "target_seconds": target.get("train_seconds"),
                    "last_val_accuracy": attempt.last_accuracy, "noise_scale_at_target": attempt.noise_at_target(),
                }
            )  # fmt: skip
    return rows


def best_times(point_rows: list[dict], workloads: dict) -> dict[str, dict[str, float | None]]:
    """Per workload and optimizer: its fastest median training seconds to the target over the batch sizes."""
    times: dict[str, dict[str, float | None]] = {name: {} for name in workloads}
    for row in point_rows:
        by_optimizer, seconds = times[row["workload"]], row["median_seconds"]
        known = by_optimizer.setdefault(row["optimizer"], None)
        if seconds is not None and (known is None or seconds < known):
            by_optimizer[row["optimizer"]] = seconds
    return times


def write_reports(
    cfg: DictConfig, points: list, workloads: dict, seconds: float, runs: int, parent_id: str | None
) -> dict:
    """`<reports_dir>/scaling/` as one unit, logged to the parent run under `study/` first."""
    import pandas as pd

    from pipeline.analysis import profiles, scaling
    from pipeline.core.store import cpu_tags

    paths = project_paths(cfg)
    point_rows = [p.row() for p in points]
    frame = pd.DataFrame(point_rows)
    reading = scaling.study_reading(frame)
    targets = {name: spec["target"] for name, spec in workloads.items()}
    found = profiles.profiles(best_times(point_rows, workloads), list(cfg.scaling.taus))
    profile_rows = [{"optimizer": o, **{f"tau={t}": v for t, v in row.items()}} for o, row in found["profiles"].items()]
    summary = {
        "answer": scaling.study_sentence(reading, targets),
        "workloads": {n: {"target": s["target"], "batch_sizes": s["batch_sizes"]} for n, s in workloads.items()},
        "reading": reading,
        "profiles": found,
        "settings": OmegaConf.to_container(cfg.scaling, resolve=True),
        "runs": runs,
        "study_seconds": round(seconds, 1),
        "machine": cpu_tags(),
    }
    writes = {
        "runs.csv": lambda p: pd.DataFrame(attempt_rows(points, int(cfg.scaling.search_seed))).to_csv(p, index=False),
        "points.csv": lambda p: frame.to_csv(p, index=False),
        "profiles.csv": lambda p: pd.DataFrame(profile_rows).to_csv(p, index=False),
        "summary.json": lambda p: write_json(p, plain(summary)),
        "steps_vs_batch.png": lambda p: scaling.plot_study(frame, reading, p),
        "profiles.png": lambda p: profiles.plot_profiles(found, p),
    }
    writers = {paths.scaling_report(name): writes[name] for name in SCALING_REPORTS}

    def log_to_parent(staged: dict) -> None:  # the parent run records these very files before they replace the old
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        with named_copies({target.name: written for target, written in staged.items()}) as folder:
            client.log_artifacts(parent_id, str(folder), "study")
        now = int(time.time() * 1000)
        client.log_batch(parent_id, metrics=[Metric("study_seconds", seconds, now, 0), Metric("runs", runs, now, 0)])

    write_together(writers, log_to_parent if parent_id else None)
    return summary


def plain(value):
    """`value` as JSON holds it: numpy numbers as numbers, infinities (a target never reached) as null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


main = stage_main(run_scaling)  # python -m pipeline.scaling [overrides]


if __name__ == "__main__":
    main()
