"""Compose stage: `conf/` -> `params.yaml`, as DVC composes it (`python -m pipeline.compose`).

First in `dvc.yaml`: under `dvc repro` it rewrites `params.yaml` when a config file
changed; inside `dvc exp run` DVC has just composed it with the `-S` overrides, so it is
left alone. Every later stage declares the `params.yaml` keys it reads.
"""

from __future__ import annotations

import logging
import os
import sys

from pipeline.core.dvcparams import compose_params_file
from pipeline.core.env import DVC_EXP_NAME
from pipeline.core.errors import PipelineError
from pipeline.core.paths import PARAMS_FILE

log = logging.getLogger(__name__)


def main() -> None:
    """`python -m pipeline.compose [--check]` (`--check`: exit 1 if params.yaml is not conf/ composed)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if "--check" in sys.argv[1:]:
        if compose_params_file(write=False):
            log.error("%s is not conf/ composed: run python -m pipeline.compose", PARAMS_FILE)
            sys.exit(1)
        return
    if os.environ.get(DVC_EXP_NAME):
        log.info("DVC experiment %s: DVC composed %s from conf/ itself", os.environ[DVC_EXP_NAME], PARAMS_FILE)
        return
    try:
        changed = compose_params_file()
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
    log.info("%s %s from conf/", PARAMS_FILE, "recomposed" if changed else "already matches")


if __name__ == "__main__":
    main()
