"""tusbridge's gunicorn worker, counting how often a connection is handed to its thread pool.

Every hand-over (a new connection, or a kept-alive one that the main thread
saw become readable again) appends a line to the file named by
``TUSBRIDGE_TEST_HANDOVER_LOG``, so a live test can tell requests served by
a lingering thread from requests that went through the main thread.
"""

from __future__ import annotations

import os
from typing import Any

from tusbridge.workers import ThreadWorker


class CountingThreadWorker(ThreadWorker):
    def enqueue_req(self, conn: Any) -> None:
        with open(os.environ["TUSBRIDGE_TEST_HANDOVER_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
        super().enqueue_req(conn)
