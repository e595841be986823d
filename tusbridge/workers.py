"""A gunicorn worker for upload traffic: gthread, with fewer thread hand-overs per request.

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
back to the main thread as in gthread. While it waits, the thread may keep
the lock of the upload the last request wrote (``tusbridge.keeping``), so a
legacy chunk that follows on the connection needs no lock request.

Three smaller savings, each a few system calls or a thread wake-up per
connection that gthread spends whatever the request:

- a new connection whose request is already waiting (nearly all of them)
  is served at once, where gthread first builds a selector to wait for it;
- a body read to its end is not drained again after the response;
- a kept-alive connection whose client closed it is closed by the main
  thread, which peeks at it, instead of going to a pool thread to read the
  end and coming back to be closed. Every browser connection ends so.

Together they take about a quarter off the worker's CPU time per connection in
a burst of short requests on new connections (a page of HEADs).

Use it as ``--worker-class tusbridge.workers.ThreadWorker`` with gunicorn
24 or later (the gthread worker whose ``handle`` answers whether to keep the
connection); with any other release it serves exactly as gthread does.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

from . import conf, keeping


class ThreadWorker(GThreadWorker):
    """gthread, where the thread that answered a kept-alive request waits briefly for the next."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0
        self._busy_lock = threading.Lock()

    def handle(self, conn: Any) -> Any:
        if _new_with_request_waiting(conn):
            conn.data_ready = True  # gthread would build a selector to wait for it
        with self._busy_lock:
            self._busy += 1
        try:
            with keeping.connection(_keeping_state(conn)) if self._linger() > 0 else contextlib.nullcontext():
                keep = super().handle(conn)
                while keep is True and self._next_request_arrives(conn):
                    keep = super().handle(conn)
            return keep
        finally:
            with self._busy_lock:
                self._busy -= 1

    def _linger(self) -> float:
        """``TUSBRIDGE_KEEPALIVE_LINGER``, at most ``--keep-alive``; 0 for an application without Django settings."""
        try:
            linger = float(conf.get("KEEPALIVE_LINGER"))
        except ImproperlyConfigured:
            return 0.0
        return min(linger, self.cfg.keepalive)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """gthread drains what the application left of a body; a body read to its end needs nothing."""
        if keepalive and _body_read(conn.parser):
            return True
        return bool(super()._keepalive_after(conn, keepalive))

    def _next_request_arrives(self, conn: Any) -> bool:
        """Whether the connection's next request came within the linger time (while another thread idles)."""
        linger = self._linger()
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

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection became readable: close it here if its client has gone, else serve it."""
        keepalived = getattr(self, "keepalived_conns", None)  # gunicorn 24+; earlier releases as gthread
        if keepalived is None or not _closed_by_peer(client):
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        keepalived.remove(conn)
        self.nr_conns -= 1
        conn.close()


def _keeping_state(conn: Any) -> keeping.Connection:
    """What ``keeping`` learnt about ``conn`` so far (a new connection starts keeping)."""
    state = getattr(conn, "tusbridge_keeping", None)
    if state is None:
        state = conn.tusbridge_keeping = keeping.Connection()
    return state


def _new_with_request_waiting(conn: Any) -> bool:
    """Whether ``conn`` is a new connection (not yet waited for) whose first bytes are here."""
    fresh = not getattr(conn, "initialized", True) and not getattr(conn, "data_ready", True)
    return fresh and _peek(conn.sock) is not None


def _body_read(parser: Any) -> bool:
    """Whether the current request's body of known length was read to its end (none left to drain)."""
    body = getattr(getattr(parser, "mesg", None), "body", None)
    reader = getattr(body, "reader", None)
    buffered = getattr(body, "buf", None)
    return type(reader) is LengthReader and reader.length == 0 and buffered is not None and not buffered.tell()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed (or reset) the connection without sending anything more."""
    return _peek(sock) == b""


def _peek(sock: socket.socket) -> bytes | None:
    """The first byte waiting on ``sock``, b"" once the peer closed or reset it, None if none yet; never blocks.

    TLS sockets always give None: a peek there sees records, not requests.
    """
    if isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""  # reset: nothing more can be read or answered on it
