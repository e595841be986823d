"""Requests answered on a gunicorn worker's main thread, and how one leaves it before it waits.

``tusbridge.workers.ThreadWorker`` answers a short request without a body
(HEAD, OPTIONS) on its main thread, as a sync worker would, instead of
handing the connection to a pool thread and back. The main thread also
accepts connections and watches kept-alive ones, so such a request must not
wait there: before tusbridge waits for another request to let go of an
upload, it calls ``leave_before_waiting``, which raises ``MoveToPool``, and
the worker serves the same request again from the start on a pool thread.
Nothing has been answered by then, and HEAD and OPTIONS change nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class MoveToPool(BaseException):
    """The request must be served again on a pool thread.

    Not an ``Exception``: Django turns those into a 500 response, and this one
    has to reach the worker with nothing answered.
    """

    request: Any = None  # the parsed request, attached by the worker on its way out


class _Thread(threading.local):
    inline = False


_thread = _Thread()


@contextmanager
def serving() -> Iterator[None]:
    """Mark the current thread as answering a request that must not wait."""
    _thread.inline = True
    try:
        yield
    finally:
        _thread.inline = False


def active() -> bool:
    """Whether the current thread is answering a request that must not wait."""
    return _thread.inline


def leave_before_waiting() -> None:
    """Raise ``MoveToPool`` on a thread that must not wait; do nothing anywhere else."""
    if _thread.inline:
        raise MoveToPool
