"""What is generated stays generated, judged on the commit: a clean clone of HEAD, never the working tree.

dvc.yaml from the code, params.yaml from conf/, dvc.lock from `dvc repro` on the committed
code, the README's tables from the committed reports/. The user's own outputs (after
`dvc repro` on another CPU, say) are never held against the published ones. CI fails
when one drifts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.paths import PACKAGE_CHECKOUT


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A clean clone of the committed repository (HEAD)."""
    if not (PACKAGE_CHECKOUT / ".git").exists():
        pytest.skip(f"{PACKAGE_CHECKOUT} is not a git checkout")
    clone = tmp_path_factory.mktemp("committed") / "repo"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(PACKAGE_CHECKOUT), str(clone)], check=True)
    return clone


def run_in(clone: Path, *args: str) -> subprocess.CompletedProcess:
    """A command of the clone's own code (`python -m` puts the clone first on the path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "MNIST_PIPELINE_"))}
    return subprocess.run(args, cwd=clone, capture_output=True, text=True, env=env, timeout=300)


def test_dvc_yaml_is_derived_from_the_stages_and_their_imports(committed):
    result = run_in(committed, sys.executable, "-m", "pipeline.project.stages", "--check")
    assert result.returncode == 0, result.stderr + "run: python -m pipeline.project.stages"


def test_params_yaml_is_conf_composed_by_dvc(committed):
    result = run_in(committed, sys.executable, "-m", "pipeline.compose", "--check")
    assert result.returncode == 0, result.stdout + result.stderr + "run: python -m pipeline.compose"


def test_readme_tables_are_generated_from_reports(committed):
    assert "<!-- generated: sweep_answer -->" in (committed / "README.md").read_text()
    result = run_in(committed, sys.executable, "-m", "pipeline.project.readme", "--check")
    assert result.returncode == 0, result.stderr + "run: python -m pipeline.project.readme"


def test_dvc_lock_matches_the_committed_code_and_config(committed):
    """`dvc status` of a fresh clone: nothing changed but outputs a clone cannot have yet.

    Those are the cached outputs (data, model: not in git) and the sweep stage's record,
    which lives beside the MLflow store that a clone does not have (so its `dvc repro` runs
    the sweep into its own store); the compare stage waits on that record.
    """
    result = run_in(committed, str(Path(sys.executable).with_name("dvc")), "status", "--json")
    assert result.returncode == 0, result.stderr
    stages = yaml.safe_load((committed / "dvc.yaml").read_text())["stages"]
    absent_in_a_clone = set()
    for stage in stages.values():
        for out in stage.get("outs", []):
            path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if options.get("cache", True) or path.startswith("mlruns/"):
                absent_in_a_clone.add(path)
    problems = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                for path, state in paths.items() if isinstance(paths, dict) else [(paths, "")]:
                    if not (state in ("deleted", "not in cache") and path in absent_in_a_clone):
                        problems.append(f"{stage}: {kind} {path} {state}")
    assert not problems, "dvc.lock does not match the committed code and config (run dvc repro):\n" + "\n".join(
        problems
    )
