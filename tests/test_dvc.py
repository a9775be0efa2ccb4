"""`dvc repro` end to end in a temporary git repo, on a tiny dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_arrays
from omegaconf import OmegaConf

from pipeline.atomic import sha256_file, write_npz
from pipeline.config import PACKAGE_CHECKOUT

pytestmark = pytest.mark.slow


def sh(*cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def edit_yaml(path: Path, **values) -> None:
    cfg = OmegaConf.load(path)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value)
    OmegaConf.save(cfg, path)


def changed_stages(repo: Path, env: dict) -> set[str]:
    status = json.loads(sh("dvc", "status", "--json", cwd=repo, env=env).stdout)
    return set(status)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("conf", "pipeline"):
        shutil.copytree(PACKAGE_CHECKOUT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PACKAGE_CHECKOUT / "dvc.yaml", repo / "dvc.yaml")
    write_npz(tmp_path / "tiny.npz", tiny_arrays())
    edit_yaml(repo / "conf/dataset/mnist.yaml", mirrors=[{"url": str(tmp_path / "tiny.npz"), "sha256": None}])
    edit_yaml(repo / "conf/train/default.yaml", epochs=1, batch_size=32)
    preset = repo / "conf/sweep/optimizers_x_batch_sizes.yaml"  # a 2-job grid keeps the test short
    preset.write_text(preset.read_text().replace("sgd,momentum,rmsprop,adam", "sgd,adam").replace("32,128,512", "32"))
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MNIST_PIPELINE_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
        DVC_NO_ANALYTICS="1",
    )
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "tiny", cwd=repo, env=env)
    return repo, env


def cached_outputs(repo: Path) -> dict[str, str]:
    """sha256 of every file DVC caches (data, processed tensors, model), by path."""
    return {
        str(path.relative_to(repo)): sha256_file(path)
        for folder in ("data", "models")
        for path in sorted((repo / folder).rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }


def round_trip_through_remote(repo: Path, env: dict, remote: Path) -> None:
    """Push to a local-folder remote, lose cache and outputs, pull: all back, nothing to rerun."""
    sh("dvc", "remote", "add", "--default", "shared", str(remote), cwd=repo, env=env)
    before = cached_outputs(repo)
    assert "models/model.keras" in before and "data/raw/mnist.npz" in before
    pushed = sh("dvc", "push", cwd=repo, env=env).stdout
    assert "pushed" in pushed, pushed
    for folder in (".dvc/cache", "data", "models"):
        shutil.rmtree(repo / folder)
    assert "changed outs" in sh("dvc", "status", cwd=repo, env=env).stdout
    sh("dvc", "pull", cwd=repo, env=env)
    assert cached_outputs(repo) == before, "the same bytes came back"
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=repo, env=env).stdout
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env).stdout, "no retraining"


def test_dvc_repro_runs_all_stages_then_nothing(repo, tmp_path):
    repo, env = repo
    first = sh("dvc", "repro", cwd=repo, env=env).stdout
    for stage in ("download", "preprocess", "train", "evaluate", "sweep", "compare"):
        assert f"Running stage '{stage}'" in first
    summary = json.loads((repo / "reports/sweep/summary.json").read_text())
    assert (summary["runs"], summary["finished"]) == (2, 2)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert (repo / "models/model.keras").is_file()
    assert (repo / "mlruns/mlflow.db").is_file(), "the store lives under the temporary project"
    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=repo, env=env).stdout
    shown = sh("dvc", "metrics", "show", "--json", cwd=repo, env=env).stdout
    assert "test_accuracy" in shown

    # A teammate's machine: outputs come from the shared remote instead of retraining.
    round_trip_through_remote(repo, env, tmp_path / "dvc-remote")

    # Editing an optimizer invalidates train (and so evaluate, which reads its model) and
    # the sweep (and so compare), not download and preprocess.
    edit_yaml(repo / "conf/optimizer/rmsprop.yaml", learning_rate=0.002)
    assert changed_stages(repo, env) == {"train", "sweep"}

    # Editing the validation fraction reruns preprocess (and what depends on its data), not download.
    edit_yaml(repo / "conf/split/default.yaml", val_fraction=0.2)
    second = sh("dvc", "repro", cwd=repo, env=env).stdout
    assert "Running stage 'preprocess'" in second
    assert "Running stage 'download'" not in second
    processed = json.loads((repo / "data/processed/meta.json").read_text())
    assert processed["tensors"]["val"]["x"]["shape"] == [80, 784]
