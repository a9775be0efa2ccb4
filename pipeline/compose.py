"""Compose stage: `conf/` -> `params.yaml`, as DVC composes it, checked (`python -m pipeline.compose`).

First in `dvc.yaml`, so nothing runs on settings that cannot: the composed settings are
checked the way every stage checks them (schema, ranges, the model and optimizer built)
before `params.yaml` is written, and a refusal stops `dvc repro` before any stage deletes
its outputs. Inside `dvc exp run`, DVC has just composed `params.yaml` with the `-S`
overrides: they are checked, and refused ones put `params.yaml` back as `conf/` composes it
(exit 1, no stage runs, nothing else changes).
"""

from __future__ import annotations

import logging
import os
import sys

import yaml

from pipeline.core.dvcparams import compose_params_file, composed_params, infer_overrides, read_params
from pipeline.core.env import DVC_EXP_NAME
from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONFIG_DIR, PARAMS_FILE

log = logging.getLogger(__name__)


def check_params(params: dict) -> None:
    """Refuse settings a stage would refuse: compose them as a stage does and build the model and optimizer."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from pipeline.core.app import prepare_config
    from pipeline.model.networks import check_buildable

    overrides = infer_overrides(params)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    check_buildable(prepare_config(task, cfg.hydra.runtime.choices))


def main() -> None:
    """`python -m pipeline.compose [--check]` (`--check`: exit 1 if params.yaml is not conf/ composed)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU here", at INFO
    if "--check" in sys.argv[1:]:
        if compose_params_file(write=False):
            log.error("%s is not conf/ composed: run python -m pipeline.compose", PARAMS_FILE)
            sys.exit(1)
        return
    try:
        if os.environ.get(DVC_EXP_NAME):
            try:
                check_params(read_params())
            except PipelineError:
                compose_params_file()  # conf/ is what it was: params.yaml back as it was
                raise
            log.info("DVC experiment %s: %s (DVC's composition with -S) checked", os.environ[DVC_EXP_NAME], PARAMS_FILE)
            return
        check_params(yaml.safe_load(composed_params()))
        changed = compose_params_file()
    except PipelineError as err:
        where = "dvc exp run -S ..." if os.environ.get(DVC_EXP_NAME) else "conf/"
        log.error("%s refused, nothing ran and %s is as it was: %s", where, PARAMS_FILE, err)
        sys.exit(1)
    log.info("%s %s from conf/", PARAMS_FILE, "recomposed" if changed else "already matches")


if __name__ == "__main__":
    main()
