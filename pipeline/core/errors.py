"""The errors a user can cause, and the deliberate stop of a run."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or environment: the message names the value, what is allowed and the fix."""


class RunStopped(Exception):  # noqa: N818 - a decision, not an error
    """A run stopped on purpose (a search's pruner): it ends KILLED, not FAILED."""


class Terminated(BaseException):  # noqa: N818 - mirrors KeyboardInterrupt, not an error
    """Raised in the main thread when the process receives SIGTERM, or SIGHUP (`signum` says which)."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"received signal {signum}")
        self.signum = signum

    def __reduce__(self) -> tuple:  # rebuilt from its signal where a worker's stop is pickled
        return Terminated, (self.signum,)


def install_stop_handlers() -> None:
    """Make Ctrl-C, SIGTERM and SIGHUP (the terminal closed) raise a stop in the main thread.

    A SIGHUP that is ignored (the command was started under `nohup`) stays ignored.
    """
    import signal

    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, raise_terminated)


def stopped(stop: BaseException) -> tuple[int, str]:
    """The exit status a command ends with when `stop` ended it, and the words for its last line."""
    if isinstance(stop, KeyboardInterrupt):
        return 130, "Interrupted (Ctrl-C)"
    if getattr(stop, "signum", 15) == 1:
        return 129, "Hung up (SIGHUP: the terminal closed)"
    return 143, "Terminated (SIGTERM)"


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
    """Signal handler: SIGTERM or SIGHUP raises `Terminated`, so `finally` blocks and exit handlers run."""
    _raise_when_safe(Terminated(signum), frame)


def raise_interrupt(signum: int, frame: object) -> None:
    """Signal handler: SIGINT raises `KeyboardInterrupt`, as Python's own does, and remembers it."""
    _raise_when_safe(KeyboardInterrupt(), frame)


def check_stop() -> None:
    """Raise the stop a signal asked for, if one did (a safe point: between stretches of training steps)."""
    if STOPS:
        _forget_pending()
        raise STOPS[0]
