"""The Hydra entry point every command shares: one config, one Keras backend, one way to fail.

`stage_main(run)` turns a function `run(cfg)` into `main()` for `python -m pipeline.<command>`:

- run by DVC (`DVC_STAGE` is set), the overrides that reproduce `params.yaml` are added
  to the command line first (`pipeline.core.dvcparams`), so the stage runs what DVC records;
- the composed config gets the names of the chosen optimizer and model files, is
  checked against the schema (`pipeline.core.config`), and picks the Keras backend;
- a `PipelineError` (bad input) ends in one logged line and exit status 1, any other
  error in one line too unless `HYDRA_FULL_ERROR=1` asks for the traceback; Ctrl-C
  (status 130), SIGTERM (143) and SIGHUP, the terminal closed (129; ignored under `nohup`),
  end with one line, every run the command started closed KILLED (a run evaluate resumes
  stays FINISHED, the stop in its `evaluation.failure_reason`). In a
  multirun a failed job is recorded by the job itself and the sweep goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, open_dict

from pipeline.core.config import Config, PredictConfig, backend_name, check_config, check_override_key
from pipeline.core.env import DVC_OVERRIDES, DVC_STAGE
from pipeline.core.errors import PipelineError, Terminated, install_stop_handlers, stopped
from pipeline.core.paths import CONFIG_DIR, find_project_root

log = logging.getLogger(__name__)

# Config groups whose chosen file name becomes the `name` of the node (`optimizer.name`).
NAMED_GROUPS = ("optimizer", "model")


def prepare_config(cfg: DictConfig, choices: Mapping[str, Any]) -> DictConfig:
    """Name the chosen group files, check the config, select the Keras backend."""
    with open_dict(cfg):
        for group in NAMED_GROUPS:
            if cfg.get(group) is not None and not cfg[group].get("name"):
                cfg[group].name = str(choices.get(group) or group)
    check_config(cfg)
    select_backend(backend_name(cfg))
    return cfg


def select_backend(backend: str) -> None:
    """Make `backend` Keras' backend; Keras reads it once, at its first import."""
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise PipelineError(
                f"train.backend={backend} but this process already runs Keras on {keras.backend.backend()}: "
                "a process has one backend. Run it as its own command (a sweep over train.backend needs "
                "hydra/launcher=submitit_local, one process per job)."
            )
        return
    os.environ["KERAS_BACKEND"] = backend


def dvc_overrides() -> list[str]:
    """When DVC runs this stage: the overrides that compose conf/ into params.yaml (a sweep's own keys aside)."""
    if not os.environ.get(DVC_STAGE) or DVC_OVERRIDES in os.environ:
        return []
    from pipeline.core.dvcparams import infer_overrides, read_params

    params = read_params(find_project_root())
    swept = set((params.get("sweep") or {}).get("grid") or {}) if _multirun() else set()
    kept = [o for o in infer_overrides(params) if not any(_key(o) == k or _key(o).startswith(f"{k}.") for k in swept)]
    os.environ[DVC_OVERRIDES] = " ".join(kept)
    return kept


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _multirun() -> bool:
    return "-m" in sys.argv or "--multirun" in sys.argv


SCHEMAS = {"config": Config, "predict": PredictConfig}  # each primary config's schema


def check_overrides(arguments: list[str], schema: type | None = None) -> None:
    """One line for an override Hydra cannot parse because a value needs quotes (spaces, non-ASCII),
    for a `paths.root` that is the filesystem root, or for a key that `schema` does not know."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.core.paths import checked_root

    for argument in (a for a in arguments if not a.startswith("-")):
        key, _, value = argument.partition("=")
        if schema is not None and value and not any(c in key for c in "+~@[(") and not key.startswith("hydra."):
            check_override_key(key, schema)
        if key.lstrip("+") == "paths.root" and value.strip("'\""):
            checked_root(value.strip("'\""))  # Hydra writes its log folder there before any stage runs
        try:
            OverridesParser.create().parse_overrides([argument])
        except Exception:  # noqa: BLE001 - Hydra's own parser errors; anything else Hydra reports itself
            key, _, value = argument.partition("=")
            if value and not value.startswith(("'", '"')) and (not value.isascii() or " " in value):
                raise PipelineError(
                    f"{argument!r}: Hydra's command line needs quotes around a value with spaces or non-ASCII "
                    f"characters: write \"{key}='{value}'\"."
                ) from None


def stage_main(
    run: Callable[[DictConfig], Any],
    config_name: str = "config",
    config_dir: str = str(CONFIG_DIR),
    multirun: bool = False,
) -> Callable[[], Any]:
    """`main()` for a command: Hydra's app around `run(cfg)`, with the pipeline's error handling.

    `multirun=True` makes the command a multirun whether or not `-m` is given (the sweep stage).
    """
    import hydra

    def task(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if os.environ.get(DVC_OVERRIDES):
            log.info("Run by DVC: settings from params.yaml (%s)", os.environ[DVC_OVERRIDES])
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return run(cfg)  # a sweep job records its own failure and returns NaN
        try:
            if config_name == "config":
                prepare_config(cfg, hydra_cfg.runtime.choices)
            else:
                from pipeline.core.config import PredictConfig, check_unknown_keys

                check_unknown_keys(cfg, PredictConfig)
            return run(cfg)
        except PipelineError as err:
            log.error("%s", err)
            sys.exit(1)
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error("%s: %s (HYDRA_FULL_ERROR=1 shows the traceback)", type(err).__name__, err)
            sys.exit(1)

    # Hydra names the job (and its log folder) after the module of the task function.
    task.__module__ = run.__module__
    task.__qualname__ = task.__name__ = run.__name__
    app = hydra.main(version_base="1.3", config_path=config_dir, config_name=config_name)(task)

    @functools.wraps(run)
    def main() -> Any:
        status: int | str | None = 0
        install_stop_handlers()
        try:
            if multirun and not _multirun():
                sys.argv.insert(1, "-m")
            sys.argv += dvc_overrides()
            check_overrides(sys.argv[1:], SCHEMAS.get(config_name))
            app()
        except PipelineError as err:
            logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
            log.error("%s", err)
            status = 1
        except (KeyboardInterrupt, Terminated) as stop:
            status, what = stopped(stop)
            print(f"{what}; every MLflow run this command started ended KILLED.", file=sys.stderr)
        except SystemExit as stop:
            status = stop.code
        exit_now(status)

    return main


def exit_now(status: int | str | None) -> None:
    """End the process without Python tearing down every module it imported.

    With Keras, JAX and MLflow loaded that teardown takes 1-2 s per command, for
    nothing: the exit handlers still run (an open sweep's parent run is closed), the
    logs and output streams are flushed, then the process exits with `status`. If a
    thread that Python would wait for is still running, the normal exit is used.
    """
    import atexit
    import threading

    waiting = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if waiting:
        sys.exit(status)
    code = status if isinstance(status, int) else (0 if status is None else 1)
    if isinstance(status, str):
        print(status, file=sys.stderr)
    atexit._run_exitfuncs()  # noqa: SLF001 - the exit handlers, as a normal exit runs them
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
