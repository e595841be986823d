"""tusbridge's gunicorn worker, counting how often a connection is handed to its thread pool.

Every hand-over (a new connection, or a kept-alive one that the main thread
saw become readable again) appends a line to the file named by
``TUSBRIDGE_TEST_HANDOVER_LOG``, so a live test can tell requests served by
a lingering thread from requests that went through the main thread. Every
wait of gthread's for a new connection's first bytes appends a line to
``TUSBRIDGE_TEST_DATA_WAIT_LOG``, when set.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.workers import gthread

from tusbridge.gunicorn.workers import ThreadWorker


def _log(variable: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as log:
            log.write(f"{os.getpid()}\n")


class CountingThreadWorker(ThreadWorker):
    def enqueue_req(self, conn: Any) -> None:
        _log("TUSBRIDGE_TEST_HANDOVER_LOG")
        super().enqueue_req(conn)


_wait_for_data = gthread.TConn.wait_for_data


def _counted_wait_for_data(self: Any, timeout: float) -> bool:
    _log("TUSBRIDGE_TEST_DATA_WAIT_LOG")
    return _wait_for_data(self, timeout)


gthread.TConn.wait_for_data = _counted_wait_for_data  # type: ignore[method-assign]
