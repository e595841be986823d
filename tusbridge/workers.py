"""A gunicorn worker for upload traffic: gthread, without two thread hand-overs per chunk.

gunicorn's gthread worker gives a kept-alive connection back to its main
thread after every request; the main thread polls it and passes it to a pool
thread again when the next request arrives. Each pass wakes another thread:
together about 0.2 ms of the 1.8 ms a 100 kB legacy chunk took on the
benchmark machine. Upload
clients (jQuery-File-Upload, tus-js-client, Uppy, tuspy) send their next
chunk as soon as a response arrives, so here the pool thread that answered
waits ``TUSBRIDGE_KEEPALIVE_LINGER`` seconds (at most gunicorn's
``--keep-alive``) for it on the same connection and serves it itself. A
thread waits only while another thread of the pool is idle, so waiting never
leaves a new connection without a thread; a connection that stays quiet goes
back to the main thread as in gthread.

Use it as ``--worker-class tusbridge.workers.ThreadWorker`` with gunicorn
24 or later (the gthread worker whose ``handle`` answers whether to keep the
connection); with any other release it serves exactly as gthread does.
"""

from __future__ import annotations

import select
import threading
from typing import Any

from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

from . import conf


class ThreadWorker(GThreadWorker):
    """gthread, where the thread that answered a kept-alive request waits briefly for the next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0
        self._busy_lock = threading.Lock()

    def handle(self, conn: Any) -> Any:
        with self._busy_lock:
            self._busy += 1
        try:
            keep = super().handle(conn)
            while keep is True and self._next_request_arrives(conn):
                keep = super().handle(conn)
            return keep
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _next_request_arrives(self, conn: Any) -> bool:
        """Whether the connection's next request came within the linger time (while another thread idles)."""
        linger = min(float(conf.get("KEEPALIVE_LINGER")), self.cfg.keepalive)
        if linger <= 0 or not self.alive or self._busy >= self.cfg.threads:
            return False
        unreader = getattr(conn.parser, "unreader", None)
        buffered = getattr(unreader, "buf", None)
        if buffered is not None and buffered.getbuffer().nbytes:
            return True  # read ahead with the last body: a pipelined request
        pending = getattr(conn.sock, "pending", None)
        if pending is not None and pending():
            return True  # TLS: bytes decrypted but not read yet
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        # A closing client makes the socket readable too; the next handle() sees the end and closes.
        return bool(poller.poll(linger * 1000))
