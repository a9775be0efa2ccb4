"""Log epochs kept while the tracking server was gone: `python -m pipeline.records <file>`.

A training run whose tracking server vanished keeps its measured epochs in
`<mlruns_dir>/unlogged/<run id>.json` and fails; once the server is back, this logs them
into that run and ends it FAILED with the reason.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.training.records import replay_unlogged

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
        log.error("usage: python -m pipeline.records <mlruns/unlogged/RUN_ID.json> (a file the train stage kept)")
        sys.exit(2)
    try:
        count = replay_unlogged(Path(sys.argv[1]))
    except Exception as err:  # noqa: BLE001 - one line for the user
        log.error("Could not log %s: %s: %s", sys.argv[1], type(err).__name__, err)
        sys.exit(1)
    log.info("Logged %d epoch(s) from %s", count, sys.argv[1])


if __name__ == "__main__":
    main()
