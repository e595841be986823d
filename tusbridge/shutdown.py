"""Whether this process is stopping, so that a request streaming a body stops, counts what it has and lets go.

A worker told to stop (SIGTERM from a deploy or a reload, gunicorn's
``--max-requests``, an ASGI server's shutdown) waits a graceful timeout for
its requests, then kills them. An upload in flight may last far longer; it
stops reading at once instead, so the client gets an answer with the offset
it reached and resumes elsewhere. Server adapters say how the process learns
that it is stopping (``tusbridge.gunicorn``, ``tusbridge.asgi``): ``on_signals``
chains a flag to the server's own handlers of the stop signals, and ``watch``
adds a check of the server's own state.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

_stopping = False
_checks: list[Callable[[], bool]] = []


def stopping() -> bool:
    """True once this process is stopping."""
    return _stopping or any(check() for check in _checks)


def stop() -> None:
    """Say that this process is stopping."""
    global _stopping
    _stopping = True


def watch(check: Callable[[], bool]) -> None:
    """Count this process as stopping once ``check()`` is true."""
    _checks.append(check)


def on_signals(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
    """Set the flag when a stop signal arrives, then do what the server's own handler does.

    Call it after the server installed its handlers, from the main thread;
    elsewhere it does nothing. Calling it again adds nothing.
    """
    for signum in signals:
        try:
            previous = signal.getsignal(signum)
            if getattr(previous, "tusbridge_stop", False):
                continue
            signal.signal(signum, _chained(previous))
        except ValueError:  # not the main thread
            return


def _chained(previous: Any) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        stop()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    handler.tusbridge_stop = True  # type: ignore[attr-defined]
    return handler
