"""The benchmark's quick mode runs end to end, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.core.paths import PACKAGE_CHECKOUT

pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_the_ratios(tiny_data_cfg, tmp_path):
    cfg = tiny_data_cfg()
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--quick", "--root", str(cfg.paths.root), "--json", str(out)],
        cwd=PACKAGE_CHECKOUT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for variant in (
        "| script |",
        "| pipeline-cold |",
        "| pipeline-warm |",
        "| pipeline-no-sysmetrics |",
        "| pipeline-tf |",
    ):
        assert variant in result.stdout
    assert "fit / script fit" in result.stdout and "overhead per run" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {
        "script",
        "pipeline-cold",
        "pipeline-warm",
        "pipeline-no-sysmetrics",
        "pipeline-tf",
    }
    assert all(v["fit"] > 0 and v["process"] > v["fit"] and 0 <= v["accuracy"] <= 1 for v in data["variants"].values())
    assert data["sweep"]["runs"] == data["sweep"]["finished"] == 2
    assert data["floor"]["gflops"] > 0 and data["floor"]["train_mflop_per_sample"] == pytest.approx(1.64, abs=0.01)
    assert data["samples"] == {"train": 360, "val": 40}, "both sides train and validate on the processed splits"
    assert "cores" in data["cpu"]
