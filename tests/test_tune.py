"""A fair comparison: learning rates scaled with the batch size, and tuned per cell then replicated."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import psutil
import pytest
from conftest import Command, run_module
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipeline.core.config import build_optimizer, effective_learning_rate
from pipeline.core.files import write_json
from pipeline.core.paths import project_paths
from pipeline.core.store import tracking_uri
from pipeline.project.readme import tuned_comparison
from pipeline.tune import FINAL, compare_views, phase_paths


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_learning_rate_scales_with_the_batch_size(compose_cfg, rule, factor):
    cfg = compose_cfg("optimizer=sgd", f"train.lr_scaling={rule}", "train.base_batch_size=128", "train.lr_factor=0.5")
    assert effective_learning_rate(cfg, 512) == pytest.approx(0.01 * 0.5 * factor)
    assert float(build_optimizer(cfg, 512).learning_rate) == pytest.approx(0.01 * 0.5 * factor)
    assert effective_learning_rate(cfg, None) == pytest.approx(0.005), "before the data: the base batch size"


def test_settings_that_vary_within_a_sweep_are_kept_as_the_values_they_take():
    """Two sweeps that both vary `train.epochs`, over other values, must not look alike."""
    from types import SimpleNamespace

    from pipeline.analysis.summary import shared_settings

    def run(status: str, **params: str) -> SimpleNamespace:
        params = {k.replace("__", "."): v for k, v in params.items()}
        return SimpleNamespace(info=SimpleNamespace(status=status), data=SimpleNamespace(params=params))

    runs = [
        run("FINISHED", train__epochs="5", train__batch_size="32", dataset__name="mnist", model__hidden_units="[512]"),
        run("FINISHED", train__epochs="1", train__batch_size="128", dataset__name="mnist"),
        run("FAILED", train__epochs="9", dataset__name="mnist"),
    ]
    assert shared_settings(runs) == {"dataset.name": "mnist", "model.hidden_units": "-,[512]", "train.epochs": "1,5"}


def test_the_default_sweep_is_set_beside_the_tuned_one_only_with_the_same_settings(compose_cfg):
    """`pipeline.tune train.epochs=1` must not call a 5-epoch default sweep its baseline."""
    cfg = compose_cfg()
    paths = project_paths(cfg)
    paths.root.mkdir(parents=True)
    OmegaConf.save(cfg, paths.root / "params.yaml")  # the README's blocks read the project's paths from it

    def summary(mean: float, epochs: str) -> dict:
        cell = {"cell": "sgd-bs32", "optimizer": "sgd", "batch_size": "32", "mean": mean, "ci95": [0.8, 1.0], "n": 3}
        settings = {"train.epochs": epochs, "dataset.name": "mnist"}
        return {"cells": [cell], "winner": cell, "tied_with": [], "settings": settings}

    write_json(paths.tuned("choice.json"), {"sgd-bs32": {"lr_factor": 3.0, "learning_rate": 0.03}})
    write_json(phase_paths(paths, FINAL).sweep_report("summary.json"), summary(0.95, "1"))
    write_json(paths.sweep_report("summary.json"), summary(0.97, "5"))
    views = compare_views(paths)
    assert views["default"] is None and "default" not in views["cells"]["sgd-bs32"]
    assert "train.epochs=5 there, 1 here" in views["default_left_out"]
    write_json(paths.tuned("comparison.json"), views)  # as tune writes it
    assert "Default rates: left out (it ran with other settings (train.epochs=5 there" in tuned_comparison(paths.root)
    write_json(paths.sweep_report("summary.json"), summary(0.93, "1"))
    views = compare_views(paths)
    assert views["default_left_out"] is None and views["default"]["winner"] == "sgd-bs32"
    assert views["cells"]["sgd-bs32"]["default"]["mean"] == 0.93


@pytest.mark.slow
def test_tune_chooses_a_rate_per_cell_on_validation_then_replicates(tiny_data_cfg):
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    result = run_module(
        "pipeline.tune", f"paths.root={root}", "optimizer=sgd,adam", "train.batch_size=32", "train.epochs=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    choice = json.loads((root / "reports/tuned/choice.json").read_text())
    assert set(choice) == {"sgd-bs32", "adam-bs32"}
    for cell in choice.values():
        assert cell["lr_factor"] in (0.3, 1.0, 3.0)
        base = 0.01 if cell["optimizer"] == "sgd" else 0.001
        assert cell["learning_rate"] == pytest.approx(base * cell["lr_factor"])
    final = json.loads((root / "reports/tuned/final/sweep/summary.json").read_text())
    assert {(c["cell"], c["n"]) for c in final["cells"]} == {("sgd-bs32", 3), ("adam-bs32", 3)}, "3 seeds each"
    search = json.loads((root / "reports/tuned/search/sweep/summary.json").read_text())
    assert search["runs"] == 6, "2 cells x 3 learning rates"
    comparison = json.loads((root / "reports/tuned/comparison.json").read_text())
    assert comparison["tuned"]["winner"] in {"sgd-bs32", "adam-bs32"}
    assert all("tuned" in cell and "chosen" in cell for cell in comparison["cells"].values())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_tune_stops_its_phase_in_one_line_and_its_runs_end_killed(tiny_data_cfg, sig):
    """tune passes the stop to the sweep it runs (once), waits for it, and ends like every command."""
    cfg = tiny_data_cfg()
    root = Path(cfg.paths.root)
    proc = Command("pipeline.tune", f"paths.root={root}", "optimizer=sgd,adam", "train.batch_size=8",
                   "train.epochs=100000")  # fmt: skip
    try:
        proc.wait_for("Epoch 2/", timeout=180)  # the search phase's first job is training
        if sig == signal.SIGINT:  # as a terminal sends Ctrl-C: to the whole foreground process group
            os.killpg(proc.pid, sig)
        else:  # as `kill` does, or a closing terminal to its session's leader: to tune alone
            proc.send_signal(sig)
        output = proc.finish(90)
    finally:
        left = [
            p for p in psutil.process_iter(["cmdline"]) if f"paths.root={root}" in " ".join(p.info["cmdline"] or [])
        ]
        for process in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    assert not left, "the phase outlived tune"
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}[sig], output[-3000:]
    message = {
        signal.SIGINT: "Interrupted (Ctrl-C)",
        signal.SIGTERM: "Terminated (SIGTERM)",
        signal.SIGHUP: "Hung up (SIGHUP: the terminal closed)",
    }[sig]
    assert f"{message}; the MLflow runs under way ended KILLED" in output
    assert "Traceback" not in output, output[-3000:]
    client = MlflowClient(tracking_uri=tracking_uri(cfg))
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert runs and {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
