"""README command 1, timed as a new user runs it: a fresh clone, a fresh virtual environment, no caches.

    python benchmarks/first_command.py        # writes reports/first_command.json (the README's figure)

Clones the committed repository into a temporary folder and runs, with an empty home
folder (no pip cache, no JAX compilation cache, no MLflow store):
`python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && dvc repro`,
timing the install and `dvc repro` separately. Takes as long as it measures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.paths import paths_at  # noqa: E402
from pipeline.core.store import cpu_tags  # noqa: E402


def timed(command: str, cwd: Path, env: dict) -> float:
    started = time.monotonic()
    subprocess.run(["bash", "-c", command], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clone, home = Path(tmp) / "clone", Path(tmp) / "home"
        home.mkdir()
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "PIP_NO_CACHE_DIR": "1", "LANG": "C.UTF-8"}
        install = timed('python3 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[dev]"', clone, env)
        repro = timed(". .venv/bin/activate && dvc repro", clone, env)
        runs = json.loads((clone / "mlruns" / "stages" / "sweep.json").read_text())
    tags = cpu_tags()
    record = {
        "install_s": round(install, 1),
        "repro_s": round(repro, 1),
        "sweep_runs": runs["finished"],
        "cpu": f"{tags['cpu.model']}, {tags['cpu.count']} cores ({tags['cpu.vector_extensions']})",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    target = paths_at(ROOT).first_command
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
