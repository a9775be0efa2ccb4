"""The batch-size scaling study: the learning-rate walk, the validation schedule, a study run against the
pipeline's own training, and a tiny study end to end (`python -m pipeline.scaling`)."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from conftest import Command, run_module
from mlflow.tracking import MlflowClient

from pipeline.core.paths import project_paths
from pipeline.core.store import tracking_uri, use_store
from pipeline.sweeps.study import faster, rate_of, search_rate
from pipeline.training.target import DIVERGED, NOT_REACHED, PRUNED, REACHED, Attempt, eval_steps, power_of_two_pieces


def fake_attempt(steps: int | None, accuracy: float = 0.9, status: str | None = None) -> Attempt:
    """An attempt that reached the target at `steps` (None: never), with this last validation accuracy."""
    step = steps or 100
    evaluation = {
        "step": step,
        "samples": 32 * step,
        "epoch": step / 10,
        "train_seconds": step / 100,
        "val_accuracy": accuracy,
    }
    target = evaluation if steps is not None else None
    return Attempt(status or (REACHED if target else NOT_REACHED), steps or 100, 0.0, [evaluation], [], target)


def test_the_walk_stops_where_both_neighbours_are_slower_and_prunes_at_the_best_step():
    steps_at = {k: 100 + 40 * (k - 3) ** 2 for k in range(-10, 11)}  # fastest at grid index 3
    calls = []

    def try_rate(k: int, prune_after: int | None) -> Attempt:
        calls.append((k, prune_after))
        reached = prune_after is None or steps_at[k] <= prune_after
        return fake_attempt(steps_at[k] if reached else None, status=None if reached else PRUNED)

    best, tried = search_rate(try_rate, start=0, low=-10, high=10)
    assert best == 3 and sorted(tried) == [0, 1, 2, 3, 4], "walked up from 0 until 4 was slower than 3"
    assert calls[0] == (0, None), "the first rate has nothing to beat"
    best_so_far = [min(steps_at[k] for k, _ in calls[:i]) for i in range(1, len(calls))]
    assert [p for _, p in calls[1:]] == best_so_far, "each candidate is stopped at the best run's step so far"
    assert tried[4].status == PRUNED and tried[3].target["step"] == 100


def test_the_walk_stays_inside_the_rate_range_and_ranks_unreached_runs_by_accuracy():
    best, tried = search_rate(lambda k, prune: fake_attempt(1000 - k), start=5, low=-2, high=6)
    assert best == 6 and sorted(tried) == [5, 6], "the fastest rate is the range's end: no step beyond it"
    # Nothing reaches the target: the walk follows the last validation accuracy; a diverged run ranks last.
    accuracy = {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.0}
    attempts = {k: fake_attempt(None, a, DIVERGED if k == 3 else None) for k, a in accuracy.items()}
    best, tried = search_rate(lambda k, prune: attempts[k], start=0, low=0, high=3)
    assert best == 2 and sorted(tried) == [0, 1, 2, 3]
    assert faster(fake_attempt(500, 0.97), fake_attempt(None, 0.96)), "reaching it beats any accuracy short of it"
    assert faster(fake_attempt(500, 0.975), fake_attempt(500, 0.971)), "a tie in steps: the higher accuracy there"
    assert faster(fake_attempt(None, 0.1), fake_attempt(None, 0.9, DIVERGED)), "a diverged run is slowest of all"


def test_the_grid_and_the_validation_schedule():
    assert [rate_of(k, 2) for k in (-6, -5, -4)] == [0.001, 0.003162, 0.01]
    assert power_of_two_pieces(13) == [8, 4, 1] and sum(power_of_two_pieces(1000)) == 1000
    steps = eval_steps(batch_size=16, max_steps=20_000, ratio=2 ** (1 / 8), min_samples=4096)
    gaps = [b - a for a, b in zip([0, *steps], steps, strict=False)]
    assert steps[-1] == 20_000 and all(g >= 256 for g in gaps[:-1]), "at least 4096 images apart"
    assert all(b <= max(a + 256, math.ceil(a * 2 ** (1 / 8))) for a, b in zip(steps, steps[1:], strict=False))
    big = eval_steps(batch_size=8192, max_steps=300, ratio=2 ** (1 / 8), min_samples=4096)
    assert big[:3] == [1, 2, 3] and all(b / a <= 2 ** (1 / 8) + 1 / a for a, b in zip(big, big[1:], strict=False))


def test_a_study_run_is_the_start_of_the_pipelines_run(tiny_data_cfg):
    """Same model, optimizer, initial weights and batches as `pipeline.train`: the same validation at each epoch."""
    from pipeline.data.splits import load_split
    from pipeline.training.loop import fit
    from pipeline.training.target import train_to_target

    cfg = tiny_data_cfg("train.epochs=3", "train.evals_per_epoch=4", "train.batch_size=32", "optimizer=adam")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    full = fit(cfg, train, val)
    per_epoch = -(-len(train.x) // 32)  # 12: the pipeline validates after steps 3, 6, 9, 12, 15, ...
    schedule = [3, 6, per_epoch, 2 * per_epoch + 3, 3 * per_epoch]  # cut mid-epoch, across epochs, at their ends
    study = train_to_target(cfg, train, val, target=1.01, max_steps=3 * per_epoch, schedule=schedule)
    assert study.status == NOT_REACHED and study.steps == 3 * per_epoch
    expected = [next(e for e in full.evaluations if e["step"] == step) for step in schedule]
    for got, want in zip(study.evaluations, expected, strict=True):
        assert got["step"] == want["step"] and got["samples"] == want["samples"]
        assert got["val_accuracy"] == want["val_accuracy"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)


def test_a_study_run_stops_at_its_first_validation_at_or_above_the_target(tiny_data_cfg):
    """A target equal to a validation's accuracy stops the run at that validation, not one later."""
    from pipeline.data.splits import load_split
    from pipeline.training.target import REACHED, train_to_target

    cfg = tiny_data_cfg("train.batch_size=32", "optimizer=sgd", "optimizer.learning_rate=0.01")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    schedule = [2, 4, 6, 8, 12, 16, 24]
    full = train_to_target(cfg, train, val, target=1.01, max_steps=24, schedule=schedule)
    accuracies = [e["val_accuracy"] for e in full.evaluations]
    target = accuracies[3]  # reached exactly at a validation
    first = next(i for i, accuracy in enumerate(accuracies) if accuracy >= target)
    assert first < len(schedule) - 1 and max(accuracies) > target, "a slow learner (sgd at 0.01): it would go on"
    stopped = train_to_target(cfg, train, val, target=target, max_steps=24, schedule=schedule)
    assert stopped.status == REACHED and stopped.steps == schedule[first] == stopped.target["step"]
    same = [(e["step"], e["val_accuracy"]) for e in full.evaluations[: first + 1]]
    assert [(e["step"], e["val_accuracy"]) for e in stopped.evaluations] == same, "trained the same until then"


