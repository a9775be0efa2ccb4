"""What is generated stays generated: dvc.yaml from the code, params.yaml from conf/, dvc.lock from
`dvc repro` on the committed code, the README's tables from reports/. CI fails when one drifts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.paths import PACKAGE_CHECKOUT


def test_dvc_yaml_is_derived_from_the_stages_and_their_imports():
    from pipeline.stages import render

    assert (PACKAGE_CHECKOUT / "dvc.yaml").read_text() == render(), "run: python -m pipeline.stages"


def test_params_yaml_is_conf_composed_by_dvc(tmp_path):
    from dvc.utils.hydra import compose_and_dump
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    fresh = tmp_path / "params.yaml"
    compose_and_dump(fresh, str(PACKAGE_CHECKOUT / "conf"), None, "config", str(PACKAGE_CHECKOUT), [])
    GlobalHydra.instance().clear()
    assert (PACKAGE_CHECKOUT / "params.yaml").read_text() == fresh.read_text(), "run: python -m pipeline.params"


def test_dvc_lock_matches_the_committed_code_and_config():
    """`dvc status`: nothing changed but outputs that are simply absent (a fresh clone has no data)."""
    dvc = Path(sys.executable).with_name("dvc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    result = subprocess.run(
        [str(dvc), "status", "--json"], cwd=PACKAGE_CHECKOUT, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    stages = yaml.safe_load((PACKAGE_CHECKOUT / "dvc.yaml").read_text())["stages"]
    cached_outs = set()
    for stage in stages.values():
        for out in stage.get("outs", []):
            path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
            if options.get("cache", True):
                cached_outs.add(path)
    problems = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                for path, state in paths.items() if isinstance(paths, dict) else [(paths, "")]:
                    if not (state in ("deleted", "not in cache") and path in cached_outs):
                        problems.append(f"{stage}: {kind} {path} {state}")
    assert not problems, "dvc.lock does not match the committed code and config (run dvc repro):\n" + "\n".join(
        problems
    )


def test_readme_tables_are_generated_from_reports():
    from pipeline.readme import DOCUMENTS, render

    assert "<!-- generated: sweep_answer -->" in (PACKAGE_CHECKOUT / "README.md").read_text()
    for name in DOCUMENTS:
        text = (PACKAGE_CHECKOUT / name).read_text()
        assert render(text) == text, f"{name}: run python -m pipeline.readme"
