"""The errors a user can cause, and the deliberate stop of a run."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or environment: the message names the value, what is allowed and the fix."""


class RunStopped(Exception):  # noqa: N818 - a decision, not an error
    """A run stopped on purpose (a search's pruner): it ends KILLED, not FAILED."""


class Terminated(BaseException):  # noqa: N818 - mirrors KeyboardInterrupt, not an error
    """Raised in the main thread when the process receives SIGTERM."""


def raise_terminated(signum: int, frame: object) -> None:
    """Signal handler: SIGTERM raises `Terminated`, so `finally` blocks and exit handlers run."""
    raise Terminated(f"received signal {signum}")