@pytest.mark.slow
def test_a_tiny_study_end_to_end(tiny_data_cfg, tiny_npz, tmp_path):
    """Two workloads (the second's data made by the study), two optimizers, two batch sizes, two seeds."""
    cfg = tiny_data_cfg()
    root = cfg.paths.root
    conf = tmp_path / "extra_conf" / "scaling"
    conf.mkdir(parents=True)
    conf.joinpath("tiny.yaml").write_text(
        "defaults: [default, _self_]\n"
        "optimizers: [sgd, adam]\nbatch_sizes: [8, 32]\nseeds: [1, 2]\nmax_epochs: 30\neval_min_samples: 64\n"
        "workloads:\n"
        "  mnist: {target: 0.9}\n"
        "  fashion_mnist:\n"
        f"    overrides: [dataset=fashion_mnist, \"dataset.mirrors=[{{url: '{tiny_npz}', sha256: null}}]\"]\n"
        "    target: 0.85\n    batch_sizes: [16]\n"
    )
    mirror = f"dataset.mirrors=[{{url: '{tiny_npz}', sha256: null}}]"
    result = run_module(
        "pipeline.scaling", f"--config-dir={conf.parent}", f"paths.root={root}", mirror, "scaling=tiny", timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = Path(root) / "reports" / "scaling"
    points = pd.read_csv(reports / "points.csv")
    runs = pd.read_csv(reports / "runs.csv")
    assert len(points) == 2 * 2 + 2 * 1, "workload x optimizer x batch size"
    assert {"reached", "pruned"} <= set(runs.status) and (runs.phase == "replica").sum() >= 4, runs.to_string()
    assert (Path(root) / "data" / "workloads" / "fashion_mnist" / "meta.json").is_file(), "the study made it"
    summary = json.loads((reports / "summary.json").read_text())
    assert set(summary["reading"]) == {"mnist", "fashion_mnist"} and summary["runs"] == len(runs)
    assert summary["answer"].startswith("mnist (0.9), sgd:") and "fashion_mnist (0.85)" in summary["answer"]
    assert set(summary["profiles"]["profiles"]) == {"sgd", "adam"}
    for name in ("profiles.csv", "profiles.png", "steps_vs_batch.png"):
        assert (reports / name).stat().st_size > 0, name
    assert set(pd.read_csv(reports / "profiles.csv").optimizer) == {"sgd", "adam"}
    for _, point in points.iterrows():  # the replicas of every point whose search reached the target
        replicas = runs[(runs.phase == "replica") & (runs.workload == point.workload)]
        replicas = replicas[(replicas.optimizer == point.optimizer) & (replicas.batch_size == point.batch_size)]
        assert (
            list(replicas.seed) == ([1, 2] if point.seeds else [])
            and (replicas.learning_rate == point.learning_rate).all()
        )
        searched = runs[(runs.phase == "search") & (runs.workload == point.workload)]
        searched = searched[(searched.optimizer == point.optimizer) & (searched.batch_size == point.batch_size)]
        assert len(searched) == point.rates_tried >= 2 and point.learning_rate in set(searched.learning_rate)
        if point.seeds_reached == 2:
            assert point.median_steps == replicas.target_steps.median()
    # MLflow: one parent, FINISHED, with the reports; one child per row of runs.csv, each with the truthful status.
    use_store(tracking_uri(cfg))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.mnist_pipeline.role = 'scaling'")
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {
        "study/summary.json",
        "study/points.csv",
        "study/profiles.csv",
        "study/profiles.png",
    }
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(runs)
    status = {"reached": "FINISHED", "not_reached": "FINISHED", "pruned": "KILLED", "diverged": "FAILED"}
    by_name = {c.info.run_name: c for c in children}
    for _, row in runs.iterrows():
        name = f"{row.workload}-{row.optimizer}-bs{row.batch_size}-lr{row.learning_rate:g}-s{row.seed}"
        child = by_name[name]
        assert child.info.status == status[row.status], name
        assert child.data.tags["target.reached"] == str(row.status == "reached").lower()
        if row.status == "reached":
            assert child.data.metrics["target.steps"] == row.target_steps
            assert child.data.metrics["val_accuracy"] >= (0.9 if row.workload == "mnist" else 0.85)
        if row.phase == "replica" and row.status == "reached":
            history = client.get_metric_history(child.info.run_id, "noise.trace")
            assert history and history[-1].step == row.target_steps, "the noise scale is estimated at the target"
    mlflow.set_tracking_uri("")


def test_study_settings_that_cannot_run_are_refused_before_any_data(tmp_path):
    result = run_module("pipeline.scaling", f"paths.root={tmp_path}", "scaling.optimizers=[sgd,adagrad]")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "scaling.workloads.mnist with optimizer=adagrad" in output, output[-2000:]
    assert "Traceback" not in output and not (tmp_path / "mlruns").exists() and not (tmp_path / "data").exists()
    result = run_module("pipeline.scaling", f"paths.root={tmp_path}", "train.backend=tensorflow")
    assert result.returncode == 1 and "the scaling study trains on JAX" in result.stdout + result.stderr


def test_runs_of_one_optimizer_and_batch_size_share_their_compiled_programs(tiny_data_cfg):
    """Another rate or seed compiles nothing new: the rate is an input of the program, not part of it."""
    from pipeline.data.splits import load_split
    from pipeline.sweeps.study import attempt_config
    from pipeline.training.loop import JaxProgram
    from pipeline.training.target import train_to_target

    cfg = tiny_data_cfg("optimizer=adam")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    schedule = eval_steps(16, 100, 2 ** (1 / 8), 64)

    def compiled() -> int:
        return sum(len(program._compiled) for program in JaxProgram._cache.values())

    before = compiled()
    first = train_to_target(
        attempt_config(cfg, 16, 0.001, 0), train, val, target=1.01, max_steps=100, schedule=schedule
    )
    after_first = compiled()
    second = train_to_target(
        attempt_config(cfg, 16, 0.01, 3), train, val, target=1.01, max_steps=100, schedule=schedule
    )
    assert compiled() == after_first, "the second run compiled nothing"
    assert first.evaluations != second.evaluations, "another rate and seed: another run"
    lengths = {length for a, b in zip([0, *schedule], schedule, strict=False) for length in power_of_two_pieces(b - a)}
    assert 0 < after_first - before <= len(lengths), "at most one program per power-of-two stretch length"


def test_a_points_steps_are_the_median_over_seeds_with_unreached_seeds_infinitely_late():
    from pipeline.sweeps.study import Point

    point = Point("mnist", "adam", 128, 0.001, False)
    point.replicas = {1: fake_attempt(300), 2: fake_attempt(None), 3: fake_attempt(200)}
    assert point.median("step") == 300, "median of 200, 300 and infinity"
    point.replicas[4] = fake_attempt(None)
    assert point.median("step") is None, "half of the seeds never reached it: no median"
    assert point.row()["seeds_reached"] == 2 and Point("mnist", "adam", 128, 0.001, False).median("step") is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_ends_the_study_in_one_line_its_runs_killed_and_the_old_reports_kept(tiny_data_cfg, sig):
    cfg = tiny_data_cfg()
    previous = project_paths(cfg).scaling_report("summary.json")
    previous.parent.mkdir(parents=True, exist_ok=True)
    previous.write_text("previous")
    # Rates that cannot learn: the first run trains until it is stopped.
    proc = Command(
        "pipeline.scaling",
        f"paths.root={cfg.paths.root}",
        "scaling.optimizers=[adam]",
        "scaling.batch_sizes=[8]",
        "~scaling.workloads.fashion_mnist",
        "scaling.rate_range=[1e-9,1e-8]",
        "scaling.max_epochs=100000",
    )  # fmt: skip
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    deadline = time.monotonic() + 120
    while not (running := [r for r in all_runs(client, cfg) if is_child(r) and r.info.status == "RUNNING"]):
        assert proc.proc.poll() is None and time.monotonic() < deadline, "".join(proc.lines[-30:])
        time.sleep(0.5)
    time.sleep(2)  # training under way
    proc.send_signal(sig)
    output = proc.finish(60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig] and "Traceback" not in output, output
    message = {signal.SIGINT: "Interrupted (Ctrl-C)", signal.SIGTERM: "Terminated (SIGTERM)"}[sig]
    assert f"{message}; every MLflow run this command started ended KILLED." in output
    assert {r.info.status for r in all_runs(client, cfg)} == {"KILLED"}, "the study's parent and its running child"
    assert len(all_runs(client, cfg)) == 2 and running[0].info.run_name.startswith("mnist-adam-bs8-lr1e-08")
    assert previous.read_text() == "previous", "no report of an interrupted study"


def is_child(run) -> bool:
    return "mlflow.parentRunId" in run.data.tags


def all_runs(client: MlflowClient, cfg) -> list:
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_batch_larger_than_a_workloads_training_set_is_refused_before_any_run(tiny_data_cfg):
    cfg = tiny_data_cfg()
    result = run_module(
        "pipeline.scaling",
        f"paths.root={cfg.paths.root}",
        "scaling.batch_sizes=[8,4096]",
        "~scaling.workloads.fashion_mnist",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "batch size 4096 is larger than its 360 training images" in output, output[-2000:]
    assert not (Path(cfg.paths.root) / "mlruns").exists(), "no store, no parent run: nothing was started"


def test_a_choice_at_an_end_of_the_rate_range_is_marked_and_replicated_with_fresh_seeds(monkeypatch):
    from omegaconf import OmegaConf

    from pipeline.sweeps.study import Study

    settings = OmegaConf.create({"rates_per_decade": 2, "rate_range": [1e-3, 1e-2], "search_seed": 0, "seeds": [1, 2]})
    cfg = OmegaConf.create(
        {"train": {"batch_size": 0, "seed": 0, "lr_factor": 1.0, "lr_scaling": "none"}, "optimizer": {"name": "sgd"}}
    )
    study, seen = Study(settings, None), []

    def run(workload, attempt_cfg, phase, prune_after=None):
        seen.append((phase, attempt_cfg.optimizer.learning_rate, attempt_cfg.train.seed))
        return fake_attempt(round(1 / attempt_cfg.optimizer.learning_rate))  # the larger the rate, the faster

    monkeypatch.setattr(study, "run", run)
    point = study.point(SimpleNamespace(name="mnist"), cfg, 128, start=-5)
    assert point.rate == 0.01 and point.on_edge, "the fastest rate is the range's end: marked"
    assert [s for s in seen if s[0] == "replica"] == [("replica", 0.01, 1), ("replica", 0.01, 2)]
    assert {s[2] for s in seen if s[0] == "search"} == {0}, "the search trains the search seed only"


def test_a_run_whose_weights_blow_up_stops_as_diverged(tiny_data_cfg):
    """Keras clips probabilities, so the loss can stay finite: chance accuracy with a loss worse than guessing."""
    from pipeline.data.splits import load_split
    from pipeline.sweeps.study import attempt_config
    from pipeline.training.target import train_to_target

    cfg = tiny_data_cfg("optimizer=sgd")
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    schedule = eval_steps(32, 1000, 2 ** (1 / 8), 64)
    blown = train_to_target(attempt_config(cfg, 32, 1e4, 0), train, val, target=0.9, max_steps=1000, schedule=schedule)
    assert blown.status == DIVERGED and blown.steps <= schedule[3], "stopped within its first looks"
    assert "at chance" in blown.diverged or "loss is" in blown.diverged, blown.diverged
    assert blown.target is None and all(e["val_accuracy"] < 0.5 for e in blown.evaluations)


def test_each_optimizer_is_profiled_at_its_best_batch_size():
    """The profiles take each optimizer's fastest median seconds over its batch sizes; unreached points don't count."""
    from pipeline.scaling import best_times

    rows = [
        {"workload": "mnist", "optimizer": "sgd", "batch_size": 16, "median_seconds": 4.0},
        {"workload": "mnist", "optimizer": "sgd", "batch_size": 64, "median_seconds": 2.5},
        {"workload": "mnist", "optimizer": "sgd", "batch_size": 256, "median_seconds": None},  # never reached
        {"workload": "mnist", "optimizer": "adam", "batch_size": 16, "median_seconds": None},
        {"workload": "fashion", "optimizer": "sgd", "batch_size": 16, "median_seconds": 7.0},
    ]
    assert best_times(rows, {"mnist": {}, "fashion": {}}) == {
        "mnist": {"sgd": 2.5, "adam": None},
        "fashion": {"sgd": 7.0},
    }


def test_each_batch_sizes_search_starts_from_the_rate_chosen_for_the_next_smaller_one(monkeypatch):
    from omegaconf import OmegaConf

    from pipeline.sweeps.study import Point, Study, grid_index

    study, starts = Study(OmegaConf.create({"rates_per_decade": 2}), None), []
    chosen = {16: 0.01, 64: 0.03162, 256: 0.1}

    def point(workload, cfg, batch_size, start):
        starts.append((batch_size, start))
        return Point("mnist", "sgd", batch_size, chosen[batch_size], False)

    monkeypatch.setattr(study, "point", point)
    cfg = OmegaConf.create({"optimizer": {"name": "sgd", "learning_rate": 0.001}})
    points = study.optimizer(SimpleNamespace(batch_sizes=[256, 16, 64]), cfg)
    assert [p.batch_size for p in points] == [16, 64, 256], "smallest first"
    assert starts == [(16, grid_index(0.001, 2)), (64, grid_index(0.01, 2)), (256, grid_index(0.03162, 2))]
