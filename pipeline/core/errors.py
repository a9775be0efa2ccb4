"""The errors a user can cause, and the deliberate stop of a run."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or environment: the message names the value, what is allowed and the fix."""


class RunStopped(Exception):  # noqa: N818 - a decision, not an error
    """A run stopped on purpose (a search's pruner): it ends KILLED, not FAILED."""


class Terminated(BaseException):  # noqa: N818 - mirrors KeyboardInterrupt, not an error
    """Raised in the main thread when the process receives SIGTERM."""


# Stops asked for by a signal. An exception raised from a signal handler lands wherever the
# interpreter happens to be, and there a destructor or a library can swallow it; the
# training loop calls `check_stop` between its steps, so a stop is never lost.
STOPS: list[BaseException] = []


def raise_terminated(signum: int, frame: object) -> None:
    """Signal handler: SIGTERM raises `Terminated`, so `finally` blocks and exit handlers run."""
    STOPS.append(Terminated(f"received signal {signum}"))
    raise STOPS[-1]


def raise_interrupt(signum: int, frame: object) -> None:
    """Signal handler: SIGINT raises `KeyboardInterrupt`, as Python's own does, and remembers it."""
    STOPS.append(KeyboardInterrupt())
    raise STOPS[-1]


def check_stop() -> None:
    """Raise the stop a signal asked for, if one did (a safe point: between training steps)."""
    if STOPS:
        raise STOPS[0]
