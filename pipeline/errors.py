"""The error a user can cause, and how entry points report it without a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)


class PipelineError(Exception):
    """Bad input or environment: the message names the value, what is allowed and the fix."""


@contextlib.contextmanager
def exit_on_pipeline_error() -> Iterator[None]:
    """Turn a `PipelineError` into one logged message and exit status 1."""
    try:
        yield
    except PipelineError as err:
        log.error("%s", err)
        sys.exit(1)
