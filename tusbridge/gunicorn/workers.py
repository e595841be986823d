"""A gunicorn worker for upload traffic: gthread, with fewer thread hand-overs per request.

gunicorn's gthread worker gives a kept-alive connection back to its main
thread after every request; the main thread polls it and passes it to a pool
thread again when the next request arrives, and each pass wakes another
thread. Upload clients (jQuery-File-Upload, tus-js-client, Uppy, tuspy) send
their next chunk as soon as a response arrives, so here the pool thread that
answered waits ``TUSBRIDGE_KEEPALIVE_LINGER`` seconds (at most gunicorn's
``--keep-alive``) for it on the same connection and serves it itself. A
thread waits only while another thread of the pool is idle, so waiting never
leaves a new connection without a thread; a connection that stays quiet goes
back to the main thread as in gthread. While it waits, the thread may keep
the lock of the upload the last request wrote (``keeping``), so a legacy
chunk that follows on the connection needs no lock request.

Short requests without a body (HEAD, OPTIONS: a tus client checking where
its uploads stand) are answered on the main thread itself, as a sync worker
answers everything, when the whole request is already on the socket: a
burst of them on new connections then costs no thread hand-overs. The main
thread also accepts connections and watches kept-alive ones, so a request
there must not wait: one that would (tusbridge's HEAD of an upload another
request is writing) leaves through ``inline`` and is served again on a pool
thread, and one with a body is passed on parsed. A new connection whose
request has not arrived yet is watched by the main thread, not by a pool
thread's own selector.

Two smaller savings, each a few system calls or a thread wake-up per
connection that gthread spends whatever the request:

- a body read to its end is not drained again after the response;
- a kept-alive connection whose client closed it is closed by the main
  thread, which peeks at it, instead of going to a pool thread to read the
  end and coming back to be closed. Every browser connection ends so.

Over TLS none of this applies (a peek sees records, not requests): a new
connection whose first bytes are already there is served by a pool thread
without gthread's wait for them, and the rest is as gthread does it.

Use it as ``--worker-class tusbridge.gunicorn.workers.ThreadWorker`` with
gunicorn 24 or later (the gthread worker whose ``handle`` answers whether to
keep the connection); with any other release it serves exactly as gthread
does. The main thread answers requests itself only where gthread already
watches connections that have sent nothing yet (gunicorn 26 and later).
"""

from __future__ import annotations

import contextlib
import errno
import select
import selectors
import socket
import ssl
import threading
import time
from concurrent import futures
from functools import partial
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from gunicorn.http.body import LengthReader
from gunicorn.workers import gthread
from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

from .. import conf, locking
from . import inline, keeping

# Requests the main thread answers itself when they have no body.
MAIN_THREAD_METHODS = (b"HEAD ", b"OPTIONS ")
# How much of a waiting request the main thread looks at: a request line and
# headers that do not fit go to a pool thread, which may wait for the rest.
HEAD_PEEK = 8192


class ThreadWorker(GThreadWorker):
    """gthread with fewer hand-overs: the main thread answers short requests, a pool thread waits for the next one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0
        self._busy_lock = threading.Lock()
        # Where the main thread sorts connections itself (see the module's docstring).
        self._sorts = hasattr(self, "pending_conns") and hasattr(self, "keepalived_conns") and not self.cfg.is_ssl

    def init_process(self) -> None:
        """Plug keeping and the main thread's requests into tusbridge's locking, in this process only."""
        keeping.install()
        locking.hooks.before_waiting = inline.leave_before_waiting
        super().init_process()

    def accept(self, listener: Any) -> None:
        """Take a new connection, and serve it or watch it (gthread: hand it to a pool thread at once)."""
        if not self._sorts:
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._dispatch(gthread.TConn(self.cfg, client, address, listener.getsockname()))

    def on_pending_socket_readable(self, conn: Any, client: Any) -> None:
        """A new connection that had sent nothing turned readable."""
        if self._sorts:
            self._readable_again(conn, self.pending_conns)
        else:
            super().on_pending_socket_readable(conn, client)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection turned readable: its next request came, or its client closed it.

        Where the main thread does not sort connections (TLS, gunicorn before
        26) it still closes one whose client closed it, instead of passing it
        to a pool thread to find the end.
        """
        if self._sorts or (hasattr(self, "keepalived_conns") and _peek(client) == b""):
            self._readable_again(conn, self.keepalived_conns)
        else:
            super().on_client_socket_readable(conn, client)

    def _readable_again(self, conn: Any, watched: Any) -> None:
        """Stop polling a connection the main thread watched (``watched``: its list), and sort it."""
        self.poller.unregister(conn.sock)
        watched.remove(conn)
        self._dispatch(conn)

    def _dispatch(self, conn: Any) -> None:
        """Answer a short request here, pass anything else to a pool thread, watch a silent connection."""
        waiting = _peek(conn.sock, HEAD_PEEK)
        if waiting is None:
            self._watch_until_it_sends(conn)
        elif waiting == b"":
            self.nr_conns -= 1  # the client closed it, without a request
            conn.close()
        elif waiting.startswith(MAIN_THREAD_METHODS) and b"\r\n\r\n" in waiting:
            self._serve_here(conn)
        else:
            conn.data_ready = True  # gthread would build a selector to wait for it
            self.enqueue_req(conn)

    def _watch_until_it_sends(self, conn: Any) -> None:
        """Poll a connection without a request yet, for as long as gthread gives one (its wait, then keep-alive)."""
        data_wait = getattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT", 5.0)
        conn.timeout = time.monotonic() + data_wait + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def _serve_here(self, conn: Any) -> None:
        """Answer the waiting request on the main thread, or pass it to a pool thread parsed (``handle_request``)."""
        conn.data_ready = True
        try:
            with inline.serving():
                keep = GThreadWorker.handle(self, conn)
        except inline.MoveToPool as moved:
            conn.parser = _Replay(conn, moved.request)
            self.enqueue_req(conn)
            return
        done: futures.Future[Any] = futures.Future()
        done.set_result(keep)
        self.finish_request(conn, done)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """Run the application; on the main thread, only for a request without a body that does not wait."""
        if not inline.active():
            return bool(super().handle_request(req, conn))
        try:
            if not _bodiless(req):
                raise inline.MoveToPool  # its body may be slow to come
            return bool(super().handle_request(req, conn))
        except inline.MoveToPool as moved:
            moved.request = req
            raise

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


class _Replay:
    """A connection's parser that first gives back the request the main thread already parsed."""

    def __init__(self, conn: Any, request: Any) -> None:
        self._conn = conn
        self._parser = conn.parser
        self._request = request

    def __next__(self) -> Any:
        self._conn.parser = self._parser
        return self._request


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


def _bodiless(req: Any) -> bool:
    """Whether a request came without a body (no length, or a length of 0)."""
    reader = getattr(req.body, "reader", None)
    return type(reader) is LengthReader and reader.length == 0


def _body_read(parser: Any) -> bool:
    """Whether the current request's body of known length was read to its end (none left to drain)."""
    body = getattr(getattr(parser, "mesg", None), "body", None)
    reader = getattr(body, "reader", None)
    buffered = getattr(body, "buf", None)
    return type(reader) is LengthReader and reader.length == 0 and buffered is not None and not buffered.tell()


def _peek(sock: socket.socket, size: int = 1) -> bytes | None:
    """Up to ``size`` bytes waiting on ``sock``, b"" once the peer closed or reset it, None if none yet; never blocks.

    TLS sockets always give None: a peek there sees records, not requests.
    """
    if isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""  # reset: nothing more can be read or answered on it
