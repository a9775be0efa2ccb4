"""Open the MLflow UI on this project's store: `python -m pipeline.ui [tracking.ui_port=5000]`.

Starts `mlflow ui` on the store the pipeline writes to (SQLite under `<mlruns_dir>/`, or
the one `MLFLOW_TRACKING_URI` / `tracking.uri` names; no URI to type), waits until it
answers and prints the address of the experiment's runs table; Ctrl-C, SIGTERM or a closed
terminal stops it and every worker it started. A tracking server has a UI of its own: its address is printed instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from omegaconf import DictConfig

from pipeline.core.app import stage_main
from pipeline.core.errors import PipelineError
from pipeline.core.store import setup_tracking, tracking_uri

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180  # mlflow ui starts a process tree: about 25 s to answer here


def ui(cfg: DictConfig) -> str:
    """Serve the MLflow UI until Ctrl-C; return the runs page's address."""
    uri = tracking_uri(cfg)
    experiment_id = setup_tracking(cfg)
    if uri.startswith(("http://", "https://")):
        address = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
        print(f"MLflow UI (the tracking server's own): {address}", flush=True)
        return address
    port = int(cfg.tracking.ui_port)
    base = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", uri]
    server = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{base}/health"):
            if server.poll() is not None:
                raise PipelineError(
                    f"mlflow ui exited with status {server.returncode} (is port {port} in use?): "
                    f"choose another port, e.g. python -m pipeline.ui tracking.ui_port={port + 1}"
                )
            if time.monotonic() > deadline:
                raise PipelineError(f"mlflow ui did not answer on {base} within {START_TIMEOUT_S} s")
            time.sleep(0.5)
        address = f"{base}/#/experiments/{experiment_id}/runs"
        print(f"MLflow UI of {uri}: {address}  (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.wait()
        return address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        log.info("MLflow UI stopped")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


main = stage_main(ui)  # python -m pipeline.ui [tracking.ui_port=5000]

if __name__ == "__main__":
    main()
