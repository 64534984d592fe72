"""Ctrl-C and SIGTERM: a training run finishes its step, saves and says how to go on.

Inside the training loop (``stop_requests()``), SIGINT and SIGTERM only note
the request; the loop looks at it after every step, writes ``last.ckpt`` with
its position inside the epoch and raises ``Interrupted``.  A second signal
raises at once, wherever the program is: a save in progress is abandoned, and
the previous ``last.ckpt`` stays whole (checkpoints are written to a temp file
and renamed into place).

Everywhere else (loading the data, ``eval``, ``predict`` ...) Ctrl-C raises
``KeyboardInterrupt`` as Python does, and, while ``terminate_raises()`` is
active, SIGTERM raises ``Interrupted``; every command turns either into one
line and the exit status a shell gives a process ended by that signal
(128 + its number: 130 for SIGINT, 143 for SIGTERM).
"""
import contextlib
import signal
import sys
import threading

NAMES = {signal.SIGINT: "interrupted (SIGINT)", signal.SIGTERM: "terminated (SIGTERM)"}


class Interrupted(BaseException):
    """A run or command stopped by a signal.  A ``BaseException`` like
    ``KeyboardInterrupt``, so that ``except Exception`` handlers let it pass."""

    def __init__(self, signum, message=""):
        super().__init__(message or NAMES.get(signum, f"stopped by signal {signum}"))
        self.signum = int(signum)

    @property
    def status(self):
        """The exit status a shell reports for a process this signal ended."""
        return 128 + self.signum


def signal_of(error):
    """The signal behind ``KeyboardInterrupt`` or ``Interrupted``."""
    return error.signum if isinstance(error, Interrupted) else int(signal.SIGINT)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _handlers(handler):
    """``handler`` for SIGINT and SIGTERM while active (signals reach only the
    main thread, so elsewhere nothing changes)."""
    if not _in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def terminate_raises():
    """SIGTERM raises ``Interrupted`` while active (Ctrl-C keeps raising
    ``KeyboardInterrupt``): a command ends cleanly, not silently."""
    def on_term(signum, frame):
        raise Interrupted(signum)

    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequests:
    """``with StopRequests() as stops:``; ``stops.signum`` is the first SIGINT or
    SIGTERM received (None until then).  The second one raises ``Interrupted``."""

    def __init__(self, announce=True):
        self.signum = None
        self.announce = announce
        self._context = None

    def _note(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, f"{NAMES.get(signum, signum)} again: stopped without "
                                      f"saving")
        self.signum = signum
        if self.announce:
            print(f"\nminires: {NAMES.get(signum, signum)}: finishing the step and saving "
                  f"(press Ctrl-C again to stop without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        self._context = _handlers(self._note)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
