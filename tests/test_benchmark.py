"""The benchmark's quick mode runs end to end, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.paths import PACKAGE_CHECKOUT

pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_the_table_and_targets(tiny_data_cfg, tmp_path):
    cfg = tiny_data_cfg()
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--quick", "--root", str(cfg.paths.root), "--json", str(out)],
        cwd=PACKAGE_CHECKOUT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in ("| reference |", "| pipeline |", "| no-track |"):
        assert variant in result.stdout
    assert "pipeline / reference throughput" in result.stdout and "tracking overhead" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"reference", "pipeline", "no-track"}
    assert all(v["seconds"] > 0 and 0 <= v["accuracy"] <= 1 for v in data["summary"].values())
    assert data["limit_gflops"] > 0
    assert Path(cfg.paths.root, "mlruns", "mlflow.db").is_file(), "tracked runs go to the project's store"
