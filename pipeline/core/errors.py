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
# training loop calls `check_stop` before each stretch of steps it runs as one program and at each
# epoch's end, so a stop is never lost.
STOPS: list[BaseException] = []

# Raised inside the MLflow store's SQL (SQLAlchemy, sqlite3), a stop can leave a connection holding
# SQLite's write lock, and then ending the run KILLED waits on that lock (seen: a SIGTERM'd run still
# alive 60 s later, "database is locked"). There the stop waits until the interpreter has left that
# code: a 50 ms timer (SIGALRM) looks again, and raises it at the first look outside.
DEFER_IN = ("sqlalchemy", "sqlite3", "alembic")
RETRY_SECONDS = 0.05


def in_store_code(frame: object) -> bool:
    """Whether `frame` or a frame that called it runs code of a module in `DEFER_IN`."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(DEFER_IN):  # type: ignore[attr-defined]
            return True
        frame = frame.f_back  # type: ignore[attr-defined]
    return False


PENDING: list[BaseException] = []  # a stop deferred and not raised yet


def _raise_when_safe(stop: BaseException, frame: object) -> None:
    STOPS.append(stop)
    if in_store_code(frame):
        PENDING.append(stop)
        _look_again()
        return
    _forget_pending()
    raise stop


def _look_again() -> None:
    import signal

    signal.signal(signal.SIGALRM, _retry)
    signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)


def _forget_pending() -> None:
    """The stop is being raised now: no later look may raise it a second time."""
    if PENDING:
        import signal

        PENDING.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)


def _retry(signum: int, frame: object) -> None:
    if not PENDING:
        return
    if in_store_code(frame):
        _look_again()
        return
    stop = PENDING[0]
    _forget_pending()
    raise stop


def raise_terminated(signum: int, frame: object) -> None:
    """Signal handler: SIGTERM raises `Terminated`, so `finally` blocks and exit handlers run."""
    _raise_when_safe(Terminated(f"received signal {signum}"), frame)


def raise_interrupt(signum: int, frame: object) -> None:
    """Signal handler: SIGINT raises `KeyboardInterrupt`, as Python's own does, and remembers it."""
    _raise_when_safe(KeyboardInterrupt(), frame)


def check_stop() -> None:
    """Raise the stop a signal asked for, if one did (a safe point: between stretches of training steps)."""
    if STOPS:
        _forget_pending()
        raise STOPS[0]
