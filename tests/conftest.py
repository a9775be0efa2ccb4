"""Shared fixtures: tiny datasets the tests make, and the real config composed on tmp_path."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from pipeline.core.app import prepare_config
from pipeline.core.files import write_npz
from pipeline.core.paths import CONFIG_DIR, PACKAGE_CHECKOUT

os.environ.setdefault("MPLBACKEND", "Agg")


def make_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` learnable fake digits: each class lights its own 7x7 block of a 28x28 image."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, row * 7 : row * 7 + 7, col * 7 : col * 7 + 7] = 255
    return images, labels.astype(np.uint8)


def tiny_arrays(n_train: int = 400, n_test: int = 100) -> dict[str, np.ndarray]:
    x_train, y_train = make_digits(n_train, seed=1)
    x_test, y_test = make_digits(n_test, seed=2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gzipped: bool) -> Path:
    """Write the four IDX files of `arrays` into `folder`."""
    from pipeline.data.sources import IDX_STEMS

    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_STEMS.items():
        data = idx_bytes(arrays[key])
        if gzipped:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return folder


@pytest.fixture
def tiny_npz(tmp_path: Path) -> Path:
    """A tiny Keras-layout mnist.npz."""
    path = tmp_path / "source" / "tiny.npz"
    path.parent.mkdir(parents=True)
    write_npz(path, tiny_arrays())
    return path


def compose_hydra(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """The real config as the stages compose it (with `hydra.*` when asked), nothing changed."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def compose_config(root: Path, *overrides: str) -> DictConfig:
    """The real config as a stage gets it, with every path under `root` and a SQLite store there."""
    cfg = compose_hydra(f"paths.root={root}", *overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.tracking.uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    return prepare_config(cfg, choices)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the real config with every path under tmp_path and a tmp SQLite store."""

    def _compose(*overrides: str, root: Path | None = None) -> DictConfig:
        return compose_config(root or tmp_path / "project", *overrides)

    return _compose


@pytest.fixture
def tiny_data_cfg(compose_cfg, tiny_npz) -> Callable[..., DictConfig]:
    """Config whose dataset mirror is the tiny npz, with download and preprocess done."""
    from pipeline.download import download_dataset
    from pipeline.preprocess import preprocess_dataset

    def _make(*overrides: str) -> DictConfig:
        mirror = f"dataset.mirrors=[{{url: '{tiny_npz}', sha256: null}}]"
        cfg = compose_cfg(mirror, "train.epochs=1", "train.batch_size=32", *overrides)
        download_dataset(cfg)
        preprocess_dataset(cfg)
        return cfg

    return _make


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    """Tests choose their own MLflow store; a user's MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MNIST_PIPELINE_PARENT_RUN_ID", raising=False)


def run_module(module: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m module args` as a user would; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or PACKAGE_CHECKOUT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_sweep(root: Path, *overrides: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """A one-epoch `python -m pipeline.experiment -m` sweep of the project under `root`.

    Without a `sweep=` override it sweeps only what `overrides` sweep (`sweep=none`).
    """
    preset = [] if any(o.startswith("sweep=") for o in overrides) else ["sweep=none"]
    result = run_module("pipeline.experiment", "-m", f"paths.root={root}", "train.epochs=1", *preset, *overrides)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def http_post_json(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def hangup_as_a_terminal_does() -> Callable[[], None] | None:
    """For `Popen(preexec_fn=...)`: under `nohup` the tests' children would inherit an ignored SIGHUP,
    and a test that hangs one up would test nothing; they get the default, as a terminal's command has."""
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        return None
    return lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Command:
    """`python -m <args>` run from the checkout in its own process group, its output read line by line.

    A thread collects the output, so `wait_for` gives up at its deadline even when the command prints
    nothing; whatever is still running when the test ends is killed (`no_command_outlives_its_test`),
    so a failed test never leaves a 100,000-epoch training eating the machine for the rest of the suite.
    """

    running: list[Command] = []

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=PACKAGE_CHECKOUT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=hangup_as_a_terminal_does(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        Command.running.append(self)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait_for(self, prefix: str, timeout: float = 180) -> list[str]:
        """The lines up to the first that starts with `prefix`; fails the test if none comes within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            lines = list(self.lines)
            for i, line in enumerate(lines):
                if line.startswith(prefix):
                    return lines[: i + 1]
            ended = self.proc.poll() is not None and not self._reader.is_alive()
            if ended and len(self.lines) > len(lines):
                continue  # the last lines came in after the copy: read them before giving up
            if ended or time.monotonic() > deadline:
                why = f"exited with {self.proc.returncode}" if ended else f"still running after {timeout:g} s"
                raise AssertionError(f"no line starting {prefix!r}: {why}; last lines:\n{''.join(lines[-30:])}")
            time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()

    def finish(self, timeout: float = 300) -> str:
        """Wait for the command to end (fails the test after `timeout` s); its whole output."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout:g} s later:\n{''.join(self.lines[-30:])}") from None
        self._reader.join(timeout=30)
        return "".join(self.lines)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group: also what outlived its leader (workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


@pytest.fixture(autouse=True)
def no_command_outlives_its_test() -> Iterator[None]:
    yield
    while Command.running:
        Command.running.pop().stop()


@contextlib.contextmanager
def mlflow_service(command: str, *args: str, log: Path | None = None, port: int | None = None) -> Iterator[str]:
    """Run `mlflow <command> <args> --host 127.0.0.1 --port <port or a free one>`; yield its base URL; stop it.

    Its own process group: the server starts workers that must all stop at the end.
    """
    port = port or free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    out = log.open("wb") if log else subprocess.DEVNULL
    server = subprocess.Popen(
        [str(mlflow_cli), command, *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http_get(f"{base}/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, f"mlflow {command} exited with {server.returncode}"
            assert time.monotonic() < deadline, f"mlflow {command} did not answer /health within 120 s"
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        if log:
            out.close()


def sweep_record(root: Path) -> dict:
    """The record of the sweep started last in the project under `root` (`<mlruns>/sweeps/<parent id>.json`)."""
    records = list((root / "mlruns" / "sweeps").glob("*.json"))
    assert records, f"no sweep record under {root / 'mlruns' / 'sweeps'}"
    return max((json.loads(p.read_text()) for p in records), key=lambda r: r["started"])
